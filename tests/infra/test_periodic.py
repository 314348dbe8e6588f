"""`infra.periodic.Periodic`: the background loops' one shape (repeat, survive a failing call, stop at once)."""

from __future__ import annotations

import logging
import threading

import pytest

from infra.periodic import Periodic

log = logging.getLogger("tests.periodic")


def test_calls_repeat_a_failing_call_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    fourth = threading.Event()
    intervals = iter([0.01, 0.0, 0.02])  # read before each wait: a changed setting applies from the next

    def call() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) == 4:
            fourth.set()

    loop = Periodic("t-loop", call, lambda: next(intervals, 0.01), log=log)
    assert not loop.running
    with caplog.at_level(logging.ERROR, logger="tests.periodic"):
        loop.start()
        assert fourth.wait(10) and loop.running
        loop.stop()
    assert not loop.running and len(calls) >= 4
    (record,) = [r for r in caplog.records if r.name == "tests.periodic"]
    assert "t-loop: a periodic call failed" in record.getMessage() and record.exc_info is not None
    assert "boom" in str(record.exc_info[1])


def test_stop_ends_the_wait_at_once_and_the_loop_can_start_again() -> None:
    calls: list[int] = []
    called = threading.Event()
    interval = [3600.0]

    def call() -> None:
        calls.append(1)
        called.set()

    loop = Periodic("t-idle", call, lambda: interval[0], log=log, join_s=10)
    loop.start()
    loop.stop()  # waiting an hour: the stop wakes it
    assert not loop.running and loop.stopping.is_set() and calls == []
    interval[0] = 0.0
    loop.start()  # as Leadership does after a stop: `stopping` is cleared
    assert called.wait(10)
    loop.stop()
    assert not loop.running

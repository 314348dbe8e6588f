"""Statuses and reports never go back, across agent runs too, even when the device's clock does (`agent.state.Stamps`).

The hub keeps a device's newest status by `ts`, then `offline` after `online`, and its reported state with the
greatest `seq` (or a later `ts`; docs/hub.md "Ordering"). A device that boots with its clock behind its previous
run's (no real-time clock before NTP) must still have its new birth replace the previous run's last will, and
its new reports the previous run's: else the operator sees what the previous run said.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.state import SEQ_RESERVE, StampFile, Stamps
from fleet.limits import MAX_JSON_INT, MAX_TIMESTAMP
from fleet.messages import DeviceStatus, ReportedState
from hub.store import Database, Device, open_store
from tests.agent.conftest import AgentFactory
from tests.support.broker import Broker
from tests.support.hubside import HubSide

HOUR = 3600.0


def _kept_by_the_hub(tmp_path: Path, device_id: str, delivered: Sequence[DeviceStatus | ReportedState]) -> Device:
    """The device as a real hub store keeps it after the messages the broker delivered, in that order."""
    store = open_store(Database.sqlite(tmp_path / "hub.db"), telemetry_process=False)
    try:
        store.add_device(Device(id=device_id, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for msg in delivered:
            queued = (
                store.enqueue_status(msg, time.time())
                if isinstance(msg, DeviceStatus)
                else store.enqueue_reported(msg, time.time())
            )
            assert queued
        store.flush()
        stored = store.get_device(device_id)
        assert stored is not None
        return stored
    finally:
        store.close()


def test_a_new_run_whose_clock_went_back_replaces_the_last_runs_offline_and_report_on_the_hub(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, tmp_path: Path
) -> None:
    data = tmp_path / "device"
    first, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    assert first.wait_ready(10)
    birth = hub.wait(lambda: next((s for s in hub.statuses if s.state == "online"), None), what="birth")
    hub.wait(lambda: next((r for r in hub.reported if r.device_id == device_id), None), what="first run's report")
    first.link.drop(HOUR)  # the device dies: the broker publishes its last will
    will = hub.wait(lambda: next((s for s in hub.statuses if s.state == "offline"), None), what="last will")
    first.stop()
    # it boots again with its clock an hour behind (its reports carry that clock's ts: that is how they are told
    # apart from the first run's, whichever of those were still on their way)
    cut = time.time() - HOUR / 2
    second, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: time.time() - HOUR)
    assert second.wait_ready(10)
    reborn = hub.wait(lambda: next((s for s in hub.statuses if s.session == second.session), None), what="rebirth")
    assert reborn.state == "online" and birth.ts == will.ts < reborn.ts
    hub.wait(lambda: next((r for r in hub.reported if r.ts < cut), None), what="second run's report")
    reported = list(hub.reported)
    old = [r for r in reported if r.ts >= cut]
    new = [r for r in reported if r.ts < cut]
    assert old and max(r.seq for r in old) < min(r.seq for r in new)
    # the hub's store, given everything the broker delivered, in that order: the new run's birth and report win
    stored = _kept_by_the_hub(tmp_path, device_id, [*hub.statuses, *reported])
    assert (stored.status, stored.session) == ("online", second.session)
    assert stored.reported == max(new, key=lambda r: r.seq)


def test_an_unreadable_stamp_file_is_logged_once_and_the_agent_stamps_and_numbers_by_its_clock(
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "device"
    data.mkdir()
    (data / "status.json").write_bytes(b'{"schema_version": 1, "last_ts": 17.0, "report_seq": 99999999')  # torn
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        agent, _ = make_agent(hub, device_id, broker.url, data_dir=data, clock=lambda: 1000.0)
        assert agent.wait_ready(10)
        birth = hub.wait(lambda: next((s for s in hub.statuses if s.session == agent.session), None), what="birth")
        first = hub.wait(lambda: next((r for r in hub.reported if r.device_id == device_id), None), what="report")
    assert caplog.text.count(f"stamp file {data / 'status.json'} unreadable") == 1
    assert (birth.state, birth.ts) == ("online", 1000.0)
    assert 1_000_000 <= first.seq < 1_000_100  # from the clock's ms (the report at start may not have gone out)
    saved = StampFile.model_validate_json((data / "status.json").read_bytes())
    assert saved.last_ts == 1000.0 and saved.report_seq >= first.seq


def test_stamps_and_seqs_never_go_back_across_runs_even_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = [1000.0]
    marks: list[tuple[float, int]] = []

    def mark(stamps: Stamps) -> None:
        marks.append((stamps.status_ts(), stamps.report_seq()))
        assert StampFile.model_validate_json(path.read_bytes()).last_ts == marks[-1][0]  # saved before it is used

    run1 = Stamps(path, lambda: now[0])
    mark(run1)
    mark(run1)  # the clock stands still: later all the same
    now[0] = 500.0  # the clock goes back within the run
    mark(run1)
    now[0] = 1000.0 + 2 * SEQ_RESERVE / 1000  # the clock moves on past the seqs' reservation
    mark(run1)
    # the device dies (nothing saved at a stop), and boots with its clock behind the previous run's
    run2 = Stamps(path, lambda: 900.0)
    mark(run2)
    mark(run2)
    stamps, seqs = [m[0] for m in marks], [m[1] for m in marks]
    assert (stamps[0], seqs[0]) == (1000.0, 1_000_000)
    assert stamps == sorted(set(stamps)) and seqs == sorted(set(seqs)), marks
    run3 = Stamps(path, lambda: 1e9)  # the clock is right again: its own time and ms
    assert (run3.status_ts(), run3.report_seq()) == (1e9, 10**12)


def test_the_file_is_written_once_per_reservation_not_once_per_report(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = [1000.0]
    stamps = Stamps(path, lambda: now[0])
    first = stamps.report_seq()
    saved = path.stat().st_ino  # atomic_write replaces the file: a new inode each time
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == first + SEQ_RESERVE
    for _ in range(100):  # reports within the reservation, the clock moving on or not
        now[0] += 1.0
        stamps.report_seq()
    assert path.stat().st_ino == saved
    now[0] = 1000.0 + SEQ_RESERVE / 1000 + 1  # past it: one more reservation
    seq = stamps.report_seq()
    assert path.stat().st_ino != saved
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == seq + SEQ_RESERVE
    stamps.status_ts()  # a status stamp keeps the reservation
    assert StampFile.model_validate_json(path.read_bytes()).report_seq == seq + SEQ_RESERVE


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"schema_version": 1, "last_ts": 17',
        b"\x00\xff\xfe garbage",
        b"[1000.5]",
        b'{"schema_version": 1, "last_ts": -1}',
        b'{"schema_version": 1, "last_ts": 1e300}',
        b'{"schema_version": 1, "last_ts": "soon"}',
        b'{"schema_version": 2, "last_ts": 5}',
        b'{"schema_version": 1, "last_ts": 5, "extra": 1}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": -1}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 9007199254740993}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": "many"}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 1.5}',
        b'{"schema_version": 1, "last_ts": 5, "report_seq": 1, "seq": 2}',
        b'{"schema_version": 1, "report_seq": 1',
    ],
)
def test_a_bad_stamp_file_is_logged_once_and_stamps_and_seqs_start_from_the_clock(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
    assert caplog.text.count(f"stamp file {path} unreadable") == 1
    assert stamps.status_ts() == 1000.0
    assert stamps.report_seq() == 1_000_000
    saved = StampFile.model_validate_json(path.read_bytes())
    assert (saved.last_ts, saved.report_seq) == (1000.0, 1_000_000 + SEQ_RESERVE)


def test_marks_that_cannot_be_saved_are_logged_and_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "status.json"
    path.mkdir()  # neither readable nor replaceable as a file
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        stamps = Stamps(path, lambda: 1000.0)
        first, second = stamps.status_ts(), stamps.status_ts()
        seqs = [stamps.report_seq() for _ in range(5)]
    assert first == 1000.0 < second
    assert seqs == list(range(1_000_000, 1_000_005))
    assert caplog.text.count("not saved") == 1  # one line while the disk stays bad (tests/agent/test_disk_logs.py)
    assert stamps.save_log.suppressed == 2  # tried: each status stamp, and the reservation once (not per report)


def test_stamps_stop_at_the_last_timestamp_a_status_can_carry(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(StampFile(last_ts=MAX_TIMESTAMP).model_dump_json().encode())
    ts = Stamps(path, lambda: 1000.0).status_ts()
    assert ts == MAX_TIMESTAMP
    DeviceStatus(device_id="d1", state="offline", ts=ts)  # still a valid status


def test_seqs_stop_at_the_largest_a_report_can_carry(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(StampFile(last_ts=0.0, report_seq=MAX_JSON_INT - 1).model_dump_json().encode())
    stamps = Stamps(path, lambda: 1000.0)
    assert [stamps.report_seq(), stamps.report_seq()] == [MAX_JSON_INT, MAX_JSON_INT]
    ReportedState(device_id="d1", seq=MAX_JSON_INT, ts=1000.0)  # still a valid report


def test_a_status_stamp_file_of_the_previous_release_is_read(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(b'{"schema_version": 1, "last_ts": 2000.0}')  # written before reports had seqs in it
    stamps = Stamps(path, lambda: 1000.0)
    assert stamps.status_ts() > 2000.0 and stamps.report_seq() == 1_000_000

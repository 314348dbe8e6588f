"""The store's writers treat a row the database cannot take as that message's fault, on real SQLite files.

The wire schema already refuses such numbers (fleet.limits); these tests hand the writers rows that got
past it anyway (a future schema bug, another producer), built with `model_construct`, which skips checks.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from fleet.messages import Phase, ReportedState, TelemetryWindow
from hub.store import Device, SqliteStore, open_store
from hub.store import telemetry as tsql
from hub.store import telemetry_proc as tproc
from hub.store.sqlite import _connect

BIG = 2**63  # one more than SQLite's largest INTEGER


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = open_store(tmp_path / "hub.db", max_delay_s=0.2)  # a long group commit: everything lands in one batch
    for d in ("d1", "d2", "d3"):
        s.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    yield s  # type: ignore[misc]
    s.close()


def _reported(device: str, seq: int) -> ReportedState:
    good = ReportedState(device_id=device, seq=1, ts=time.time(), phase=Phase.IDLE)
    return ReportedState.model_construct(**{**dict(good), "seq": seq})


def _window(device: str, seq: int, **changes: int) -> TelemetryWindow:
    now = time.time()
    good = TelemetryWindow(device_id=device, seq=0, start=now - 5, end=now, requests=2)
    return TelemetryWindow.model_construct(**{**dict(good), "seq": seq, **changes})


def test_a_row_the_database_cannot_take_is_refused_and_the_batch_is_written(store: SqliteStore) -> None:
    now = time.time()
    assert store.enqueue_reported(_reported("d1", BIG), now)  # killed the writer (issue 18, item 1)
    assert store.enqueue_reported(_reported("d2", 7), now)
    assert store.enqueue_telemetry(_window("d3", 0, requests=BIG), now)
    assert store.enqueue_telemetry(_window("d3", 1), now)
    assert store.enqueue_telemetry(_window("d3", 2), now)
    store.flush()
    st = store.ingest_stats()
    assert st.rows_refused == 2 and st.write_errors == 0, st
    assert st.reported_applied == 1 and st.telemetry_persisted == 2, st
    assert store.get_device("d1").reported is None  # type: ignore[union-attr]
    assert store.get_device("d2").reported["seq"] == 7  # type: ignore[union-attr,index]
    assert store.telemetry_seq("d3", since=None, until=None).count == 2
    # the writer is alive and holds no transaction: API writes go through at once
    store.set_meta("after", "yes")
    assert store.get_meta("after") == "yes"


def test_every_bad_row_of_many_is_refused_alone(store: SqliteStore) -> None:
    now = time.time()
    for seq in range(50):
        bad = seq % 5 == 0
        store.enqueue_telemetry(_window("d1", seq, memory_bytes=BIG) if bad else _window("d1", seq), now)
    store.flush()
    st = store.ingest_stats()
    assert (st.rows_refused, st.telemetry_persisted, st.write_errors) == (10, 40, 0), st


def test_the_telemetry_writer_process_refuses_a_row_and_writes_the_others(tmp_path: Path) -> None:
    store = open_store(tmp_path / "hub.db")
    store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    store.close()
    counters = mp.get_context("spawn").Array("q", 9, lock=False)
    conn = _connect(tmp_path / "hub.db", readonly=False)
    try:
        writer = tproc._Writer(conn, counters)
        now = time.time()
        rows = [tsql.window_row(_window("d1", s, **({"queue_depth": BIG} if s == 3 else {})), now) for s in range(6)]
        writer.write(rows, upto=1)
        assert not conn.in_transaction
        assert counters[tproc.REFUSED] == 1 and counters[tproc.PERSISTED] == 5, list(counters)
        assert (
            counters[tproc.WRITE_ERRORS] == 0
            and counters[tproc.DUPLICATES] == 0
            and counters[tproc.COMMITTED_UPTO] == 1
        )
        writer.write(rows, upto=2)  # the same again: five duplicates, the bad one refused again
        assert counters[tproc.DUPLICATES] == 5 and counters[tproc.REFUSED] == 2
    finally:
        conn.close()

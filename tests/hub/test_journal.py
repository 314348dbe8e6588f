"""The telemetry journal (hub.store.journal): windows acknowledged on receipt wait on disk until stored.

Real files, a real PostgreSQL server taken away (`postgres.block`), both telemetry writers (process and thread).
The whole path, a hub process SIGKILLed during an outage, is in tests/hub/test_serve.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fleet.codec import encode
from hub.store import Database, Device, SqlStore, TelemetryJournal, open_store
from tests.support.mqtt import wait_for
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_window


def _payload(seq: int) -> bytes:
    w = one_model_window(device_id="d1", seq=seq, start=6000.0 + seq * 30, end=6030.0 + seq * 30, requests=4)
    return encode(w)


def test_what_is_not_released_is_given_back_to_the_next_process_and_a_torn_record_ends_it(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path, segment_s=0)
    for seq in range(3):
        j.append("d1", 100.0 + seq, _payload(seq))
    j.seal(1)  # windows 0-2 ride in batch 1
    j.append("d1", 103.0, _payload(3))
    j.seal(2)
    j.release(1)  # batch 1 stored: its segment goes
    j.append("d1", 104.0, _payload(4))  # open segment, process dies
    with sorted(tmp_path.iterdir())[-1].open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x01")  # a record cut short mid-write
    again = TelemetryJournal(tmp_path)
    windows = again.recover(1)
    assert [(d, at) for d, at, _ in windows] == [("d1", 103.0), ("d1", 104.0)]
    assert windows[0][2] == _payload(3)
    again.release(1)
    assert list(tmp_path.iterdir()) == []


def test_a_journal_that_is_not_enabled_writes_nothing_but_recovers(tmp_path: Path) -> None:
    j = TelemetryJournal(tmp_path)
    j.append("d1", 1.0, b"x")
    j.close(1, 0)
    off = TelemetryJournal(tmp_path, enabled=False)
    off.append("d1", 2.0, b"y")
    assert [w[1] for w in off.recover(1)] == [1.0]


@pytest.mark.parametrize("in_process", [True, False], ids=["process", "thread"])
def test_windows_held_in_an_outage_outlive_the_store_and_are_stored_once(
    tmp_path: Path, postgres: PostgresServer, in_process: bool
) -> None:
    """The hub stops (or dies) while the database is away: the next store on the journal writes the windows the
    first one held, and the ones it had stored before are not counted twice."""
    url = postgres.create_database()
    db = Database.from_url(url)

    def opened() -> SqlStore:
        return open_store(db, telemetry_process=in_process, away_retry_s=0.05, journal=TelemetryJournal(tmp_path))

    store = opened()
    try:
        store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for seq in range(5):
            store.submit_telemetry("d1", _payload(seq), time.time())
        store.flush()
        postgres.block(url)
        for seq in range(5, 12):
            store.submit_telemetry("d1", _payload(seq), time.time())
        wait_for(lambda: store.ingest_stats().database_waits >= 3, timeout=60)
    finally:
        store.close()  # gives the held batch up: nothing of it stored
        postgres.block(url, blocked=False)
    assert list(tmp_path.iterdir())  # what was held is on disk
    again = opened()
    try:
        again.flush()
        assert again.telemetry_seq("d1", since=None, until=None).count == 12
        assert sum(p.requests for p in again.telemetry_series(device_id="d1")) == 12 * 4  # each window once
        wait_for(lambda: not list(tmp_path.iterdir()), timeout=30)  # stored: the journal lets them go
    finally:
        again.close()


def test_a_running_hub_keeps_only_what_it_has_not_stored(tmp_path: Path, database: Database) -> None:
    journal = tmp_path / "journal"
    store = open_store(database, telemetry_process=False, journal=TelemetryJournal(journal, segment_s=0))
    try:
        store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for seq in range(100):
            store.submit_telemetry("d1", _payload(seq), time.time())
        store.flush()
        assert store.telemetry_seq("d1", since=None, until=None).count == 100
        wait_for(lambda: not list(journal.iterdir()), timeout=30)
    finally:
        store.close()
    assert not list(journal.iterdir())


def test_windows_a_crashed_writer_held_are_written_by_its_successor_once(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """The writer process dies (a crash) while it holds windows the database was away for: the hub restarts it
    and the new one writes them from the journal (they used to be counted lost and their segments deleted),
    together with copies of windows stored before, which the store drops."""
    url = postgres.create_database()
    journal = tmp_path / "journal"
    store = open_store(Database.from_url(url), away_retry_s=0.05, journal=TelemetryJournal(journal))
    try:
        store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for seq in range(5):
            store.submit_telemetry("d1", _payload(seq), time.time())
        store.flush()
        postgres.block(url)
        for seq in range(5, 12):
            store.submit_telemetry("d1", _payload(seq), time.time())
        wait_for(lambda: store.ingest_stats().database_waits >= 3, timeout=60)
        pid = store.telemetry.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: store.ingest_stats().writer_restarts == 1, timeout=30)
        postgres.block(url, blocked=False)
        store.flush(timeout=60)
        assert store.telemetry_seq("d1", since=None, until=None).count == 12
        assert sum(p.requests for p in store.telemetry_series(device_id="d1")) == 12 * 4  # each window once
        assert store.ingest_stats().telemetry_lost == 0
        wait_for(lambda: not list(journal.iterdir()), timeout=30)  # stored: the journal lets them go
    finally:
        postgres.block(url, blocked=False)
        store.close()

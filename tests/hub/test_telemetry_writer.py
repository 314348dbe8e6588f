"""The telemetry writer on both backends (real SQLite files, a real PostgreSQL server): decoding, refusals, rollups,
back-pressure, crashes.

Every behaviour runs against both writers (`hub serve`'s default, a process, and the thread the
`ingest.telemetry_process = false` setting selects); killing one applies to the process only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.codec import encode
from fleet.messages import Phase, TelemetryWindow
from hub.store import Database, Device, SqlStore, open_store
from hub.store.telemetry_writer import COMMITTED_UPTO
from tests.support.mqtt import wait_for
from tests.support.outcomes import record
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_report, one_model_window

BASE = 6000.0  # a minute boundary


@pytest.fixture(params=["process", "thread"])
def in_process(request: pytest.FixtureRequest) -> bool:
    """Which telemetry writer a test runs against: a process of its own (the default) or a thread."""
    return bool(request.param == "process")


@pytest.fixture
def store(database: Database, in_process: bool) -> Iterator[SqlStore]:
    s = open_store(database, telemetry_process=in_process)
    for d in ("d1", "d2"):
        s.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    yield s
    s.close()


def _window(device: str, seq: int, requests: int = 4) -> TelemetryWindow:
    return one_model_window(device_id=device, seq=seq, start=BASE + seq * 30, end=BASE + seq * 30 + 30,
                           requests=requests, errors=1, model="m", model_version="1.0.0")  # fmt: skip


def _payload(device: str, seq: int, requests: int = 4) -> bytes:
    return encode(_window(device, seq, requests))


def _pid_alive(pid: int) -> bool:
    """Running, not gone and not a zombie (an exited process its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_windows_are_decoded_checked_written_and_rolled_up_once(store: SqlStore) -> None:
    now = time.time()
    for seq in (0, 1, 2, 1, 0):  # duplicates, out of order
        assert store.submit_telemetry("d1", _payload("d1", seq), now)
    store.submit_telemetry("d1", b"not json", now)
    store.submit_telemetry("d1", b'{"schema_version": 2, "kind": "telemetry"}', now)
    store.submit_telemetry("d1", _payload("d2", 7), now)  # names another device than its topic
    store.flush()
    st = store.ingest_stats()
    assert (st.telemetry_persisted, st.telemetry_duplicates) == (3, 2)
    assert (st.telemetry_accepted, st.telemetry_malformed, st.telemetry_foreign) == (5, 2, 1)
    assert st.write_errors == 0 and st.writer_restarts == 0 and st.telemetry_lost == 0
    series = store.telemetry_series(device_id="d1")
    assert [(p.minute, p.windows, p.requests) for p in series] == [(6000.0, 2, 8), (6060.0, 1, 4)]
    assert [w.seq for w in store.telemetry_windows("d1", since=None, until=None, limit=10)] == [2, 1, 0]
    assert store.telemetry_seq("d2", since=None, until=None).count == 0
    dev = store.get_device("d1")
    assert dev is not None and dev.last_seen == pytest.approx(now)


def test_writers_sharing_a_database_roll_up_each_window_exactly_once(database: Database) -> None:
    """A writer process and a writer thread (a second store: a hub replica) on one database, beside the store's
    own writer thread writing reported states."""
    a = open_store(database, telemetry_process=True)
    b = open_store(database, telemetry_process=False)
    try:
        a.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        sent = 0
        for seq in range(300):
            if seq % 3 == 0:
                a.enqueue_reported(one_model_report(device_id="d1", seq=seq, ts=seq, phase=Phase.IDLE), time.time())
            (a if seq % 2 else b).submit_telemetry("d1", _payload("d1", seq, requests=1), time.time())
            sent += 1
            if seq % 50 == 49:
                a.flush()
                b.flush()
        a.flush()
        b.flush()
        series = a.telemetry_series(device_id="d1")
        assert sum(p.windows for p in series) == sent == a.telemetry_seq("d1", since=None, until=None).count
        assert sum(p.requests for p in series) == sent
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("in_process", [True], ids=["process"])
def test_a_killed_writer_is_restarted_and_ingestion_goes_on(store: SqlStore) -> None:
    proc = store.telemetry
    assert proc is not None and proc.pid is not None
    for seq in range(10):
        store.submit_telemetry("d1", _payload("d1", seq), time.time())
    store.flush()
    first = proc.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: store.ingest_stats().writer_restarts == 1)  # the supervisor noticed on its own
    assert proc.pid != first
    for seq in range(10, 20):
        assert store.submit_telemetry("d1", _payload("d1", seq), time.time())
    store.flush()
    st = store.ingest_stats()
    assert st.writer_restarts == 1
    assert st.telemetry_lost == 0  # everything sent before the kill was committed (flushed)
    assert store.telemetry_seq("d1", since=None, until=None).count == 20


@pytest.mark.parametrize("in_process", [True], ids=["process"])
def test_flush_right_after_a_kill_accounts_for_every_window(store: SqlStore) -> None:
    """The writer dies between the supervisor's last look and a flush: flush restarts it, loses no count."""
    proc = store.telemetry
    assert proc is not None and proc.pid is not None
    for round_ in range(5):
        pid = proc.pid
        assert pid is not None
        for seq in range(round_ * 20, round_ * 20 + 20):
            store.submit_telemetry("d1", _payload("d1", seq), time.time())
        os.kill(pid, signal.SIGKILL)
        store.flush()  # must not raise
    st = store.ingest_stats()
    stored = store.telemetry_seq("d1", since=None, until=None).count
    assert st.writer_restarts >= 1
    assert stored == st.telemetry_persisted and stored + st.telemetry_lost == 100


def test_a_blocked_database_backpressures_into_counted_drops_and_loses_nothing_accepted(
    database: Database, in_process: bool
) -> None:
    store = open_store(database, telemetry_process=in_process, max_queue=100)
    try:
        store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        blocker = database.connect()
        blocker.begin()  # SQLite: the write lock; the writer now waits for it (busy_timeout)
        if database.dialect.postgres:
            blocker.execute("LOCK TABLE telemetry IN EXCLUSIVE MODE")  # the writer waits for the table
        accepted = 0
        for seq in range(3000):
            accepted += store.submit_telemetry("d1", _payload("d1", seq), time.time()) is not None
            if seq % 100 == 0:
                time.sleep(0.01)  # let the forwarder fill the pipe
        dropped = store.ingest_stats().dropped_queue_full
        assert dropped > 0 and accepted + dropped == 3000
        blocker.rollback()
        blocker.close()
        store.flush()
        assert store.ingest_stats().telemetry_persisted == accepted
        assert store.telemetry_seq("d1", since=None, until=None).count == accepted
    finally:
        store.close()


@pytest.fixture
def outage(postgres: PostgresServer, in_process: bool) -> Iterator[tuple[str, SqlStore, list[int]]]:
    """A store on a database of its own (a test may take it away: `postgres.block`) with device d1, and the tickets
    its telemetry writer reported accounted for, in order (what the hub acknowledges to the broker)."""
    url = postgres.create_database()
    store = open_store(Database.from_url(url), telemetry_process=in_process, away_retry_s=0.05)
    committed: list[int] = []
    store.on_telemetry_committed(committed.append)
    try:
        store.add_device(Device(id="d1", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        yield url, store, committed
    finally:
        postgres.block(url, blocked=False)
        store.close()


def test_a_database_outage_holds_every_window_unacknowledged_until_it_is_written(
    postgres: PostgresServer, outage: tuple[str, SqlStore, list[int]]
) -> None:
    """The database goes away for longer than the 8 tries after which a batch used to be dropped (and then
    acknowledged to the broker): the windows wait, none is acknowledged, and all are written once it is back."""
    url, store, committed = outage
    first = [store.submit_telemetry("d1", _payload("d1", seq), time.time()) for seq in range(50)]
    wait_for(lambda: bool(committed) and committed[-1] >= max(t or 0 for t in first))
    postgres.block(url)
    tickets = [store.submit_telemetry("d1", _payload("d1", seq), time.time()) for seq in range(50, 150)]
    assert all(tickets)
    wait_for(lambda: (s := store.ingest_stats()).database_waits >= 30 or s.write_errors > 0, timeout=60)
    st = store.ingest_stats()
    assert st.write_errors == 0 and st.telemetry_persisted == 50
    assert committed[-1] < min(t or 0 for t in tickets)  # nothing of the outage acknowledged to the broker
    postgres.block(url, blocked=False)
    store.telemetry.flush(timeout=60)
    wait_for(lambda: committed[-1] >= max(t or 0 for t in tickets))
    st = store.ingest_stats()
    assert st.telemetry_persisted == 150 and st.write_errors == 0 and st.telemetry_lost == 0
    stored = store.telemetry_seq("d1", since=None, until=None).count
    assert stored == 150
    record("fault", "hub database away under telemetry (windows wait unacknowledged)", "recovered", 1, 150 - stored)


def test_a_hub_stopping_during_a_database_outage_stops_and_acknowledges_nothing_unwritten(
    postgres: PostgresServer, outage: tuple[str, SqlStore, list[int]]
) -> None:
    url, store, committed = outage
    postgres.block(url)
    tickets = [store.submit_telemetry("d1", _payload("d1", seq), time.time()) for seq in range(20)]
    wait_for(lambda: store.ingest_stats().database_waits >= 3, timeout=60)
    store.close()  # returns (the writer gives its batch up instead of waiting for the database)
    st = store.ingest_stats()
    assert st.telemetry_persisted == 0 and st.write_errors >= 1
    assert not committed or committed[-1] < min(t or 0 for t in tickets)  # for the broker to send again
    # nor accounted for afterwards (the writer's "stop" came after the batch it gave up): a forwarder that read
    # the counter before it noticed the stop would have acknowledged the batch
    assert int(store.telemetry.counters[COMMITTED_UPTO]) < min(t or 0 for t in tickets)


def test_closed_store_refuses_new_windows(database: Database, in_process: bool) -> None:
    store = open_store(database, telemetry_process=in_process)
    writer = store.telemetry
    pid = writer.pid
    store.close()
    if in_process:
        assert pid is not None and not _pid_alive(pid)
    else:
        assert pid is None and not writer._alive()
    assert not writer.submit("d1", _payload("d1", 0), time.time())


def test_the_writer_exits_when_the_hub_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL the process that owns the store: its writer sees the pipe close and leaves (no orphan)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from hub.store import open_store
        store = open_store(__import__("pathlib").Path({str(tmp_path / "hub.db")!r}), telemetry_process=True)
        print(store.telemetry.pid, flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as owner:
        try:
            assert owner.stdout is not None
            writer = int(owner.stdout.readline())
            assert _pid_alive(writer)
            owner.kill()
            owner.wait(10)
            wait_for(lambda: not _pid_alive(writer), timeout=10)
        finally:
            owner.kill()

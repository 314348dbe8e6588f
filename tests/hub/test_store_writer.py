"""The store's writers treat a row the database cannot take as that message's fault, on both backends.

The wire schema already refuses such numbers (fleet.limits); these tests hand the writers rows that got
past it anyway (a future schema bug, another producer), built with `model_construct`, which skips checks.
A seq of 2**63 is one past SQLite's INTEGER and PostgreSQL's BIGINT.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from fleet.messages import Capabilities, DeviceStatus, ModelWindow, Phase, ReportedState, TelemetryWindow
from hub.store import Database, Device, SqlStore, open_store
from hub.store import telemetry as tsql
from hub.store import telemetry_writer as tw
from tests.support.mqtt import wait_for
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_report

BIG = 2**63


@pytest.fixture
def store(database: Database) -> Iterator[SqlStore]:
    s = open_store(database, max_delay_s=0.2, telemetry_process=False)  # a long group commit: one batch
    for d in ("d1", "d2", "d3"):
        s.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    yield s
    s.close()


def _reported(device: str, seq: int) -> ReportedState:
    good = ReportedState(device_id=device, seq=1, ts=time.time())
    return ReportedState.model_construct(**{**dict(good), "seq": seq})


def _row(device: str, seq: int, **changes: int) -> tuple[object, ...]:
    """The row of a one-model window whose model entry has `changes` (unchecked)."""
    now = time.time()
    model = ModelWindow(name="m", version="1.0.0", requests=2)
    good = TelemetryWindow(device_id=device, seq=0, start=now - 5, end=now, models=[model])
    bad = ModelWindow.model_construct(**{**dict(model), **changes})
    (row,) = tsql.window_rows(TelemetryWindow.model_construct(**{**dict(good), "seq": seq, "models": [bad]}), now)
    return row


def test_a_report_the_database_cannot_take_is_refused_and_the_batch_is_written(store: SqlStore) -> None:
    now = time.time()
    assert store.enqueue_reported(_reported("d1", BIG), now)  # killed the writer (issue 18, item 1)
    assert store.enqueue_reported(_reported("d2", 7), now)
    assert store.enqueue_reported(_reported("d3", BIG + 1), now)
    store.flush()
    st = store.ingest_stats()
    assert (st.rows_refused, st.reported_applied, st.write_errors) == (2, 1, 0), st
    d1, d2 = store.get_device("d1"), store.get_device("d2")
    assert d1 is not None and d1.reported is None
    assert d2 is not None and d2.reported is not None and d2.reported.seq == 7
    # the writer is alive and holds no transaction: API writes go through at once
    store.set_meta("after", "yes")
    assert store.get_meta("after") == "yes"


def test_a_batch_of_reports_with_bad_ones_applies_every_good_one_in_order(store: SqlStore) -> None:
    """Forty reports, every fifth one a seq the database cannot take (each of a device of its own), the others
    of three devices: the writer writes the batch in parts down to the bad ones; each of the three ends with
    its last report, and its phase events are those of its reports, in order."""
    for n in range(0, 40, 5):
        store.add_device(Device(id=f"bad{n}", labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
    now = time.time()
    phases = [Phase.DOWNLOADING, Phase.ACTIVATING, Phase.ACTIVE]
    good: dict[str, list[ReportedState]] = {"d1": [], "d2": [], "d3": []}
    for n in range(40):
        if n % 5 == 0:
            msg = _reported(f"bad{n}", BIG)
        else:
            msg = one_model_report(device_id=f"d{n % 3 + 1}", seq=n + 1, ts=float(n + 1), phase=phases[n // 4 % 3])
            good[msg.device_id].append(msg)
        assert store.enqueue_reported(msg, now)
    store.flush()
    st = store.ingest_stats()
    assert (st.rows_refused, st.reported_applied, st.stale_ignored, st.write_errors) == (8, 32, 0, 0), st
    for device, reports in good.items():
        d = store.get_device(device)
        assert d is not None and d.reported is not None and d.reported.seq == reports[-1].seq
        events = store.list_events(since=None, until=None, subject=f"device/{device}", action="device.phase",
                                   limit=100)  # fmt: skip
        changes = [r.phase.value for i, r in enumerate(reports) if i == 0 or reports[i - 1].phase != r.phase]
        assert [e.details["to"] for e in sorted(events, key=lambda e: e.id)] == changes


def test_the_telemetry_writer_refuses_each_bad_row_alone_and_writes_the_others(database: Database) -> None:
    open_store(database, telemetry_process=False).close()  # the schema
    counters = [0] * tw._N_COUNTERS
    writer = tw._Writer(database, counters)
    try:
        rows = [_row("d1", s, **({"queue_depth": BIG} if s % 5 == 0 else {})) for s in range(20)]
        writer.write(rows, upto=1)
        assert writer.conn is not None and not writer.conn.in_transaction
        assert (counters[tw.REFUSED], counters[tw.PERSISTED], counters[tw.WRITE_ERRORS]) == (4, 16, 0), counters
        assert (counters[tw.DUPLICATES], counters[tw.COMMITTED_UPTO]) == (0, 1)
        writer.write(rows, upto=2)  # the same again: sixteen duplicates, the bad ones refused again
        assert (counters[tw.DUPLICATES], counters[tw.REFUSED]) == (16, 8), counters
    finally:
        writer.close()


def _trigger(url: str, table: str, end_when: str = "FALSE") -> None:
    """A trigger on `table` counting the rows written to it (sequence `writes`) that also ends its own connection
    the first time a row matching `end_when` is written (a restart or failover at that moment; sequence `ended`
    counts the matching rows)."""
    import psycopg  # noqa: PLC0415 (the test's own connection, to install the trigger)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE writes")
        conn.execute("CREATE SEQUENCE ended")
        conn.execute(
            "CREATE FUNCTION counted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM nextval('writes'); "
            f"IF {end_when} THEN IF nextval('ended') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
            "END IF; END IF; RETURN NEW; END $$"
        )
        conn.execute(f"CREATE TRIGGER counted BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW "
                     "EXECUTE FUNCTION counted()")  # fmt: skip


def _count(url: str, sequence: str) -> int:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


def test_a_batch_with_bad_windows_writes_each_good_window_once(postgres: PostgresServer) -> None:
    """The writer halves a batch a bad row fails down to that row; every part goes through PostgreSQL's staging
    table in the same transaction, which used to keep earlier parts' rows, so each part inserted them all again
    (quadratic: 5000 windows with one bad took 107 s). Now each good window reaches the table once."""
    url = postgres.create_database()
    database = Database.from_url(url)
    open_store(database, telemetry_process=False).close()  # the schema
    _trigger(url, "telemetry")
    counters = [0] * tw._N_COUNTERS
    writer = tw._Writer(database, counters)
    try:
        writer.write([_row("d1", s, **({"queue_depth": BIG} if s % 5 == 0 else {})) for s in range(40)], upto=1)
    finally:
        writer.close()
    assert (counters[tw.REFUSED], counters[tw.PERSISTED], counters[tw.WRITE_ERRORS]) == (8, 32, 0), counters
    assert _count(url, "writes") == 32


def test_telemetry_whose_connection_ends_while_going_in_parts_waits_and_is_written(postgres: PostgresServer) -> None:
    """A window the database cannot take sends the batch again in parts; the server ends the connection during that
    pass. The batch waits for the database, as one whose connection ended on the first pass does, and is written
    on the next try; it was dropped (`WRITE_ERRORS`, and acknowledged to the broker) before."""
    url = postgres.create_database()
    database = Database.from_url(url)
    open_store(database, telemetry_process=False).close()  # the schema
    _trigger(url, "telemetry", end_when="NEW.seq = 1")
    counters = [0] * tw._N_COUNTERS
    writer = tw._Writer(database, counters, away_retry_s=0.05)
    try:
        writer.write([_row("d1", 0, queue_depth=BIG), _row("d1", 1), _row("d1", 2)], upto=1)  # the bad row first
    finally:
        writer.close()
    assert _count(url, "ended") == 2  # the trigger ended the connection once, and let the second write through
    assert (counters[tw.REFUSED], counters[tw.PERSISTED], counters[tw.WRITE_ERRORS]) == (1, 2, 0), counters
    assert (counters[tw.DATABASE_WAITS], counters[tw.COMMITTED_UPTO]) == (1, 1), counters


def test_replicas_writing_the_same_reports_in_other_orders_apply_them_all(database: Database) -> None:
    """Every hub replica writes every status and report. Two stores on one database (two replicas' writers),
    given the same reports in opposite orders at once: neither loses its batch to a deadlock, all are applied."""
    devices = [f"r{i:03d}" for i in range(150)]
    a, b = (open_store(database, max_delay_s=0.2, telemetry_process=False) for _ in range(2))
    try:
        for d in devices:
            a.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for seq in (1, 2, 3):
            now = time.time()
            reports = [ReportedState(device_id=d, seq=seq, ts=now) for d in devices]
            for r in reports:
                assert a.enqueue_reported(r, now)
            for r in reversed(reports):
                assert b.enqueue_reported(r, now)
            a.flush()
            b.flush()
        assert [s.ingest_stats().write_errors for s in (a, b)] == [0, 0]
        stored = [a.get_device(d) for d in devices]
        assert [d.reported.seq if d is not None and d.reported is not None else None for d in stored] == [3] * 150
    finally:
        a.close()
        b.close()


def test_a_batch_has_the_effect_of_its_messages_written_one_by_one(database: Database) -> None:
    """The writer folds a batch (several reports and statuses per device, stale ones, unknown devices) into a
    few statements; the same messages written one batch each leave the same rows, events and counts."""
    caps = Capabilities(agent_version="1", onnxruntime_version="1.20", providers=["CPU"], cpu_count=2,
                        memory_bytes=1 << 30)  # fmt: skip
    script: list[tuple[str, int, str | None, bool]] = [  # (kind, seq or 0, phase or status, birth with caps)
        ("reported", 1, "downloading", False), ("status", 0, "online", True), ("reported", 3, "downloading", False),
        ("reported", 2, "active", False), ("status", 0, "offline", False), ("reported", 4, "active", False),
        ("reported", 4, "failed", False), ("reported", 5, "failed", False),
    ]  # fmt: skip

    def messages(prefix: str) -> list[tuple[DeviceStatus | ReportedState, float]]:
        out: list[tuple[DeviceStatus | ReportedState, float]] = []
        for n, (kind, seq, what, birth) in enumerate(script):
            for device in (f"{prefix}1", f"{prefix}2", f"{prefix}ghost"):  # ghost is not enrolled
                received = 1000.0 + n
                if device.endswith("ghost") and kind != "status":
                    continue  # (a report of an unknown device: SQLite stores it, PostgreSQL's key refuses it)
                if kind == "status":
                    msg: DeviceStatus | ReportedState = DeviceStatus(
                        device_id=device, state=what, ts=received, session=f"s{n}", capabilities=caps if birth else None
                    )
                else:
                    assert what is not None  # every report in the script names its phase
                    msg = one_model_report(device_id=device, seq=seq, ts=float(seq), phase=Phase(what), model="m")
                out.append((msg, received))
        return out

    def write(
        store: SqlStore, prefix: str, *, one_by_one: bool
    ) -> tuple[int, int, int, int, Sequence[tuple[object, ...]], list[tuple[float, str, dict[str, Any]]]]:
        for d in (f"{prefix}1", f"{prefix}2"):
            store.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        for msg, received in messages(prefix):
            if isinstance(msg, DeviceStatus):
                assert store.enqueue_status(msg, received)
            else:
                assert store.enqueue_reported(msg, received)
            if one_by_one:
                store.flush()
        store.flush()
        st = store.ingest_stats()
        devices = [store.get_device(f"{prefix}{i}") for i in (1, 2)]
        rows = [  # fmt: skip
            (
                d.status,
                d.status_at,
                d.session,
                d.capabilities,
                d.last_seen,
                d.reported_at,
                d.reported.model_dump(exclude={"device_id"}) if d.reported else None,
            )
            for d in devices
            if d is not None
        ]
        events = [
            (e.ts, e.subject[len(f"device/{prefix}") :], e.details)
            for e in store.list_events(since=None, until=None, subject=None, action="device.phase", limit=100)
            if e.subject.startswith(f"device/{prefix}")
        ]
        return st.status_applied, st.reported_applied, st.stale_ignored, st.write_errors, rows, events

    batched = open_store(database, max_delay_s=0.5, telemetry_process=False)  # a long group commit: one batch
    try:
        got = write(batched, "a", one_by_one=False)
    finally:
        batched.close()
    single = open_store(database, max_delay_s=0.0, telemetry_process=False)
    try:
        want = write(single, "b", one_by_one=True)
    finally:
        single.close()
    assert got[:4] == want[:4] == (4, 8, 4, 0)
    assert got[4] == want[4]
    # each device's events in its messages' order (PostgreSQL writes a batch in device order, so the two
    # devices' events interleave differently)
    assert sorted(got[5], key=lambda e: e[1]) == sorted(want[5], key=lambda e: e[1])
    assert len(got[5]) == 6  # per device: None -> downloading -> active -> failed


def test_a_connection_ended_while_going_in_parts_leaves_the_batch_waiting_not_dropped(
    postgres: PostgresServer,
) -> None:
    """A report the database cannot take sends the batch again in parts; the server ends the connection during that
    pass (a restart, a failover). The batch waits for the database, as a batch whose connection ended on the first
    pass does, and is written on the next try; it was dropped (`write_errors`) before."""
    url = postgres.create_database()
    store = open_store(Database.from_url(url), max_delay_s=0.2, telemetry_process=False, away_retry_s=0.05)
    try:
        for d in ("d1", "d2"):
            store.add_device(Device(id=d, labels={}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t"))
        _trigger(url, "applied", end_when="NEW.device_id = 'd2'")
        now = time.time()
        assert store.enqueue_reported(_reported("d1", BIG), now)  # fails the batch: it goes again in parts
        assert store.enqueue_reported(_reported("d2", 7), now)
        wait_for(lambda: (s := store.ingest_stats()).reported_applied + s.write_errors > 0, timeout=60)
        st = store.ingest_stats()
        d2 = store.get_device("d2")
    finally:
        store.close()
    assert _count(url, "ended") == 2  # the trigger ended the connection once, and let the second write through
    assert (st.reported_applied, st.write_errors, st.rows_refused) == (1, 0, 1), st
    assert st.database_waits >= 1, st
    assert d2 is not None and d2.reported is not None and d2.reported.seq == 7

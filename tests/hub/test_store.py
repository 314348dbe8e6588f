"""The store on both backends (a real SQLite file, a real PostgreSQL server): migrations, dedupe, ordering, rollups,
retention, monotonic versions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleet.codec import encode
from fleet.messages import DeviceStatus, Phase
from hub.errors import Conflict, DatabaseUnavailable, NotFound
from hub.store import Database, Desired, DesiredSlot, Device, ModelVersion, SqlStore, open_store
from tests.support.mqtt import wait_for
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_report, one_model_window


@pytest.fixture
def store(database: Database) -> Iterator[SqlStore]:
    s = open_store(database)
    yield s
    s.close()


def _dev(device_id: str) -> Device:
    return Device(id=device_id, labels={"site": "a"}, password_hash="$7$x", enrolled_at=1.0, enrolled_by="t")


def _mv(version: str, sha: str = "a" * 64) -> ModelVersion:
    manifest = {"sha256": sha, "size": 10, "chunk_size": 1024, "chunks": ["b" * 64]}
    return ModelVersion("m", version, "classification", sha, 10, {"name": "m"}, manifest, 1.0, "t")


def test_connections_the_server_ended_cost_no_call_reads_writes_and_leases_go_on(postgres: PostgresServer) -> None:
    """PostgreSQL restarted or failed over between two calls: each connection the store holds (readers, the
    writer, the lease connection) is found ended by its next statement, which runs again on a new one."""
    url = postgres.create_database()
    store = open_store(Database.from_url(url), telemetry_process=False)
    try:
        store.add_device(_dev("d1"))
        assert store.get_device("d1") is not None and store.acquire_lease("leader", "a", 30) is not None
        postgres.block(url)
        postgres.block(url, blocked=False)  # every connection of the store is ended; new ones are let in
        assert store.get_device("d1") is not None  # a reader
        store.add_device(_dev("d2"))  # the writer
        assert store.acquire_lease("leader", "a", 30) is not None  # the lease connection: renewed
        assert [d.id for d in store.list_devices()] == ["d1", "d2"]
    finally:
        store.close()


def test_a_long_statement_the_server_ended_is_not_taken_for_a_network_outage(postgres: PostgresServer) -> None:
    """After a slow failure without a word from the server (a network timeout) connects are not tried for a
    while (`Outage`); a statement the server itself ended (a restart during a long query) must not do that,
    or the hub would refuse calls to a database that is back."""
    import psycopg  # noqa: PLC0415

    url = postgres.create_database()
    database = Database.from_url(url)
    conn = database.connect()
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def end() -> None:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))

    ended = threading.Timer(1.5, end)  # the statement has run longer than Outage.SLOW_S by then
    ended.start()
    with pytest.raises(psycopg.errors.AdminShutdown):
        conn.execute("SELECT pg_sleep(30)")
    ended.join()
    assert conn.broken
    again = database.connect()  # tried, and it answers
    assert again.execute("SELECT 1").fetchone() == (1,)
    again.close()
    conn.close()


def test_reopening_keeps_data_and_applies_no_migration_twice(database: Database) -> None:
    s = open_store(database)
    s.add_device(_dev("d1"))
    s.set_meta("k", "v")
    s.close()
    s = open_store(database)
    try:
        assert s.get_device("d1") is not None and s.get_meta("k") == "v"
    finally:
        s.close()


def test_a_rekey_replaces_only_the_password_hash(store: SqlStore) -> None:
    store.add_device(_dev("d1"))
    store.set_labels("d1", {"site": "b"})
    updated = store.set_password_hash("d1", "$7$new")
    assert updated.password_hash == "$7$new" and updated.labels == {"site": "b"} and updated.enrolled_at == 1.0
    assert store.get_device("d1") == updated
    with pytest.raises(NotFound):
        store.set_password_hash("nope", "$7$x")


def test_telemetry_dedupe_rollup_and_queries(store: SqlStore) -> None:
    store.add_device(_dev("d1"))
    base = 6000.0  # a minute boundary
    for seq in (0, 1, 2, 1, 0):  # duplicates, out of order
        w = one_model_window(device_id="d1", seq=seq, start=base + seq * 30, end=base + seq * 30 + 30, requests=4,
                            errors=1, model="m", model_version="1.0.0")  # fmt: skip
        store.submit_telemetry("d1", encode(w), time.time())
    store.flush()
    st = store.ingest_stats()
    assert st.telemetry_persisted == 3 and st.telemetry_duplicates == 2
    series = store.telemetry_series(device_id="d1")
    assert [(p.minute, p.windows, p.requests) for p in series] == [(6000.0, 2, 8), (6060.0, 1, 4)]
    assert sum(p.requests for p in store.telemetry_series(model="m", model_version="1.0.0")) == 12
    assert store.telemetry_series(model="m", model_version="2.0.0") == []
    assert [p.minute for p in store.telemetry_series(since=6060.0)] == [6060.0]
    assert [p.minute for p in store.telemetry_series(until=6060.0)] == [6000.0]
    stats = store.telemetry_seq("d1", since=None, until=None)
    assert (stats.first, stats.last, stats.count, stats.missing) == (0, 2, 3, 0)
    w = one_model_window(device_id="d1", seq=7, start=base + 90, end=base + 91, requests=4)
    store.submit_telemetry("d1", encode(w), time.time())
    store.flush()
    assert store.telemetry_seq("d1", since=None, until=None).missing == 4  # 3..6 never arrived
    assert store.telemetry_seq("nobody", since=None, until=None).first is None
    windows = store.telemetry_windows("d1", since=None, until=None, limit=10)
    assert [w.seq for w in windows] == [7, 2, 1, 0]
    # raw windows and their seq figures pick the same windows: those overlapping [since, until)
    assert [w.seq for w in store.telemetry_windows("d1", since=6060.0, until=6090.0, limit=10)] == [2, 1]
    stats = store.telemetry_seq("d1", since=6060.0, until=6090.0)
    assert (stats.first, stats.last, stats.count) == (1, 2, 2)
    assert [w.seq for w in store.telemetry_windows("d1", since=6061.0, until=None, limit=10)] == [7, 2]
    assert store.telemetry_seq("d1", since=None, until=6030.0).count == 1
    d = store.get_device("d1")
    assert d is not None and d.last_requests == 4 and d.telemetry_at is not None


def test_a_batch_touches_each_device_with_its_newest_window(store: SqlStore) -> None:
    """One batch, several devices, windows out of order: each device's last-seen columns come from its own
    newest window (PostgreSQL updates them all in one statement, SQLite one by one)."""
    for d in ("d1", "d2", "d3"):
        store.add_device(_dev(d))
    t = time.time()
    sent = {
        ("d1", 1): (5, t + 7),
        ("d2", 4): (9, t + 9),
        ("d1", 0): (2, t + 6),
        ("d2", 3): (1, t + 8),
        ("d1", 2): (3, t + 5),
    }
    for (d, seq), (requests, received_at) in sent.items():
        w = one_model_window(device_id=d, seq=seq, start=6000.0 + seq * 30, end=6030.0 + seq * 30, requests=requests)
        store.submit_telemetry(d, encode(w), received_at)
    store.flush()
    got = {d: store.get_device(d) for d in ("d1", "d2", "d3")}
    assert {d: (x.last_requests, x.telemetry_at, x.last_seen) for d, x in got.items() if x is not None} == {
        "d1": (3, t + 5, t + 5), "d2": (9, t + 9, t + 9), "d3": (None, None, None),
    }  # fmt: skip


def test_statuses_and_reports_wait_for_a_database_that_is_away_and_are_all_applied(postgres: PostgresServer) -> None:
    """They used to be dropped (`write_errors`) at the first connection that would not open; now they wait, in
    order, tried again at most every `away_retry_s`, and a flush after the database is back writes them."""
    url = postgres.create_database()
    store = open_store(Database.from_url(url), telemetry_process=False, away_retry_s=0.05)
    try:
        store.add_device(_dev("d1"))
        postgres.block(url)
        for seq, ts, phase in ((1, 10.0, Phase.DOWNLOADING), (2, 20.0, Phase.ACTIVE)):
            assert store.enqueue_reported(one_model_report(device_id="d1", seq=seq, ts=ts, phase=phase), 1000.0 + ts)
        assert store.enqueue_status(DeviceStatus(device_id="d1", state="online", ts=30.0), 1030.0)
        wait_for(lambda: (s := store.ingest_stats()).database_waits >= 10 or s.write_errors > 0, timeout=60)
        assert store.ingest_stats().write_errors == 0
        postgres.block(url, blocked=False)
        store.flush()
        d = store.get_device("d1")
        st = store.ingest_stats()
    finally:
        postgres.block(url, blocked=False)
        store.close()
    assert d is not None and d.status == "online" and d.reported is not None and d.reported.phase is Phase.ACTIVE
    assert (st.reported_applied, st.status_applied, st.write_errors) == (2, 1, 0)


def test_a_write_the_writer_does_not_get_to_in_time_is_withdrawn_not_applied_later(store: SqlStore) -> None:
    """A caller that stopped waiting for the writer (its database slow, a long job ahead) is told 503 and that
    nothing was written; the job is taken off the queue, so it does not run later behind the caller's back."""
    ran: list[str] = []
    busy, free = threading.Event(), threading.Event()

    def long_job(_c: object) -> None:
        busy.set()
        free.wait(30)

    ahead = threading.Thread(target=lambda: store._write(long_job))
    ahead.start()
    assert busy.wait(30)
    with pytest.raises(DatabaseUnavailable, match="nothing was written") as e:
        store._write(lambda _c: ran.append("late"), timeout=0.2)
    assert e.value.retry_after_s is not None and e.value.status == 503
    free.set()
    ahead.join(30)
    store.flush()
    assert ran == []
    store.add_device(_dev("d1"))  # the writer goes on
    assert store.get_device("d1") is not None


def test_reported_state_ignores_older_reports(store: SqlStore) -> None:
    store.add_device(_dev("d1"))
    for seq, ts, phase in ((2, 20.0, Phase.ACTIVE), (1, 10.0, Phase.DOWNLOADING), (3, 30.0, Phase.FAILED)):
        store.enqueue_reported(one_model_report(device_id="d1", seq=seq, ts=ts, phase=phase), time.time())
        store.flush()
    d = store.get_device("d1")
    assert d is not None and d.reported is not None and d.reported.phase is Phase.FAILED
    assert store.ingest_stats().stale_ignored == 1
    store.enqueue_status(DeviceStatus(device_id="d1", state="offline", ts=1.0), time.time())
    store.enqueue_status(DeviceStatus(device_id="ghost", state="online", ts=1.0), time.time())  # unknown: no row
    store.flush()
    d = store.get_device("d1")
    assert d is not None and d.status == "offline"


def test_desired_versions_are_monotonic_and_delete_is_refused_while_wanted(database: Database) -> None:
    s = open_store(database)
    s.add_device(_dev("d1"))
    with pytest.raises(Conflict):
        s.add_device(_dev("d1"))
    assert s.allocate_desired_versions(["d1"]) == {"d1": 1}
    s.add_model_version(_mv("1.0.0"))
    s.add_model_version(_mv("1.0.1"))  # same blob, deduplicated
    with pytest.raises(Conflict):
        s.add_model_version(_mv("1.0.0", sha="c" * 64))
    s.put_desired([Desired("d1", 1, (DesiredSlot("m", "1.0.0", "a" * 64),), "{}", 1.0, 2.0)])
    with pytest.raises(Conflict, match="still wanted"):
        s.delete_model_version("m", "1.0.0")
    assert s.delete_model_version("m", "1.0.1") is False  # the blob is still used by 1.0.0
    with pytest.raises(NotFound):
        s.delete_model_version("m", "9.9.9")
    with pytest.raises(NotFound):
        s.allocate_desired_versions(["nope"])
    s.close()
    s = open_store(database)
    try:
        assert s.allocate_desired_versions(["d1"]) == {"d1": 2}
        # an older version never replaces a newer one
        s.put_desired([Desired("d1", 2, (), "{}", 1.0, 2.0)])
        s.put_desired([Desired("d1", 1, (DesiredSlot("m", "1.0.0", "a" * 64),), "{}", 1.0, 2.0)])
        got = s.get_desired("d1")
        assert got is not None and got.version == 2 and got.slots == ()
        assert s.delete_model_version("m", "1.0.0") is True  # nobody wants it now; blob unused
    finally:
        s.close()


def test_devices_told_about_a_blob_as_a_model_or_a_shadow_candidate_lately(store: SqlStore) -> None:
    a, e = "a" * 64, "e" * 64
    store.add_devices([_dev(d) for d in ("model", "shadow", "earlier", "other")])
    store.add_model_version(_mv("1.0.0", sha=a))
    v = store.allocate_desired_versions(["model", "shadow", "earlier", "other"])
    store.put_desired([
        Desired("model", v["model"], (DesiredSlot("m", "1.0.0", a),), "{}", 100.0, 200.0),
        Desired("shadow", v["shadow"], (DesiredSlot("n", "2.0.0", e, shadow_name="m", shadow_version="1.0.0"),),
                "{}", 100.0, 200.0),
        Desired("earlier", v["earlier"], (DesiredSlot("m", "1.0.0", a),), "{}", 50.0, 200.0),
        Desired("other", v["other"], (DesiredSlot("n", "2.0.0", e),), "{}", 100.0, 200.0),
    ])  # fmt: skip
    assert store.devices_told(a, since=90.0) == ["model", "shadow"]
    assert store.devices_told(a, since=50.0) == ["earlier", "model", "shadow"]
    assert store.devices_told(e, since=0.0) == ["other", "shadow"]
    assert store.devices_told("f" * 64, since=0.0) == []


def test_retention_sweep(store: SqlStore) -> None:
    store.add_device(_dev("d1"))
    for seq in range(10):
        w = one_model_window(device_id="d1", seq=seq, start=60.0 * seq, end=60.0 * seq + 1)
        # received after they ended (a window more than CLOCK_SKEW_S ahead of the hub's clock is refused)
        store.submit_telemetry("d1", encode(w), received_at=1000.0 + seq)
    store.flush()
    deleted = store.sweep(raw_before=1005.0, rollup_before=120.0, raw_max_rows=1_000_000)
    assert deleted == 5 + 2
    assert len(store.telemetry_windows("d1", since=None, until=None, limit=100)) == 5
    assert min(p.minute for p in store.telemetry_series()) == 120.0


def test_reads_do_not_wait_for_a_busy_writer(store: SqlStore) -> None:
    store.add_device(_dev("d1"))
    gate = threading.Event()
    done = threading.Event()

    def slow(_conn: object) -> None:
        gate.wait(10)

    def write_slowly() -> None:
        store._write(slow)
        done.set()

    t = threading.Thread(target=write_slowly)
    t.start()
    try:
        # the writer is inside a transaction; reads still answer from their own connection
        assert store.get_device("d1") is not None
        assert store.list_devices() and not done.is_set()
    finally:
        gate.set()
        t.join(10)


def test_documents(store: SqlStore) -> None:
    store.put_doc("rollouts", "r1", {"state": "running"})
    store.put_doc("rollouts", "r1", {"state": "paused"})
    assert store.get_doc("rollouts", "r1") == {"state": "paused"}
    assert store.list_docs("rollouts") == [("r1", {"state": "paused"})]
    assert store.delete_doc("rollouts", "r1") and store.get_doc("rollouts", "r1") is None


def _status(state: str, ts: float, session: str = "s1") -> DeviceStatus:
    return DeviceStatus.model_validate({"device_id": "d1", "state": state, "ts": ts, "session": session})


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "one-batch"])
def test_a_status_never_replaces_a_newer_one(database: Database, batched: bool) -> None:
    """Statuses are ordered by `ts`, then `offline` after `online` (a connection's birth and will carry the same
    time), whether they come one by one (a replica behind, a broker's redelivery) or in one writer batch."""
    steps = [
        (_status("online", 10.0), "online"),  # connect at 10: the birth
        (_status("offline", 10.0), "offline"),  # that connection's will: the same time, and it follows the birth
        (_status("online", 10.0), "offline"),  # the birth delivered again: older than the will
        (_status("online", 20.0), "online"),  # reconnect at 20, same session: the new birth
        (_status("offline", 10.0), "online"),  # the first connection's will, late (a replica behind)
        (_status("online", 20.0), "online"),  # the same birth again: applied, no change
        (_status("offline", 30.0), "offline"),  # a clean stop at 30
        (_status("online", 20.0), "offline"),  # the birth, late, after the stop
        (_status("online", 40.0, session="s2"), "online"),  # a new run of the agent
        (_status("offline", 30.0), "online"),  # the old run's stop, late
    ]
    store = open_store(database, max_delay_s=0.5 if batched else 0.0, telemetry_process=False)  # 0.5 s: one batch
    try:
        store.add_device(_dev("d1"))
        for n, (msg, expected) in enumerate(steps):
            assert store.enqueue_status(msg, 1000.0 + n)
            if not batched:
                store.flush()
                d = store.get_device("d1")
                assert d is not None and d.status == expected, (n, msg)
        store.flush()
        d = store.get_device("d1")
    finally:
        store.close()
    assert d is not None and (d.status, d.session, d.status_at, d.last_seen) == ("online", "s2", 1008.0, 1008.0)


def test_the_overviews_recent_events_are_one_statement_newest_first(store: SqlStore) -> None:
    """They were one statement per action the overview shows (22 on every overview render and refresh)."""
    from hub.dashboard.views import OPERATOR_ACTIONS  # noqa: PLC0415
    from hub.settings import DeviceSettings  # noqa: PLC0415
    from hub.views import FleetViews  # noqa: PLC0415

    t = time.time()
    for i, action in enumerate(["deploy", "api.call", "rollout.start", "device.phase", "blob.corrupt", "deploy"]):
        store.add_event(t + i, "alice", action, f"s{i}", {})
    views = FleetViews(store, DeviceSettings())
    conn = store._read()  # this thread's reading connection: count what goes through it
    statements: list[str] = []
    execute = conn.execute

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        statements.append(sql)
        return execute(sql, *args, **kwargs)

    conn.execute = counted  # type: ignore[method-assign]
    try:
        events = views.recent_events(OPERATOR_ACTIONS, 3)
    finally:
        del conn.execute
    assert [(e.action, e.subject) for e in events] == [
        ("deploy", "s5"),
        ("blob.corrupt", "s4"),
        ("rollout.start", "s2"),
    ]
    assert len(statements) == 1, statements
    assert views.recent_events((), 3) == []

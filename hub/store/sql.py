"""The store over SQL: SQLite (one file in WAL mode, the embedded default) or PostgreSQL (shared by hub
replicas), one writer thread, a read connection per reading thread. The SQL is written once; what differs
between the backends is in `hub.store.connection` (fragments, placeholders, transactions) and in how
telemetry is written (`hub.store.telemetry`: executemany on SQLite, COPY on PostgreSQL).

Every write of this process runs on the writer thread, except telemetry, which the telemetry writer (a
process or a thread, `hub.store.telemetry_writer`) writes with a connection of its own. Status and reported
state are queued and written in batches (one transaction per batch); other writes are jobs that run in their
own transaction, in queue order, and hand their result back to the caller. Readers use their own
connections and never wait for the writer (WAL; PostgreSQL's MVCC).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from fleet.messages import DeviceStatus, ReportedState
from hub.errors import Conflict, DatabaseUnavailable, NotFound
from hub.store import migrations, reports
from hub.store import telemetry as tsql
from hub.store import telemetry_writer as tw
from hub.store.base import (
    DeviceTelemetryRead,
    Event,
    IngestStats,
    ModelVersion,
    SeqStats,
    StoredWindow,
    TelemetryPoint,
    Token,
)
from hub.store.connection import Conn, Database, away_wait_s, to_json, write_in_parts
from hub.store.coordination import Coordination
from hub.store.devices import DeviceTables, wanting_sql
from hub.store.journal import TelemetryJournal
from hub.store.telemetry_writer import TelemetryWriter
from hub.store.totals import TotalsQueries
from infra.files import private_file
from infra.logthrottle import log_sampled

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = ("stop",)
_INGEST = frozenset(("status", "reported"))
BLOB_PART_BYTES = 8 << 20
"""Rows of `blob_parts` hold this many bytes (a 100 MB model: 12 rows; one row at a time in memory)."""
_ATTEMPTS = 8  # a status/report batch is tried again this often after a deadlock or a lost connection (~5 s)


class SqlStore(DeviceTables, TotalsQueries, Coordination):
    """`Store` over an SQLite file or a PostgreSQL database. Thread-safe; create one per process, `close()` it."""

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 5000,
        max_queue: int = 200_000,
        max_delay_s: float = 0.05,
        telemetry_process: bool = True,
        away_retry_s: float = 5.0,
        journal: TelemetryJournal | None = None,
    ) -> None:
        self.database = database
        self.dialect = database.dialect
        if not self.dialect.postgres:
            database.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(database.path)  # password and token hashes, the audit log: the hub's user only (+ WAL)
        migrations.apply(database)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self.away_retry_s = away_retry_s
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._held: list[tuple[Any, ...]] = []  # status and reported messages waiting for an absent database
        self._held_due = 0.0  # when they are tried again (time.monotonic())
        self._held_tries = 0
        self._held_why = ""  # why the database is away, as the last try found
        self._local = threading.local()
        self._readers: list[Conn] = []
        self._readers_lock = threading.Lock()
        self._stats = IngestStats()
        self._n_refused = 0  # messages the writer could not write (for sampled logging)
        self._wconn = database.connect()
        self._lease_conn: Conn | None = None
        self._lease_lock = threading.Lock()
        self.telemetry = TelemetryWriter(
            database, process=telemetry_process, max_batch=max_batch, max_queue=max_queue, max_delay_s=max_delay_s,
            away_retry_s=away_retry_s, journal=journal,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="hub-store-writer", daemon=True)
        self._closed = False
        self._thread.start()

    # -- writer ------------------------------------------------------------------------------------
    def _collect(self) -> list[tuple[Any, ...]]:
        """The next batch: what is queued, and for ingested messages up to `max_delay_s` more (group commit).

        Every transaction has a fixed cost (rollup query, device updates, commit); waiting a few milliseconds
        for more messages turns many tiny transactions into a few large ones. A job (an API write) or the
        stop marker ends the wait at once.
        """
        try:  # while messages wait for the database, wake up when they are to be tried again
            first = self._q.get(timeout=max(0.0, self._held_due - time.monotonic()) if self._held else None)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + (self.max_delay_s if first[0] in _INGEST else 0.0)
        while len(batch) < self.max_batch:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(remaining, 0.002))
                continue
            batch.append(item)
            if item[0] not in _INGEST:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            ingest: list[tuple[Any, ...]] = []
            try:
                for item in batch:
                    if item[0] in _INGEST:
                        ingest.append(item)
                        continue
                    if ingest or self._held:  # before a job (a flush) or the stop: what waits is tried now
                        self._write_ingest(ingest, now=True)
                        ingest = []
                    if item is _STOP:
                        self._give_up_held()
                        self._wconn.close()
                        return
                    self._run_job(item[1], item[2])
                if ingest or self._held:
                    self._write_ingest(ingest)
            except Exception:  # never die, and never while holding a transaction: every API write would hang
                log.exception("store: the writer failed on a batch of %d; going on", len(batch))
                self._wconn.rollback()

    def _writer_conn(self) -> Conn:
        """The writer's connection, opened again if the server dropped it (PostgreSQL restarted, failed over)."""
        if self._wconn.broken:
            log.warning("store: the database connection was lost; reconnecting to %s", self.database)
            self._wconn = self.database.connect()
        return self._wconn

    def _run_job(self, fn: Callable[[Conn], Any], fut: Future[Any]) -> None:
        """Run a job in its own transaction, unless the statuses and reports before it could not be written just
        now (the database is away: the job fails at once, not tried)."""
        if not fut.set_running_or_notify_cancel():
            return  # its caller stopped waiting (`_write`) and was told it was not applied
        if self._held:
            wait = max(1, round(self._held_due - time.monotonic()))
            fut.set_exception(DatabaseUnavailable(
                f"the hub's database is away ({self._held_why}): nothing was written; try again in {wait} s",
                retry_after_s=wait,
            ))  # fmt: skip
            return
        try:
            result = _transaction(self._writer_conn, fn)
        except BaseException as e:
            fut.set_exception(e)
        else:
            fut.set_result(result)

    def _write_ingest(self, items: list[tuple[Any, ...]], *, now: bool = False) -> None:
        """Write status and reported messages, after those waiting for the database (in arrival order); while the
        database is away they all wait, tried again at most every `away_retry_s` (or `now`, before a job)."""
        if self._held:
            self._held.extend(items)
            if not now and time.monotonic() < self._held_due:
                return
            items, self._held = self._held, []
        away = self._write_batch(items)
        if away is None:
            self._held_tries = 0
            return
        self._held, self._held_why = items, away
        self._held_tries += 1
        self._stats = replace(self._stats, database_waits=self._stats.database_waits + 1)
        if log_sampled(self._held_tries):
            log.warning("store: the database is away; %d status and reported messages wait for it (try #%d): %s",
                        len(items), self._held_tries, away)  # fmt: skip
        self._held_due = time.monotonic() + away_wait_s(self._held_tries, self.away_retry_s)

    def _give_up_held(self) -> None:
        if self._held:
            log.error("store: the database is away and the hub stops: %d status and reported messages are not "
                      "written", len(self._held))  # fmt: skip
            self._stats = replace(self._stats, write_errors=self._stats.write_errors + 1)
            self._held = []

    def _write_batch(self, items: list[tuple[Any, ...]]) -> str | None:
        """Write a batch in one transaction; if a message fails it, write it in parts and refuse the failing ones.
        Returns None, or why the database is away (no connection opens, or a new one breaks too, on either pass):
        then the batch is unwritten.

        A message the database cannot take (a number out of range, a value the driver cannot bind) is that
        message's fault: refused and counted (`rows_refused`), and the rest of the batch is written. Any other
        failure of the database itself (locked, disk full) fails the batch (`write_errors`).
        """
        s = self._stats
        counts = (0, 0, 0, 0)
        if self.database.dialect.postgres:
            # Every replica writes every status and report: in device order (stable, so each device's own
            # messages keep their order), two replicas' batches lock the same rows in the same order. In arrival
            # order, batches cut at different places deadlocked (2000 agents, two replicas: batches lost).
            items = sorted(items, key=lambda item: item[1].device_id)
        broken = 0
        for attempt in range(_ATTEMPTS):
            conn = self._wconn
            try:
                conn = self._writer_conn()
                counts = self._write_items(conn, items, per_item=False)
                break
            except DatabaseUnavailable as e:
                return e.message
            except Exception as e:
                conn.rollback()
                if conn.broken:  # ended by the server: a new connection once (a restart), then the batch waits
                    broken += 1
                    if broken > 1:
                        return f"the server ended the connection twice: {str(e)[:300]}"
                    continue
                if attempt < _ATTEMPTS - 1 and isinstance(e, conn.errors) and conn.retryable(e):
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                    continue  # a deadlock with another writer: the whole batch again
                try:
                    if conn.database_failed(e):
                        raise
                    counts = self._write_items(conn, items, per_item=True)
                    break
                except Exception:
                    conn.rollback()
                    if conn.broken:  # ended by the server during the pass in parts: the batch waits, as above
                        return "the server ended the connection"
                    log.exception("store: writing a batch of %d ingested messages failed", len(items))
                    self._stats = replace(s, write_errors=s.write_errors + 1)
                    return None
        applied_status, applied_reported, stale, refused = counts
        self._stats = replace(
            s,
            status_applied=s.status_applied + applied_status,
            reported_applied=s.reported_applied + applied_reported,
            stale_ignored=s.stale_ignored + stale,
            rows_refused=s.rows_refused + refused,
        )
        return None

    def _write_items(self, conn: Conn, items: list[tuple[Any, ...]], *, per_item: bool) -> tuple[int, int, int, int]:
        """One transaction over `items`: as one batch (`hub.store.reports.write_batch`), or with `per_item` in
        parts that refuse the messages that fail (`write_in_parts`)."""
        conn.begin()
        if not per_item:
            applied_status, applied_reported, stale = reports.write_batch(conn, items)
            conn.commit()
            return applied_status, applied_reported, stale, 0
        parts, refused = write_in_parts(conn, items, lambda part: reports.write_batch(conn, part))
        conn.commit()
        for (kind, msg, _), e in refused:
            self._refused_row(kind, msg.device_id, e)
        return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), len(refused)

    def _refused_row(self, kind: str, device_id: str, e: Exception) -> None:
        self._n_refused += 1
        if log_sampled(self._n_refused):
            log.warning("store: refused a %s message of %s that cannot be written (#%d): %s: %s",
                        kind, device_id, self._n_refused, type(e).__name__, str(e)[:200])  # fmt: skip

    def _write(self, fn: Callable[[Conn], T], timeout: float = 60.0) -> T:
        """Run `fn` on the writer thread in a transaction of its own. A job the writer has not started within
        `timeout` is withdrawn: DatabaseUnavailable."""
        if self._closed:
            raise RuntimeError("store is closed")
        fut: Future[T] = Future()
        self._q.put(("job", fn, fut))
        try:
            return fut.result(timeout)
        except TimeoutError:
            if not fut.cancel():  # started meanwhile: its result comes (a transaction, or a connect timeout)
                return fut.result()
            raise DatabaseUnavailable(
                f"the hub's store did not get to this write within {timeout:g} s (its database is slow or away): "
                "nothing was written; try again"
            ) from None

    def _lease_write(self, fn: Callable[[Conn], T]) -> T:
        """Run `fn` in a transaction on the lease connection (renewals never queue behind the writer's work)."""
        with self._lease_lock:
            if self._closed:
                raise RuntimeError("store is closed")
            return _transaction(self._lease_connection, fn)

    def _lease_connection(self) -> Conn:
        if self._lease_conn is None or self._lease_conn.broken:
            self._lease_conn = self.database.connect()
        return self._lease_conn

    def _read(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.broken:
            conn = self.database.connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Write what is queued, stop the writers and close every connection."""
        if self._closed:
            return
        self.telemetry.close()
        with self._lease_lock:
            self._closed = True
            if self._lease_conn is not None:
                self._lease_conn.close()
        self._q.put(_STOP)
        self._thread.join(60)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- ingestion --------------------------------------------------------------------------------
    def _enqueue(self, item: tuple[Any, ...]) -> bool:
        if self._closed or self._q.qsize() + len(self._held) >= self.max_queue:
            self._stats = replace(self._stats, dropped_queue_full=self._stats.dropped_queue_full + 1)
            return False
        self._q.put(item)
        return True

    def enqueue_status(self, msg: DeviceStatus, received_at: float) -> bool:
        return self._enqueue(("status", msg, received_at))

    def enqueue_reported(self, msg: ReportedState, received_at: float) -> bool:
        return self._enqueue(("reported", msg, received_at))

    def submit_telemetry(self, device_id: str, payload: bytes, received_at: float) -> int | None:
        """Queue an undecoded window received on `device_id`'s topic; the telemetry writer decodes, checks and
        writes it. Returns the window's ticket (see `on_telemetry_committed`), or None when the writer's buffer
        is full (the window is dropped and counted)."""
        return self.telemetry.submit(device_id, payload, received_at)

    def on_telemetry_committed(self, callback: Callable[[int], None]) -> None:
        """Call `callback(ticket)` (on the writer's forwarder thread) whenever every window whose ticket is at most
        `ticket` has been committed, refused or counted lost: the hub acknowledges them to the broker then."""
        self.telemetry.on_committed = callback

    def flush(self, timeout: float = 30.0) -> None:
        """Return once everything queued before this call is written (telemetry writer included)."""
        self.telemetry.flush(timeout)
        self._write(lambda _c: None, timeout)

    def ingest_stats(self) -> IngestStats:
        s, w = self._stats, self.telemetry
        c = w.counters
        return replace(
            s,
            telemetry_persisted=c[tw.PERSISTED],
            telemetry_duplicates=c[tw.DUPLICATES],
            dropped_queue_full=s.dropped_queue_full + w.dropped,
            write_errors=s.write_errors + c[tw.WRITE_ERRORS],
            rows_refused=s.rows_refused + c[tw.REFUSED],
            telemetry_clock_ahead=c[tw.CLOCK_AHEAD],
            telemetry_accepted=c[tw.ACCEPTED],
            telemetry_malformed=c[tw.MALFORMED],
            telemetry_unknown_content=c[tw.UNKNOWN_CONTENT],
            telemetry_unsupported_schema=c[tw.UNSUPPORTED_SCHEMA],
            telemetry_foreign=c[tw.FOREIGN],
            telemetry_lost=w.lost,
            database_waits=s.database_waits + c[tw.DATABASE_WAITS],
            writer_restarts=w.restarts,
            journal_errors=0 if w.journal is None else w.journal.errors,
        )

    @property
    def queue_depth(self) -> int:
        """Messages waiting for a writer: this process's queue and the telemetry writer's buffer."""
        return self._q.qsize() + self.telemetry.queue_depth

    # -- meta, tokens, events, documents ------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._read().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        sql = "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        self._write(lambda c: c.execute(sql, (key, value)))

    def add_token(self, name: str, role: str, hashed: str, ts: float) -> int:
        sql = "INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)"
        return self._write(lambda c: int(c.execute(sql + " RETURNING id", (name, role, hashed, ts)).fetchone()[0]))

    def token_by_hash(self, hashed: str) -> Token | None:
        sql = "SELECT id, name, role, created_at, revoked FROM tokens WHERE hash = ?"
        row = self._read().execute(sql, (hashed,)).fetchone()
        return None if row is None else Token(row[0], row[1], row[2], row[3], bool(row[4]))

    def list_tokens(self) -> list[Token]:
        rows = self._read().execute("SELECT id, name, role, created_at, revoked FROM tokens ORDER BY id")
        return [Token(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def revoke_token(self, token_id: int) -> bool:
        sql = (  # one statement, so two concurrent revocations cannot both take an admin token of the last two
            "UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0 AND (role != 'admin' OR "
            "(SELECT count(*) FROM tokens WHERE role = 'admin' AND revoked = 0) > 1)"
        )
        return self._write(lambda c: c.execute(sql, (token_id,)).rowcount > 0)

    def add_event(self, ts: float, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
        sql = "INSERT INTO events (ts, actor, action, subject, details) VALUES (?, ?, ?, ?, ?)"
        self._write(lambda c: c.execute(sql, (ts, actor, action, subject, to_json(details))))

    def list_events(
        self,
        *,
        since: float | None,
        until: float | None,
        subject: str | None,
        action: str | tuple[str, ...] | None,
        limit: int,
    ) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []
        for cond, value in (("ts >= ?", since), ("ts < ?", until), ("subject = ?", subject)):
            if value is not None:
                where.append(cond)
                args.append(value)
        if isinstance(action, str):
            where.append("action = ?")
            args.append(action)
        elif action is not None:  # any of several, in the one statement
            where.append(f"action IN ({', '.join('?' * len(action))})" if action else "1 = 0")
            args.extend(action)
        sql = "SELECT id, ts, actor, action, subject, details FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def put_doc(self, collection: str, key: str, doc: dict[str, Any]) -> None:
        sql = (
            "INSERT INTO documents (collection, key, doc, updated_at, rev) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (collection, key) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at, "
            "rev = documents.rev + 1"
        )
        self._write(lambda c: c.execute(sql, (collection, key, to_json(doc), time.time())))

    def get_doc(self, collection: str, key: str) -> dict[str, Any] | None:
        sql = "SELECT doc FROM documents WHERE collection = ? AND key = ?"
        row = self._read().execute(sql, (collection, key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def list_docs(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._read().execute("SELECT key, doc FROM documents WHERE collection = ? ORDER BY key", (collection,))
        return [(r[0], dict(json.loads(r[1]))) for r in rows]

    def delete_doc(self, collection: str, key: str) -> bool:
        sql = "DELETE FROM documents WHERE collection = ? AND key = ?"
        return self._write(lambda c: c.execute(sql, (collection, key)).rowcount > 0)

    # -- registry -----------------------------------------------------------------------------------
    _MV = (
        "SELECT m.name, m.version, m.task, m.sha256, b.size, m.descriptor, b.manifest, m.created_at, m.created_by "
        "FROM model_versions m JOIN blobs b ON b.sha256 = m.sha256"
    )

    @staticmethod
    def _mv(r: Any) -> ModelVersion:
        return ModelVersion(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]), r[7], r[8])

    @property
    def shares_blobs(self) -> bool:
        """Whether the store keeps blobs' bytes for replicas on other hosts (PostgreSQL; SQLite is one machine's)."""
        return self.dialect.postgres

    def add_model_version(self, mv: ModelVersion, content: Path | None = None) -> ModelVersion:
        def job(c: Conn) -> ModelVersion:
            row = c.execute(
                "SELECT sha256 FROM model_versions WHERE name = ? AND version = ?", (mv.name, mv.version)
            ).fetchone()
            if row is not None:
                raise Conflict(f"model {mv.name}:{mv.version} already exists with sha256 {row[0]}")
            c.execute(
                "INSERT INTO blobs VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (mv.sha256, mv.size, to_json(mv.manifest), mv.created_at),
            )
            if content is not None and self.shares_blobs:
                self._add_blob_parts(c, mv.sha256, content)
            c.execute(
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mv.name, mv.version, mv.task, mv.sha256, to_json(mv.descriptor), mv.created_at, mv.created_by),
            )
            return self._mv(
                c.execute(self._MV + " WHERE m.name = ? AND m.version = ?", (mv.name, mv.version)).fetchone()
            )

        return self._write(job)

    @staticmethod
    def _add_blob_parts(c: Conn, sha256: str, content: Path) -> bool:
        """Store the bytes of `content` (the blob `sha256`) unless they are stored already (same transaction as
        its `blobs` row, so a blob another replica deletes meanwhile is never left registered without them);
        whether it stored them."""
        if c.execute("SELECT 1 FROM blob_parts WHERE sha256 = ? AND part = 0", (sha256,)).fetchone() is not None:
            return False
        with content.open("rb") as f:
            part = 0
            while data := f.read(BLOB_PART_BYTES):
                c.execute(  # another replica storing the same bytes at once (both starting): one copy
                    "INSERT INTO blob_parts VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (sha256, part, data), binary=True
                )
                part += 1
        return True

    def unshared_blobs(self) -> list[str]:
        """Registered blobs whose bytes the store does not keep (pushed before it kept them); [] where it keeps none."""
        if not self.shares_blobs:
            return []
        rows = self._read().execute(
            "SELECT sha256 FROM blobs b WHERE NOT EXISTS "
            "(SELECT 1 FROM blob_parts p WHERE p.sha256 = b.sha256 AND p.part = 0) ORDER BY sha256"
        )
        return [str(r[0]) for r in rows]

    def share_blob(self, sha256: str, content: Path) -> bool:
        """Keep the bytes of `content`, the registered blob `sha256`, where the store shares blobs; whether it
        stored them now (False if it keeps them already, if the blob was deleted meanwhile, or on SQLite)."""
        if not self.shares_blobs:
            return False

        def job(c: Conn) -> bool:
            if c.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)).fetchone() is None:
                return False
            return self._add_blob_parts(c, sha256, content)

        return self._write(job)

    def forget_blob_copy(self, sha256: str) -> None:
        """Delete the store's copy of blob `sha256` (found not to match its digest): `unshared_blobs` lists it
        again, and the next push of its file, or a replica starting with a good copy, stores it anew."""
        if self.shares_blobs:
            self._write(lambda c: c.execute("DELETE FROM blob_parts WHERE sha256 = ?", (sha256,)))

    def copy_blob(self, sha256: str, out: Callable[[bytes], object]) -> bool:
        """Hand the stored bytes of blob `sha256` to `out`, part by part, in order; False when the store keeps
        none (SQLite, or an unknown or deleted blob). The caller checks them against the digest."""
        if not self.shares_blobs:
            return False
        read = self._read()
        part = 0
        while (row := read.execute(
            "SELECT data FROM blob_parts WHERE sha256 = ? AND part = ?", (sha256, part)
        ).fetchone()) is not None:  # fmt: skip
            out(bytes(row[0]))
            part += 1
        return part > 0

    def get_model_version(self, name: str, version: str) -> ModelVersion | None:
        row = self._read().execute(self._MV + " WHERE m.name = ? AND m.version = ?", (name, version)).fetchone()
        return None if row is None else self._mv(row)

    def list_model_versions(self, name: str | None = None) -> list[ModelVersion]:
        if name is None:
            rows = self._read().execute(self._MV + " ORDER BY m.name, m.created_at")
        else:
            rows = self._read().execute(self._MV + " WHERE m.name = ? ORDER BY m.created_at", (name,))
        return [self._mv(r) for r in rows]

    def delete_model_version(self, name: str, version: str) -> bool:
        """Delete a version no device wants; True when its blob is now unused (the caller removes the file)."""

        def job(c: Conn) -> bool:
            row = c.execute("SELECT sha256 FROM model_versions WHERE name = ? AND version = ?", (name, version))
            found = row.fetchone()
            if found is None:
                raise NotFound(f"model {name}:{version} does not exist")
            wanting = [r[0] for r in c.execute(wanting_sql(c.dialect), (name, version, name, version)).fetchall()]
            if wanting:
                raise Conflict(f"model {name}:{version} is still wanted by {len(wanting)} device(s): {wanting[:5]}")
            c.execute("DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version))
            if c.execute("SELECT 1 FROM model_versions WHERE sha256 = ?", (found[0],)).fetchone() is None:
                c.execute("DELETE FROM blobs WHERE sha256 = ?", (found[0],))
                c.execute("DELETE FROM blob_parts WHERE sha256 = ?", (found[0],))
                return True
            return False

        return self._write(job)

    def blob_manifest(self, sha256: str) -> dict[str, Any] | None:
        row = self._read().execute("SELECT manifest FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- telemetry ----------------------------------------------------------------------------------
    def telemetry_windows(
        self, device_id: str, *, since: float | None, until: float | None, limit: int
    ) -> list[StoredWindow]:
        return tsql.query_windows(self._read(), device_id, since=since, until=until, limit=limit)

    def telemetry_series(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[TelemetryPoint]:
        return tsql.query_series(
            self._read(), device_id=device_id, model=model, model_version=model_version, since=since, until=until
        )

    def telemetry_seq(self, device_id: str, *, since: float | None, until: float | None) -> SeqStats:
        return tsql.seq_stats(self._read(), device_id, since=since, until=until)

    def device_telemetry(
        self, device_id: str, *, since: float | None, until: float | None, limit: int | None
    ) -> DeviceTelemetryRead:
        """Series, seq and (`limit` given) raw windows of one device in one snapshot: a telemetry commit never
        falls between them, so `seq` never counts a window that arrived after the series was read."""
        with self._read().snapshot() as c:
            return DeviceTelemetryRead(
                series=tsql.query_series(c, device_id=device_id, model=None, model_version=None, since=since,
                                         until=until),
                seq=tsql.seq_stats(c, device_id, since=since, until=until),
                windows=None if limit is None else tsql.query_windows(c, device_id, since=since, until=until,
                                                                       limit=limit),
            )  # fmt: skip

    def sweep(self, *, raw_before: float, rollup_before: float, raw_max_rows: int) -> int:
        return self._write(
            lambda c: tsql.sweep(c, raw_before=raw_before, rollup_before=rollup_before, raw_max_rows=raw_max_rows)
        )


def _transaction(connection: Callable[[], Conn], fn: Callable[[Conn], T]) -> T:
    """`fn` in a transaction on `connection()`, committed. Run again (three tries in all) after losing a deadlock
    or a serialisation conflict, or when the server had ended the connection before the commit (restarted,
    failed over: nothing was written, and `connection()` opens a new one); a commit cut off is the caller's."""
    for attempt in range(3):
        conn = connection()
        committing = False
        try:
            conn.begin()
            result = fn(conn)
            committing = True
            conn.commit()
        except BaseException as e:
            conn.rollback()
            ended = not committing and conn.broken and isinstance(e, conn.errors)
            if attempt == 2 or not (conn.retryable(e) or ended):
                raise
            continue
        return result
    raise AssertionError("unreachable: the last try returns or raises")

"""The SQLite backend: one file in WAL mode, one writer thread, a read connection per reading thread.

Every write runs on the writer thread, so SQLite never sees two writers. Ingested messages are queued and
written in batches (one transaction per batch); other writes are jobs that run in their own transaction,
in queue order, and hand their result back to the caller. Readers use their own connections and never
wait for the writer (WAL).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from fleet.messages import DeviceStatus, ReportedState, TelemetryWindow
from hub.errors import Conflict, NotFound
from hub.store import telemetry as tsql
from hub.store import telemetry_proc as tproc
from hub.store.base import Event, IngestStats, ModelVersion, SeqStats, StoredWindow, TelemetryPoint, Token
from hub.store.devices import WANTING_SQL, DeviceTables
from hub.store.migrations import migrations
from hub.store.telemetry_proc import TelemetryProcess
from hub.store.totals import TotalsQueries
from infra.files import private_file

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = ("stop",)
_INGEST = frozenset(("tel", "status", "reported"))


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open; never raise (the writer must go on)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("store: rollback failed")


def _phase_event(conn: sqlite3.Connection, msg: ReportedState, previous: str | None, received: float) -> None:
    """Record a device's phase change (download and activation history) as an event `device.phase`."""
    model = msg.active if msg.phase.value in ("active", "idle") else None
    details: dict[str, Any] = {"from": previous, "to": msg.phase.value, "desired_version": msg.desired_version}
    if model is not None:
        details["model"] = f"{model.name}:{model.version}"
        details["provider"] = model.provider
    if msg.download is not None:
        details["sha256"] = msg.download.sha256
        details["bytes_total"] = msg.download.bytes_total
    if msg.error is not None:
        details["error"] = {"code": msg.error.code, "message": msg.error.message}
    conn.execute(
        "INSERT INTO events (ts, actor, action, subject, details) VALUES (?, ?, 'device.phase', ?, ?)",
        (received, f"device/{msg.device_id}", f"device/{msg.device_id}", _j(details)),
    )


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class SqliteStore(DeviceTables, TotalsQueries):
    """`Store` over one SQLite file. Thread-safe; create one per process and `close()` it."""

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 5000,
        max_queue: int = 200_000,
        max_delay_s: float = 0.05,
        telemetry_process: bool = False,
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)  # password and token hashes, the audit log: the hub's user only (and its WAL files)
        db = Database(path)
        db.enable_wal()
        migrations.apply(db)
        db.close()
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._stats = IngestStats()
        self._n_refused = 0  # messages the writer could not write (for throttled logging)
        self._wconn = _connect(path, readonly=False)
        # Telemetry in a writer process of its own (hub.store.telemetry_proc), or on this process's writer.
        self.telemetry_proc: TelemetryProcess | None = None
        if telemetry_process:
            self.telemetry_proc = TelemetryProcess(
                str(path), max_batch=max_batch, max_queue=max_queue, max_delay_s=max_delay_s
            )
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
        first = self._q.get()
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
        conn = self._wconn
        while True:
            batch = self._collect()
            ingest: list[tuple[Any, ...]] = []
            try:
                for item in batch:
                    if item[0] in _INGEST:
                        ingest.append(item)
                        continue
                    if ingest:
                        self._write_ingest(conn, ingest)
                        ingest = []
                    if item is _STOP:
                        conn.close()
                        return
                    self._run_job(conn, item[1], item[2])
                if ingest:
                    self._write_ingest(conn, ingest)
            except Exception:  # never die, and never while holding a transaction: every API write would hang
                log.exception("store: the writer failed on a batch of %d; going on", len(batch))
                _rollback(conn)

    def _run_job(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any], fut: Future[Any]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as e:
            _rollback(conn)
            fut.set_exception(e)
        else:
            fut.set_result(result)

    def _write_ingest(self, conn: sqlite3.Connection, items: list[tuple[Any, ...]]) -> None:
        """Write a batch in one transaction; if that fails, write it item by item and refuse the bad ones.

        A message the database cannot take (a number out of range, a value SQLite cannot bind) is that
        message's fault: it is refused and counted (`rows_refused`), and the rest of the batch is written.
        A failure of the database itself (locked, disk full, I/O) fails the batch (`write_errors`).
        """
        try:
            counts = self._write_items(conn, items, per_item=False)
        except sqlite3.OperationalError:
            self._write_ingest_failed(conn, items)
            return
        except Exception:
            _rollback(conn)
            try:
                counts = self._write_items(conn, items, per_item=True)
            except Exception:
                self._write_ingest_failed(conn, items)
                return
        inserted, n_tel, applied_status, applied_reported, stale, refused = counts
        s = self._stats
        self._stats = replace(
            s,
            telemetry_persisted=s.telemetry_persisted + inserted,
            telemetry_duplicates=s.telemetry_duplicates + n_tel - inserted,
            status_applied=s.status_applied + applied_status,
            reported_applied=s.reported_applied + applied_reported,
            stale_ignored=s.stale_ignored + stale,
            rows_refused=s.rows_refused + refused,
        )

    def _write_ingest_failed(self, conn: sqlite3.Connection, items: list[tuple[Any, ...]]) -> None:
        log.exception("store: writing a batch of %d ingested messages failed", len(items))
        _rollback(conn)
        s = self._stats
        self._stats = replace(s, write_errors=s.write_errors + 1)

    def _write_items(
        self, conn: sqlite3.Connection, items: list[tuple[Any, ...]], *, per_item: bool
    ) -> tuple[int, int, int, int, int, int]:
        """One transaction over `items`; with `per_item`, each in a savepoint, refusing those that fail."""
        rows = [i[1] for i in items if i[0] == "tel"]
        inserted = applied_status = applied_reported = stale = refused = 0
        conn.execute("BEGIN IMMEDIATE")
        if rows and not per_item:
            inserted = tsql.write_windows(conn, rows)
        for item in items:
            if item[0] == "tel" and not per_item:
                continue
            if per_item:
                conn.execute("SAVEPOINT item")
            try:
                if item[0] == "tel":
                    inserted += tsql.write_windows(conn, [item[1]])
                elif item[0] == "status":
                    applied_status += self._apply_status(conn, item[1], item[2])
                elif self._apply_reported(conn, item[1], item[2]):
                    applied_reported += 1
                else:
                    stale += 1
            except sqlite3.OperationalError:
                raise  # the database, not the message: the caller fails the batch
            except Exception as e:
                if not per_item:
                    raise
                conn.execute("ROLLBACK TO item")
                refused += 1
                self._refused_row(item, e)
            if per_item:
                conn.execute("RELEASE item")
        conn.execute("COMMIT")
        return inserted, len(rows), applied_status, applied_reported, stale, refused

    def _refused_row(self, item: tuple[Any, ...], e: Exception) -> None:
        self._n_refused += 1
        n = self._n_refused
        if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two (as hub.ingest logs)
            device = item[1][0] if item[0] == "tel" else getattr(item[1], "device_id", "?")
            log.warning("store: refused a %s message of %s that cannot be written (#%d): %s: %s",
                        item[0], device, n, type(e).__name__, str(e)[:200])  # fmt: skip

    @staticmethod
    def _apply_status(conn: sqlite3.Connection, msg: DeviceStatus, received: float) -> int:
        caps = _j(msg.capabilities.model_dump(mode="json")) if msg.capabilities else None
        cur = conn.execute(
            "UPDATE devices SET status = ?, status_at = ?, session = ?, capabilities = coalesce(?, capabilities), "
            "last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
            (msg.state, received, msg.session, caps, received, msg.device_id),
        )
        return cur.rowcount

    @staticmethod
    def _apply_reported(conn: sqlite3.Connection, msg: ReportedState, received: float) -> bool:
        prev = conn.execute("SELECT phase FROM applied WHERE device_id = ?", (msg.device_id,)).fetchone()
        cur = conn.execute(
            "INSERT INTO applied (device_id, seq, ts, phase, received_at, doc) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, phase = excluded.phase, "
            "received_at = excluded.received_at, doc = excluded.doc "
            "WHERE excluded.seq > applied.seq OR excluded.ts > applied.ts",
            (msg.device_id, msg.seq, msg.ts, msg.phase.value, received, msg.model_dump_json()),
        )
        if cur.rowcount:
            conn.execute(
                "UPDATE devices SET last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
                (received, msg.device_id),
            )
            if prev is None or prev[0] != msg.phase.value:
                _phase_event(conn, msg, None if prev is None else prev[0], received)
        return cur.rowcount > 0

    def _write(self, fn: Callable[[sqlite3.Connection], T], timeout: float = 60.0) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        fut: Future[T] = Future()
        self._q.put(("job", fn, fut))
        return fut.result(timeout)

    def _read(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Write what is queued, stop the writers and close every connection."""
        if self._closed:
            return
        if self.telemetry_proc is not None:
            self.telemetry_proc.close()
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(60)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- ingestion --------------------------------------------------------------------------------
    def _enqueue(self, item: tuple[Any, ...]) -> bool:
        if self._closed or self._q.qsize() >= self.max_queue:
            self._stats = replace(self._stats, dropped_queue_full=self._stats.dropped_queue_full + 1)
            return False
        self._q.put(item)
        return True

    def enqueue_status(self, msg: DeviceStatus, received_at: float) -> bool:
        return self._enqueue(("status", msg, received_at))

    def enqueue_reported(self, msg: ReportedState, received_at: float) -> bool:
        return self._enqueue(("reported", msg, received_at))

    def enqueue_telemetry(self, msg: TelemetryWindow, received_at: float) -> bool:
        return self._enqueue(("tel", tsql.window_row(msg, received_at)))

    @property
    def takes_raw_telemetry(self) -> bool:
        return self.telemetry_proc is not None

    def submit_telemetry(self, device_id: str, payload: bytes, received_at: float) -> bool:
        """Queue an undecoded window for the telemetry writer process, which decodes, checks and writes it."""
        if self.telemetry_proc is None:
            raise RuntimeError("this store writes telemetry in-process: use enqueue_telemetry")
        return self.telemetry_proc.submit(device_id, payload, received_at)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once everything queued before this call is written (telemetry writer process included)."""
        if self.telemetry_proc is not None:
            self.telemetry_proc.flush(timeout)
        self._write(lambda _c: None, timeout)

    def ingest_stats(self) -> IngestStats:
        s, p = self._stats, self.telemetry_proc
        if p is None:
            return s
        c = p.counters
        return replace(
            s,
            telemetry_persisted=s.telemetry_persisted + c[tproc.PERSISTED],
            telemetry_duplicates=s.telemetry_duplicates + c[tproc.DUPLICATES],
            dropped_queue_full=s.dropped_queue_full + p.dropped,
            write_errors=s.write_errors + c[tproc.WRITE_ERRORS],
            rows_refused=s.rows_refused + c[tproc.REFUSED],
            telemetry_clock_ahead=c[tproc.CLOCK_AHEAD],
            telemetry_accepted=c[tproc.ACCEPTED],
            telemetry_malformed=c[tproc.MALFORMED],
            telemetry_foreign=c[tproc.FOREIGN],
            telemetry_lost=p.lost,
            writer_restarts=p.restarts,
        )

    @property
    def queue_depth(self) -> int:
        """Messages waiting for a writer: this process's queue and the telemetry writer's buffer."""
        return self._q.qsize() + (self.telemetry_proc.queue_depth if self.telemetry_proc is not None else 0)

    # -- meta, tokens, events, documents ------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._read().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        sql = "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        self._write(lambda c: c.execute(sql, (key, value)))

    def add_token(self, name: str, role: str, hashed: str, ts: float) -> int:
        sql = "INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)"
        return self._write(lambda c: int(c.execute(sql, (name, role, hashed, ts)).lastrowid or 0))

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
        self._write(lambda c: c.execute(sql, (ts, actor, action, subject, _j(details))))

    def list_events(
        self, *, since: float | None, until: float | None, subject: str | None, action: str | None, limit: int
    ) -> list[Event]:
        where, args = [], []
        for cond, value in (("ts >= ?", since), ("ts < ?", until), ("subject = ?", subject), ("action = ?", action)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = "SELECT id, ts, actor, action, subject, details FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def put_doc(self, collection: str, key: str, doc: dict[str, Any]) -> None:
        sql = (
            "INSERT INTO documents VALUES (?, ?, ?, ?) ON CONFLICT(collection, key) DO UPDATE SET "
            "doc = excluded.doc, updated_at = excluded.updated_at"
        )
        self._write(lambda c: c.execute(sql, (collection, key, _j(doc), time.time())))

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

    def add_model_version(self, mv: ModelVersion) -> ModelVersion:
        def job(c: sqlite3.Connection) -> ModelVersion:
            row = c.execute(
                "SELECT sha256 FROM model_versions WHERE name = ? AND version = ?", (mv.name, mv.version)
            ).fetchone()
            if row is not None:
                raise Conflict(f"model {mv.name}:{mv.version} already exists with sha256 {row[0]}")
            c.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", (mv.sha256, mv.size, _j(mv.manifest), mv.created_at)
            )
            c.execute(
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mv.name, mv.version, mv.task, mv.sha256, _j(mv.descriptor), mv.created_at, mv.created_by),
            )
            return self._mv(
                c.execute(self._MV + " WHERE m.name = ? AND m.version = ?", (mv.name, mv.version)).fetchone()
            )

        return self._write(job)

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

        def job(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT sha256 FROM model_versions WHERE name = ? AND version = ?", (name, version))
            found = row.fetchone()
            if found is None:
                raise NotFound(f"model {name}:{version} does not exist")
            wanting = [r[0] for r in c.execute(WANTING_SQL, (name, version, name, version)).fetchall()]
            if wanting:
                raise Conflict(f"model {name}:{version} is still wanted by {len(wanting)} device(s): {wanting[:5]}")
            c.execute("DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version))
            if c.execute("SELECT 1 FROM model_versions WHERE sha256 = ?", (found[0],)).fetchone() is None:
                c.execute("DELETE FROM blobs WHERE sha256 = ?", (found[0],))
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

    def sweep(self, *, raw_before: float, rollup_before: float, raw_max_rows: int) -> int:
        return self._write(
            lambda c: tsql.sweep(c, raw_before=raw_before, rollup_before=rollup_before, raw_max_rows=raw_max_rows)
        )

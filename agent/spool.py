"""The telemetry spool: a bounded on-disk queue of encoded windows in SQLite (the only agent module using SQL).

Every window is written here first and deleted once the broker acknowledged it (QoS 1 PUBACK), so windows
made while the broker is unreachable, or before an agent restart, are sent later in sequence order. The
window sequence counter lives in the same database, so it never goes back after a restart. When the
spool holds `capacity` windows the oldest are dropped and counted (`dropped`, reported in telemetry).
A window acknowledged by the broker but not yet deleted when the agent dies is sent again on restart;
the hub deduplicates by sequence number.

A disk that refuses writes (full, read-only) when the spool is opened does not stop the agent: the spool is
opened again on its next use, and the windows made meanwhile are counted as dropped by `agent.telemetry`.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from pathlib import Path

from agent.errors import SpoolError
from infra.files import private_file

log = logging.getLogger(__name__)

_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_DISK_SQLITE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})


def _disk_refused(e: sqlite3.Error | OSError) -> bool:
    """True when `e` is the disk refusing writes (full, read-only, failing), which may pass; not a bad file."""
    if isinstance(e, OSError):
        return e.errno in _DISK_ERRNOS
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DISK_SQLITE


_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 0), ('dropped', 0);
"""


class Spool:
    """A bounded, ordered, persistent queue of (seq, payload) pairs. Thread-safe.

    Args:
        path: the SQLite file (created with its directory).
        capacity: most windows kept; the oldest beyond it are dropped and counted.

    Raises:
        SpoolError: the file is not a spool database (a disk refusing writes is logged and retried on use).
    """

    def __init__(self, path: str | Path, capacity: int) -> None:
        if capacity < 1:
            raise SpoolError(f"spool capacity must be >= 1, got {capacity}")
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except SpoolError as e:
            if e.permanent:
                raise
            log.error("%s; telemetry windows are counted as dropped until the disk takes writes again", e)

    def _open(self) -> sqlite3.Connection:
        """Connect, create the tables if missing.

        Raises:
            SpoolError: temporary (`permanent` False) when the disk refuses writes (full, read-only, I/O
                error): the next use tries again; permanent when the file is not a spool database.
        """
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(self.path)  # SQLite gives its -wal and -shm files the database file's mode
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            disk = _disk_refused(e)
            raise SpoolError(f"cannot open telemetry spool {self.path}: {e}", permanent=not disk) from e

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open database; opened again if the disk refused it before (call with the lock held)."""
        if self._db is None:
            self._db = self._open()
            log.info("telemetry spool %s open again", self.path)
        return self._db

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def allocate_seq(self) -> int:
        """The next window sequence number (persisted before it is returned, so never reused)."""
        with self._lock, self._tx():
            seq = self._meta("next_seq")
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            return seq

    def push(self, seq: int, payload: bytes) -> int:
        """Store one window; returns how many old windows were dropped to stay within capacity."""
        with self._lock, self._tx():
            self._conn.execute("INSERT OR REPLACE INTO windows (seq, payload) VALUES (?, ?)", (seq, payload))
            excess = self._count() - self.capacity
            if excess > 0:
                self._conn.execute(
                    "DELETE FROM windows WHERE seq IN (SELECT seq FROM windows ORDER BY seq LIMIT ?)", (excess,)
                )
                self._conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))
            return max(excess, 0)

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` oldest windows, in sequence order (they stay until `ack`)."""
        with self._lock, self._tx():
            rows = self._conn.execute("SELECT seq, payload FROM windows ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seq: int) -> None:
        """Delete a window the broker acknowledged."""
        with self._lock, self._tx():
            self._conn.execute("DELETE FROM windows WHERE seq = ?", (seq,))

    def _count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM windows").fetchone()[0])

    @property
    def pending(self) -> int:
        """Windows waiting to be sent."""
        with self._lock, self._tx():
            return self._count()

    @property
    def dropped(self) -> int:
        """Windows dropped because the spool was full, since the spool file was created."""
        with self._lock, self._tx():
            return self._meta("dropped")

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), for an autocommit connection.

    Any SQLite error inside becomes a SpoolError (disk full, file removed, database locked too long).
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise SpoolError(f"telemetry spool unavailable: {e}") from e

    def __exit__(self, exc_type: object, exc: object, _tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        except sqlite3.Error as e:
            raise SpoolError(f"telemetry spool write failed: {e}") from e
        if isinstance(exc, sqlite3.Error):
            raise SpoolError(f"telemetry spool write failed: {exc}") from exc

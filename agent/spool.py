"""The telemetry spool: a bounded on-disk queue of encoded windows in SQLite (the only agent module using SQL).

Every window is written here first and deleted once the broker acknowledged it (QoS 1 PUBACK), so windows
made while the broker is unreachable, or before an agent restart, are sent later in sequence order. The
window sequence counter lives in the same database, so it never goes back after a restart. When the
spool holds `capacity` windows the oldest are dropped and counted (`dropped`, reported in telemetry).
A window acknowledged by the broker but not yet deleted when the agent dies is sent again on restart;
the hub deduplicates by sequence number.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from agent.errors import SpoolError
from infra.files import private_file

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
        SpoolError: the file cannot be opened or is not a spool database.
    """

    def __init__(self, path: str | Path, capacity: int) -> None:
        if capacity < 1:
            raise SpoolError(f"spool capacity must be >= 1, got {capacity}")
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(self.path)  # SQLite gives its -wal and -shm files the database file's mode
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise SpoolError(f"cannot open telemetry spool {self.path}: {e}") from e

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def allocate_seq(self) -> int:
        """The next window sequence number (persisted before it is returned, so never reused)."""
        with self._lock, self._tx():
            seq = self._meta("next_seq")
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            return seq

    def push(self, seq: int, payload: bytes) -> int:
        """Store one window; returns how many old windows were dropped to stay within capacity."""
        with self._lock, self._tx():
            self._db.execute("INSERT OR REPLACE INTO windows (seq, payload) VALUES (?, ?)", (seq, payload))
            excess = self._count() - self.capacity
            if excess > 0:
                self._db.execute(
                    "DELETE FROM windows WHERE seq IN (SELECT seq FROM windows ORDER BY seq LIMIT ?)", (excess,)
                )
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))
            return max(excess, 0)

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` oldest windows, in sequence order (they stay until `ack`)."""
        with self._lock, self._tx():
            rows = self._db.execute("SELECT seq, payload FROM windows ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seq: int) -> None:
        """Delete a window the broker acknowledged."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM windows WHERE seq = ?", (seq,))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])

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
            self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


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

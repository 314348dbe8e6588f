"""Connections to the hub's database: the one place that opens them, for the store's writer and readers and
for the telemetry writer (thread or process), so every writer runs with the same settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 30  # how long a writer waits for another writer's transaction (the other writer, a replica)


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection to the SQLite file at `path` in autocommit mode (transactions are explicit).

    Args:
        path: the database file (WAL mode is set when the store creates it).
        readonly: refuse writes on this connection (readers), instead of the writer settings.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn

"""An online copy of the SQLite store while the hub writes to it: SQLite's backup API, one snapshot.

`sqlite3.Connection.backup` copies the database page by page, in steps. A step run outside a transaction
takes a fresh read lock each time, and the copy starts over whenever another connection wrote in between:
under a steady stream of telemetry it may never finish. Here the source connection holds one read
transaction for the whole copy, so every step reads the same snapshot (the copy is consistent and ends),
while in WAL mode the hub's writers go on committing beside it (they append to the WAL; only checkpoints wait
for the snapshot to be released). The copy is checked with `PRAGMA integrity_check` before it is trusted.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from hub.errors import BackupFailed, DatabaseUnavailable
from hub.store.connection import Database

PAGES_PER_STEP = 1024
"""Pages copied per step (4 MiB of 4 KiB pages): the progress callback runs between steps."""


def backup_sqlite(
    source: Path, dest: Path, *, progress: Callable[[int, int], None] | None = None, pages: int = PAGES_PER_STEP
) -> list[str]:
    """Copy the SQLite database `source` to the new file `dest` (mode 0600: it holds token and password hashes)
    as one consistent snapshot; returns the sha256 digests of the blobs the copy's model versions name (what a
    backup must hold beside it).

    Args:
        progress: called after each step with (pages copied, pages in all).

    Raises:
        BackupFailed: the source cannot be read, or the copy fails `PRAGMA integrity_check`.
    """
    try:
        src = Database.sqlite(source).connect(readonly=True).raw
    except sqlite3.Error as e:
        raise BackupFailed(f"cannot open the database {source}: {e}") from e
    try:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # never readable by others, even briefly
        out = sqlite3.connect(dest, isolation_level=None)
        try:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # the read snapshot starts here
            step = None if progress is None else lambda _status, left, total: progress(total - left, total)
            src.backup(out, pages=pages, progress=step)
            src.execute("COMMIT")
            problems = [row[0] for row in out.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupFailed(f"the copy of {source} fails its integrity check: {'; '.join(problems[:5])}")
            return [row[0] for row in out.execute("SELECT DISTINCT sha256 FROM model_versions ORDER BY sha256")]
        finally:
            out.close()
    except (sqlite3.Error, OSError) as e:
        raise BackupFailed(f"copying the database {source} failed: {e}") from e
    finally:
        src.close()


def read_meta(database: Database, key: str) -> str | None:
    """One value of the store's `meta` table (None: not set), read on a connection of its own, opened and closed
    here: what a backup records about the hub it copied (its instance id) without opening a whole store.

    Raises:
        BackupFailed: the database cannot be read.
    """
    try:
        conn = database.connect(readonly=True)
    except (sqlite3.Error, DatabaseUnavailable) as e:
        raise BackupFailed(f"cannot read the database {database}: {e}") from e
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except conn.errors as e:
        raise BackupFailed(f"cannot read the database {database}: {e}") from e
    finally:
        conn.close()
    return None if row is None else str(row[0])

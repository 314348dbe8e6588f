"""Files only their owner may read: databases and state that hold secrets or could be tampered with."""

from __future__ import annotations

import os
from pathlib import Path


def private_file(path: Path) -> Path:
    """Create `path` if missing and make it (and SQLite's `-wal`/`-shm` beside it, if present) mode 0600.

    Call before SQLite opens the file: SQLite creates its WAL and shared-memory files with the database
    file's mode, so they stay private too. An existing file created 0644 by an older version is tightened.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)
    return path

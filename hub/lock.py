"""An exclusive lock on a hub's data directory, so a second `hub serve` on it refuses instead of taking over.

Two hub processes on one data directory and one broker session fight: the second took over the first's
MQTT session, republished every desired state and then died with a traceback. `DataDirLock` is an
`flock(2)` on `<data_dir>/hub[-<replica>].lock`, held for the hub's lifetime and released by the kernel
when the process ends (SIGKILL included), so a stale lock never blocks a restart. Replicas that share a
store through an external broker name themselves (`broker.replica`) and each take their own lock; a hub
that runs the local Mosquitto also takes `broker.lock`, because that broker's files live in the data dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from hub.errors import DataDirLocked


class DataDirLock:
    """Holds `flock`s on lock files in a data directory until `release()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fds: list[int] = []

    def acquire(self, name: str, what: str) -> None:
        """Take `<data_dir>/<name>.lock`; DataDirLocked (naming the holder's pid) when another process has it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(
                f"another hub (pid {holder}) is running on {self.data_dir}{' ' + what if what else ''}: stop it "
                "first (replicas of one store need an external broker and a broker.replica name each)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds.append(fd)

    def release(self) -> None:
        """Drop every lock (also done by the kernel when the process exits)."""
        while self._fds:
            fd = self._fds.pop()
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

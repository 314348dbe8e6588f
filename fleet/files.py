"""Durable file writes shared by the chunk receiver and the agent's store (os-level only, no network I/O).

The rules these helpers encode: data reaches disk (fsync) before anything that vouches for it (a resume
bitmap, a pointer, a rename into the store), and a rename is durable only once its directory is fsynced.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux); None elsewhere. The os module does not expose it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting for it (best effort).

    Dirty pages otherwise wait in memory until an fsync (or 30 s), so every receiver's fsync at the end of
    a transfer would wait for its whole blob to reach the disk; started early, the disk writes overlap the
    transfer and the final fsync finds little left to do. Durability still comes only from fsync.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset` straight from the caller's buffer (no copy in Python).

    Raises:
        OSError: the write failed (disk full, file-size limit); what was written before stays unvouched.
    """
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"wrote nothing at offset {offset}")
        view, offset = view[n:], offset + n


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content: write, fsync, rename.

    Args:
        path: the file to replace.
        data: its new content.
        mode: permissions of the file, exactly (whatever the umask or a leftover temporary file had).
        sync_dir: also fsync the directory, so the new content survives a crash. False where losing the
            rename is harmless (a resume bitmap: the old one names fewer chunks, all of them still on disk).

    Raises:
        OSError: the write failed (disk full, read-only); `path` is unchanged and no temporary file is left.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask or a leftover .tmp file had
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # disk full: the truncated temporary file must not keep the space it took
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def file_digest(path: str | Path) -> tuple[str, int]:
    """sha256 hex and size of a file, in one streamed read."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size

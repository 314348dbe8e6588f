from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.files import atomic_write, fsync_dir, pwrite_all


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "pointer.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new" * 100_000, sync_dir=False)
    assert path.read_bytes() == b"new" * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pointer.json"]


def test_atomic_write_creates_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    old = os.umask(0)
    try:
        atomic_write(path, b"x", mode=0o600)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_pwrite_all_writes_a_view_at_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        payload = memoryview(b"HEADER" + b"abcdef")
        pwrite_all(fd, payload[6:], 4)
        pwrite_all(fd, b"", 100)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0\0\0\0abcdef"


def test_pwrite_all_on_a_closed_descriptor_raises_oserror(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)
    with pytest.raises(OSError):
        pwrite_all(fd, b"x", 0)


def test_fsync_dir_of_a_missing_directory_is_best_effort(tmp_path: Path) -> None:
    fsync_dir(tmp_path / "absent")  # no error: the caller's rename already happened or failed on its own
    fsync_dir(tmp_path)

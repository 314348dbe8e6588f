"""Real small filesystems for tests: a tmpfs or a loop-mounted ext4 image of their own, so ENOSPC and EROFS come
from the kernel, not from a simulation. Mounting needs root: where it is refused the test is skipped with the
reason, except under CI=true (where it must run)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted(path: Path, what: str, *mount_args: str) -> Iterator[Path]:
    """`mount *mount_args path` for the block, unmounted after it, failed or not. Skipped, with the reason,
    where mounting is refused (not root), except under CI=true."""
    try:
        subprocess.run(["mount", *mount_args, str(path)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        if os.environ.get("CI") == "true":
            raise
        said = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip()
        pytest.skip(f"cannot mount {what} (needs root): {said or e}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still write on `path`'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SmallDisk:
    """A 32 MiB ext4 image loop-mounted at `path` (errors=remount-ro, no blocks reserved for root)."""

    MOUNT_OPTIONS = "loop,errors=remount-ro"

    def __init__(self, image: Path, path: Path) -> None:
        self.image = image
        self.path = path
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Take every free byte but `leave` (another program's logs, say)."""
        with self.filler.open("ab", buffering=0) as f:
            if leave:
                f.write(b"\0" * max(0, free_bytes(self.path) - leave))
                return
            for size in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)
        assert free_bytes(self.path) < 64 * 1024

    def free(self) -> None:
        self.filler.unlink()

    def fail(self) -> None:
        """An error on the device: ext4 turns the filesystem read-only under the running agent, as it does on
        a failing SD card."""
        device = Path(subprocess.run(["findmnt", "-no", "SOURCE", str(self.path)], check=True, capture_output=True,
                                     text=True).stdout.strip())  # fmt: skip
        (Path("/sys/fs/ext4") / device.name / "trigger_fs_error").write_text("1")
        with pytest.raises(OSError, match="Read-only file system"):
            (self.path / "probe").touch()

    def repair(self) -> None:
        """What an operator does (with the agent stopped): unmount, fsck, mount again."""
        subprocess.run(["umount", str(self.path)], check=True)
        subprocess.run(["e2fsck", "-fy", str(self.image)], check=False, capture_output=True)
        subprocess.run(["mount", "-o", self.MOUNT_OPTIONS, str(self.image), str(self.path)], check=True)


@contextmanager
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A fresh 32 MiB ext4 image under `tmp_path`, mounted for the block (see `mounted`)."""
    image, path = tmp_path / "small.img", tmp_path / "small"
    path.mkdir()
    with image.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    with mounted(path, "an ext4 image", "-o", SmallDisk.MOUNT_OPTIONS, str(image)):
        yield SmallDisk(image, path)


@contextmanager
def read_only_tmpfs(path: Path) -> Iterator[Path]:
    """A read-only 1 MiB tmpfs at `path` (created) for the block (see `mounted`)."""
    path.mkdir(parents=True, exist_ok=True)
    with mounted(path, "a read-only tmpfs", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"):
        yield path

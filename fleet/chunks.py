"""Chunked blob transfer: split a blob into verified chunks; reassemble them in any order, resumably.

Wire frame of one chunk (big-endian, binary, never base64):

    offset  size  field
    0       4     magic b"EFC1"
    4       1     frame version (1)
    5       3     reserved, zero
    8       32    sha256 of the whole blob (raw bytes)
    40      4     chunk index
    44      4     chunk count of the blob
    48      4     payload length
    52      n     payload

The receiver's on-disk state is two files in its work directory: `<sha256>.part` (the blob, written in
place at each chunk's offset) and `<sha256>.bitmap` (a header naming the manifest, then one bit per
verified chunk). A bit is set on disk only after the chunk's bytes were fsynced, so after a crash at any
instant every set bit is backed by verified, durable data; chunks whose bits were lost are wanted again.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from fleet.bitmap import ChunkBitmap
from fleet.errors import (
    ChunkDecodeError,
    ChunkDigestMismatch,
    ChunkForeignBlob,
    ChunkOutOfRange,
    ReceiverStateError,
)
from fleet.files import atomic_write, fsync_dir, pwrite_all, start_writeback
from fleet.messages import BlobManifest, Range

MAGIC = b"EFC1"
FRAME_VERSION = 1
_HEADER = struct.Struct(">4sB3x32sIII")
HEADER_SIZE = _HEADER.size
_BITMAP_MAGIC = b"EFB1"
_BITMAP_HEADER = 4 + 32  # magic, then the manifest digest


@dataclass(frozen=True)
class ChunkFrame:
    """One decoded chunk frame. `data` is a memoryview into the received payload (no copy)."""

    sha256: str
    index: int
    count: int
    data: memoryview


def encode_frame(sha256: str, index: int, count: int, data: bytes | memoryview) -> bytes:
    """Build the binary frame of chunk `index` of blob `sha256`."""
    header = _HEADER.pack(MAGIC, FRAME_VERSION, bytes.fromhex(sha256), index, count, len(data))
    return header + bytes(data)


def decode_frame(payload: bytes | memoryview, *, max_chunk: int = 64 << 20) -> ChunkFrame:
    """Parse a chunk frame. Raises ChunkDecodeError for anything truncated, oversized or foreign."""
    view = memoryview(payload)
    if len(view) < HEADER_SIZE:
        raise ChunkDecodeError(f"chunk frame of {len(view)} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, digest, index, count, length = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ChunkDecodeError(f"not a chunk frame (magic {bytes(magic)!r})")
    if version != FRAME_VERSION:
        raise ChunkDecodeError(f"chunk frame version {version} is not supported (this build speaks 1)")
    if length > max_chunk:
        raise ChunkDecodeError(f"chunk of {length} bytes exceeds the {max_chunk}-byte limit")
    if len(view) - HEADER_SIZE != length:
        raise ChunkDecodeError(f"chunk frame says {length} payload bytes but carries {len(view) - HEADER_SIZE}")
    return ChunkFrame(digest.hex(), index, count, view[HEADER_SIZE:])


def chunk_of(data: bytes | memoryview, manifest: BlobManifest, index: int) -> memoryview:
    """Chunk `index` of an in-memory blob (a view, no copy)."""
    start = manifest.offset(index)
    return memoryview(data)[start : start + manifest.chunk_length(index)]


def read_chunk(f: BinaryIO, manifest: BlobManifest, index: int) -> bytes:
    """Read chunk `index` of the blob open as `f` (bounded memory: one chunk)."""
    if not 0 <= index < manifest.count:
        raise ChunkOutOfRange(f"chunk {index} is outside 0..{manifest.count - 1}")
    f.seek(manifest.offset(index))
    return f.read(manifest.chunk_length(index))


def iter_frames(path: Path, manifest: BlobManifest, indexes: list[int] | None = None) -> Iterator[bytes]:
    """Yield encoded frames of the wanted chunks (all by default), reading one chunk at a time."""
    with path.open("rb") as f:
        for i in range(manifest.count) if indexes is None else indexes:
            yield encode_frame(manifest.sha256, i, manifest.count, read_chunk(f, manifest, i))


def manifest_digest(manifest: BlobManifest) -> bytes:
    """A digest naming the whole manifest (blob digest, size, chunking and chunk list)."""
    return hashlib.sha256(manifest.model_dump_json(exclude_none=True).encode()).digest()


class Accepted(Enum):
    """What the receiver did with a chunk."""

    NEW = "new"
    DUPLICATE = "duplicate"


class ChunkProgress(ABC):
    """Which chunks of one blob are verified: a bitmap over its signed manifest. Subclasses `put` the bytes.

    `ChunkReceiver` writes them to a work file; the fleet simulator's receivers share one file between
    many simulated devices, each with its own progress.
    """

    manifest: BlobManifest
    bitmap: ChunkBitmap

    def has(self, index: int) -> bool:
        return self.bitmap.has(index)

    @property
    def have_count(self) -> int:
        return self.bitmap.have

    @property
    def bytes_done(self) -> int:
        """Bytes of verified chunks."""
        m = self.manifest
        return sum(m.chunk_length(i) for i in self.bitmap.held())

    @property
    def complete(self) -> bool:
        return self.bitmap.complete

    def missing(self) -> list[int]:
        """Indexes not yet verified, ascending."""
        return self.bitmap.missing()

    def missing_ranges(self) -> list[Range]:
        return self.bitmap.missing_ranges()

    def accept(self, frame: ChunkFrame | bytes) -> Accepted:
        """Verify and keep one received chunk; raise a ChunkError subclass if refused (the index stays wanted)."""
        if not isinstance(frame, ChunkFrame):
            frame = decode_frame(frame, max_chunk=self.manifest.chunk_size)
        check_frame(self.manifest, frame)
        return self.put(frame.index, frame.data)

    @abstractmethod
    def put(self, index: int, data: bytes | memoryview) -> Accepted:
        """Verify chunk `index` against the signed chunk list and keep it (ChunkDigestMismatch if it differs)."""


class ChunkReceiver(ChunkProgress):
    """Reassembles one blob from chunks arriving in any order, with duplicates and gaps, across restarts.

    Args:
        manifest: the signed manifest; every chunk is checked against its digest list.
        workdir: where the partial file and bitmap live (same filesystem as the final destination).
        sync_every: persist data and bitmap after this many new chunks at the latest.
        sync_interval_s: ... or once the oldest chunk not yet persisted is this many seconds old. A crash loses
            at most the chunks of that span; they are simply wanted again. fsync is the dominant cost when
            many receivers share a disk, so the default persists about once a second, not per chunk, and a
            blob that arrives whole within the interval is persisted once, by `finish()`.

    Each received byte is hashed once: a chunk is checked against the signed chunk list, and a blob whose
    every chunk checked enters the store without a whole-blob pass, because the chunk list is signed together
    with the blob's sha256 (design.md, flow 3). Chunk bytes go from the receive buffer to the file with one
    `pwrite` (no copy in Python).
    """

    def __init__(
        self, manifest: BlobManifest, workdir: Path, *, sync_every: int = 1024, sync_interval_s: float = 1.0
    ) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.sync_every = max(1, sync_every)
        self.sync_interval_s = sync_interval_s
        self._dirty_since = 0.0  # monotonic time of the oldest chunk not yet persisted
        self.part_path = workdir / f"{manifest.sha256}.part"
        self.bitmap_path = workdir / f"{manifest.sha256}.bitmap"
        self.discarded: str | None = None
        self._tag = manifest_digest(manifest)
        self.bitmap = ChunkBitmap(manifest.count)
        self._unsynced = 0
        self._bitmap_fd = -1
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._load_state()
        except ReceiverStateError as e:
            self.discarded = str(e)
            self.bitmap.clear()
        # No preallocation: chunks usually arrive in order, and appending is several times cheaper than
        # writing into a sparse file on ext4. The file reaches its full size when its last chunk lands.
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)

    # -- state ------------------------------------------------------------------------------------
    def _load_state(self) -> None:
        if not self.bitmap_path.exists():
            if self.part_path.exists():
                self.part_path.unlink()
            return
        raw = self.bitmap_path.read_bytes()
        problem = None
        if len(raw) != _BITMAP_HEADER + ChunkBitmap.size_for(self.manifest.count) or raw[:4] != _BITMAP_MAGIC:
            problem = "unreadable resume bitmap"
        elif raw[4:36] != self._tag:
            problem = "resume bitmap belongs to another manifest"
        elif not self.part_path.exists() or self.part_path.stat().st_size > self.manifest.size:
            problem = "partial file missing or larger than the blob"
        else:
            try:
                self.bitmap = ChunkBitmap(self.manifest.count, raw[_BITMAP_HEADER:])
            except ValueError as e:
                problem = f"unreadable resume bitmap ({e})"
        if problem:
            self.bitmap_path.unlink(missing_ok=True)
            self.part_path.unlink(missing_ok=True)
            raise ReceiverStateError(f"{problem}; starting {self.manifest.sha256[:12]} over")

    def flush(self) -> None:
        """Make every accepted chunk durable, then record it in the bitmap.

        The bitmap file is created once (written, fsynced, renamed into place); later flushes overwrite its
        bits in place and `fdatasync` them. That is safe without a rename because bits only ever turn on
        while the file exists (`reset()` deletes it): a write torn by a crash leaves each byte old or new, and
        every bit in either was fsynced data before it was written.
        """
        if self._unsynced == 0:
            return
        os.fsync(self._fd)
        bits = self.bitmap.to_bytes()
        if self._bitmap_fd < 0:
            atomic_write(self.bitmap_path, _BITMAP_MAGIC + self._tag + bits, sync_dir=False)
            self._bitmap_fd = os.open(self.bitmap_path, os.O_WRONLY)
        else:
            pwrite_all(self._bitmap_fd, bits, _BITMAP_HEADER)
            os.fdatasync(self._bitmap_fd)
        self._unsynced = 0

    def _close_bitmap(self) -> None:
        if self._bitmap_fd >= 0:
            os.close(self._bitmap_fd)
            self._bitmap_fd = -1

    # -- chunks -----------------------------------------------------------------------------------
    def put(self, index: int, data: bytes | memoryview) -> Accepted:
        """Verify and write chunk `index` from any source: a received frame, or the same chunk held on disk.

        Raises:
            ChunkDigestMismatch: wrong length or digest (nothing is written; the index stays wanted).
            OSError: the write failed (disk full); nothing is marked.
        """
        if self.bitmap.has(index):
            return Accepted.DUPLICATE
        m = self.manifest
        verify_chunk(m, index, data)
        offset = m.offset(index)
        pwrite_all(self._fd, data, offset)
        start_writeback(self._fd, offset, len(data))
        self.bitmap.add(index)
        now = time.monotonic()
        if self._unsynced == 0:
            self._dirty_since = now
        self._unsynced += 1
        if (
            not self.bitmap.complete  # finish() makes a complete blob durable without a last bitmap write
            and (self._unsynced >= self.sync_every or now - self._dirty_since >= self.sync_interval_s)
        ):
            self.flush()
        return Accepted.NEW

    def finish(self, dest: Path) -> Path:
        """Move the complete blob to `dest` (same filesystem), durably. Returns `dest`.

        No whole-blob pass: every chunk matched the signed chunk list, which is signed together with the
        blob's sha256, so the bytes are the blob the hub signed. The data is fsynced before the rename, so
        `dest` never names a blob that is not all on disk.
        """
        if not self.complete:
            raise ChunkOutOfRange(f"blob incomplete: {self.manifest.count - self.have_count} chunks missing")
        if self._fd < 0:
            self._fd = os.open(self.part_path, os.O_RDWR)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._unsynced = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, dest)
        fsync_dir(dest.parent)
        self._close_bitmap()
        self.bitmap_path.unlink(missing_ok=True)
        return dest

    def reset(self) -> None:
        """Forget every verified chunk (the partial file is kept and overwritten)."""
        self.bitmap.clear()
        self._close_bitmap()
        self.bitmap_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Persist progress and release the file (the transfer can resume later)."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1
        self._close_bitmap()

    def discard(self) -> None:
        """Drop the transfer and its files (a newer desired state made it stale)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._close_bitmap()
        self.part_path.unlink(missing_ok=True)
        self.bitmap_path.unlink(missing_ok=True)

    def __enter__(self) -> ChunkReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_frame(manifest: BlobManifest, frame: ChunkFrame) -> None:
    """Check a decoded frame names `manifest`'s blob and an index inside it (cheap; no hashing).

    Raises:
        ChunkForeignBlob: the frame belongs to another blob.
        ChunkOutOfRange: the index or the chunk count disagrees with the manifest.
    """
    if frame.sha256 != manifest.sha256:
        raise ChunkForeignBlob(f"chunk of blob {frame.sha256[:12]} sent to the receiver of {manifest.sha256[:12]}")
    if frame.count != manifest.count or not 0 <= frame.index < manifest.count:
        raise ChunkOutOfRange(f"chunk {frame.index} of {frame.count} is outside 0..{manifest.count - 1}")


def verify_chunk(manifest: BlobManifest, index: int, data: bytes | memoryview) -> None:
    """Check chunk `index`'s bytes against its length and its signed digest: the one hash of each byte.

    Raises:
        ChunkDigestMismatch: wrong length or digest.
    """
    expected = manifest.chunk_length(index)
    if len(data) != expected:
        raise ChunkDigestMismatch(f"chunk {index} has {len(data)} bytes, expected {expected}")
    if hashlib.sha256(data).digest() != manifest.chunk_digest(index):
        raise ChunkDigestMismatch(f"chunk {index} does not match its signed digest")

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

import contextlib
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from fleet.errors import (
    BlobDigestMismatch,
    ChunkDecodeError,
    ChunkDigestMismatch,
    ChunkForeignBlob,
    ChunkOutOfRange,
    ReceiverStateError,
)
from fleet.messages import BlobManifest, Range, to_ranges

DEFAULT_CHUNK_SIZE = 256 * 1024
MAGIC = b"EFC1"
FRAME_VERSION = 1
_HEADER = struct.Struct(">4sB3x32sIII")
HEADER_SIZE = _HEADER.size
_BITMAP_MAGIC = b"EFB1"
_READ_BLOCK = 1 << 20


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


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset`; a short write (disk full, file-size limit) continues or raises OSError."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"wrote nothing at offset {offset}")
        view, offset = view[n:], offset + n


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


def plan_file(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobManifest:
    """Read a file once (streaming) and return its manifest: whole sha256, size and per-chunk digests."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return BlobManifest(sha256=whole.hexdigest(), size=size, chunk_size=chunk_size, chunks=chunks)


def plan_bytes(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobManifest:
    """The manifest of an in-memory blob."""
    view = memoryview(data)
    chunks = [hashlib.sha256(view[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)]
    return BlobManifest(sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunk_size=chunk_size, chunks=chunks)


def read_chunk(f: BinaryIO, manifest: BlobManifest, index: int) -> bytes:
    """Read chunk `index` of the blob open as `f` (bounded memory: one chunk)."""
    if not 0 <= index < manifest.count:
        raise ChunkOutOfRange(f"chunk {index} is outside 0..{manifest.count - 1}")
    f.seek(index * manifest.chunk_size)
    return f.read(manifest.chunk_length(index))


def iter_frames(path: Path, manifest: BlobManifest, indexes: list[int] | None = None) -> Iterator[bytes]:
    """Yield encoded frames of the wanted chunks (all by default), reading one chunk at a time."""
    with path.open("rb") as f:
        for i in range(manifest.count) if indexes is None else indexes:
            yield encode_frame(manifest.sha256, i, manifest.count, read_chunk(f, manifest, i))


def manifest_digest(manifest: BlobManifest) -> bytes:
    """A digest naming the whole manifest (blob digest, size, chunking and chunk list)."""
    return hashlib.sha256(manifest.model_dump_json().encode()).digest()


class Accepted(Enum):
    """What the receiver did with a chunk."""

    NEW = "new"
    DUPLICATE = "duplicate"


class ChunkReceiver:
    """Reassembles one blob from chunks arriving in any order, with duplicates and gaps, across restarts.

    Args:
        manifest: the signed manifest; every chunk is checked against its digest list.
        workdir: where the partial file and bitmap live (same filesystem as the final destination).
        sync_every: persist data and bitmap after this many new chunks at the latest.
        sync_interval_s: ... or once this many seconds passed since the last persist. A crash loses at most
            the chunks of that span; they are simply wanted again. fsync is the dominant cost when many
            receivers share a disk, so the default persists about once a second, not per chunk.

    The whole-blob sha256 is computed while chunks arrive in order (the usual case on one broker topic) and
    finished from the partial file for whatever arrived out of order or before a restart, so a blob is
    hashed once, not read back whole.
    """

    def __init__(
        self, manifest: BlobManifest, workdir: Path, *, sync_every: int = 1024, sync_interval_s: float = 1.0
    ) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.sync_every = max(1, sync_every)
        self.sync_interval_s = sync_interval_s
        self._last_sync = time.monotonic()
        self._running = hashlib.sha256()
        self._running_upto = 0
        self.part_path = workdir / f"{manifest.sha256}.part"
        self.bitmap_path = workdir / f"{manifest.sha256}.bitmap"
        self.discarded: str | None = None
        self._tag = manifest_digest(manifest)
        self._bits = bytearray((manifest.count + 7) // 8)
        self._have = 0
        self._unsynced = 0
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._load_state()
        except ReceiverStateError as e:
            self.discarded = str(e)
            self._bits = bytearray(len(self._bits))
            self._have = 0
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
        if len(raw) != 4 + 32 + len(self._bits) or raw[:4] != _BITMAP_MAGIC:
            problem = "unreadable resume bitmap"
        elif raw[4:36] != self._tag:
            problem = "resume bitmap belongs to another manifest"
        elif not self.part_path.exists() or self.part_path.stat().st_size > self.manifest.size:
            problem = "partial file missing or larger than the blob"
        if problem:
            self.bitmap_path.unlink(missing_ok=True)
            self.part_path.unlink(missing_ok=True)
            raise ReceiverStateError(f"{problem}; starting {self.manifest.sha256[:12]} over")
        self._bits[:] = raw[36:]
        self._have = sum(bin(b).count("1") for b in self._bits)

    def flush(self) -> None:
        """Make every accepted chunk durable, then record it in the bitmap."""
        if self._unsynced == 0:
            return
        os.fsync(self._fd)
        tmp = self.bitmap_path.with_suffix(".bitmap.tmp")
        with tmp.open("wb") as f:
            f.write(_BITMAP_MAGIC + self._tag + bytes(self._bits))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.bitmap_path)
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def has(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    @property
    def have_count(self) -> int:
        return self._have

    @property
    def bytes_done(self) -> int:
        """Bytes of verified chunks."""
        m = self.manifest
        if m.count == 0:
            return 0
        done = self._have * m.chunk_size
        if self.has(m.count - 1):
            done -= m.chunk_size - m.chunk_length(m.count - 1)
        return done

    @property
    def complete(self) -> bool:
        return self._have == self.manifest.count

    def missing(self) -> list[int]:
        """Indexes not yet verified, ascending."""
        return [i for i in range(self.manifest.count) if not self.has(i)]

    def missing_ranges(self) -> list[Range]:
        return to_ranges(self.missing())

    # -- chunks -----------------------------------------------------------------------------------
    def accept(self, frame: ChunkFrame | bytes) -> Accepted:
        """Verify and write one chunk; raise a ChunkError subclass if refused (the index stays wanted)."""
        if not isinstance(frame, ChunkFrame):
            frame = decode_frame(frame, max_chunk=self.manifest.chunk_size)
        m = self.manifest
        if frame.sha256 != m.sha256:
            raise ChunkForeignBlob(f"chunk of blob {frame.sha256[:12]} sent to the receiver of {m.sha256[:12]}")
        if frame.count != m.count or not 0 <= frame.index < m.count:
            raise ChunkOutOfRange(f"chunk {frame.index} of {frame.count} is outside 0..{m.count - 1}")
        if self.has(frame.index):
            return Accepted.DUPLICATE
        expected = m.chunk_length(frame.index)
        if len(frame.data) != expected:
            raise ChunkDigestMismatch(f"chunk {frame.index} has {len(frame.data)} bytes, expected {expected}")
        if hashlib.sha256(frame.data).hexdigest() != m.chunks[frame.index]:
            raise ChunkDigestMismatch(f"chunk {frame.index} does not match its signed digest")
        _pwrite_all(self._fd, frame.data, frame.index * m.chunk_size)  # OSError (disk full): chunk not taken
        if frame.index == self._running_upto:
            self._running.update(frame.data)
            self._running_upto += 1
        self._bits[frame.index >> 3] |= 1 << (frame.index & 7)
        self._have += 1
        self._unsynced += 1
        if (
            self._unsynced >= self.sync_every
            or self.complete
            or time.monotonic() - self._last_sync >= self.sync_interval_s
        ):
            self.flush()
        return Accepted.NEW

    def finish(self, dest: Path) -> Path:
        """Verify the whole sha256 and move the blob to `dest` (same filesystem). Returns `dest`.

        On a digest mismatch every bit is cleared, so the whole blob is wanted again.
        """
        if not self.complete:
            raise ChunkOutOfRange(f"blob incomplete: {self.manifest.count - self._have} chunks missing")
        self.flush()
        whole = self._running
        with open(self.part_path, "rb") as f:
            f.seek(self._running_upto * self.manifest.chunk_size)
            while block := f.read(_READ_BLOCK):
                whole.update(block)
        if whole.hexdigest() != self.manifest.sha256:
            self.reset()
            raise BlobDigestMismatch(
                f"reassembled blob hashes to {whole.hexdigest()[:12]}, not {self.manifest.sha256[:12]}"
            )
        os.close(self._fd)
        self._fd = -1
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, dest)
        _fsync_dir(dest.parent)
        self.bitmap_path.unlink(missing_ok=True)
        return dest

    def reset(self) -> None:
        """Forget every verified chunk (the partial file is kept and overwritten)."""
        self._bits = bytearray(len(self._bits))
        self._have = 0
        self._running = hashlib.sha256()
        self._running_upto = 0
        self.bitmap_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Persist progress and release the file (the transfer can resume later)."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Drop the transfer and its files (a newer desired state made it stale)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part_path.unlink(missing_ok=True)
        self.bitmap_path.unlink(missing_ok=True)

    def __enter__(self) -> ChunkReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

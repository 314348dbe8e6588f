"""A content-addressed blob cache shared by every simulated agent in the process.

Each agent receives and verifies every chunk itself (frame header, index, length and the chunk's digest
from the signed manifest), but the bytes are written to disk once: the first agent to see a chunk hands it
to the one `fleet.chunks.ChunkReceiver` of that blob, which verifies, writes and later checks the whole
sha256; later agents verify their chunk against the manifest and keep only a bitmap. N agents therefore
cost one copy on disk, not N, while the hub still has to deliver every chunk to every agent.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fleet.chunks import Accepted, ChunkReceiver, decode_frame
from fleet.errors import BlobDigestMismatch, ChunkDigestMismatch, ChunkForeignBlob, ChunkOutOfRange
from fleet.messages import BlobManifest, Range, to_ranges


@dataclass
class _Entry:
    manifest: BlobManifest
    lock: threading.Lock = field(default_factory=threading.Lock)
    receiver: ChunkReceiver | None = None
    generation: int = 0  # bumped when a whole-blob check fails and everything starts over


class BlobCache:
    """Blobs by sha256 under `root/blobs`, partial transfers under `root/work`. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.work = root / "work"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.chunks_written = 0
        self.chunks_verified = 0

    def path(self, sha256: str) -> Path:
        """Where the complete blob `sha256` lives."""
        return self.blobs / sha256

    def has(self, sha256: str) -> bool:
        """Whether the complete, verified blob is on disk."""
        return self.path(sha256).exists()

    def _entry(self, manifest: BlobManifest) -> _Entry:
        with self._lock:
            entry = self._entries.get(manifest.sha256)
            if entry is None or entry.manifest != manifest:
                entry = _Entry(manifest)
                self._entries[manifest.sha256] = entry
            return entry

    def download(self, manifest: BlobManifest) -> Download:
        """Start (or resume nothing of) one agent's download of `manifest`'s blob."""
        return Download(self, self._entry(manifest))

    def close(self) -> None:
        """Persist every partial transfer and release its file."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            with entry.lock:
                if entry.receiver is not None:
                    entry.receiver.close()
                    entry.receiver = None


class Download:
    """One agent's transfer of one blob: its own bitmap, every chunk verified, bytes shared."""

    def __init__(self, cache: BlobCache, entry: _Entry) -> None:
        self._cache = cache
        self._entry = entry
        self.manifest = entry.manifest
        self._bits = bytearray((self.manifest.count + 7) // 8)
        self._have = 0
        self._generation = entry.generation
        self.last_index = -1

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    def has(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    @property
    def have_count(self) -> int:
        return self._have

    @property
    def complete(self) -> bool:
        return self._have == self.manifest.count

    @property
    def bytes_done(self) -> int:
        m = self.manifest
        done = self._have * m.chunk_size
        if m.count and self.has(m.count - 1):
            done -= m.chunk_size - m.chunk_length(m.count - 1)
        return done

    def missing_ranges(self) -> list[Range]:
        """The chunk indexes still missing, as the half-open ranges of a Want."""
        return to_ranges([i for i in range(self.manifest.count) if not self.has(i)])

    def reset(self) -> None:
        """Forget every chunk (the whole blob is wanted again)."""
        self._bits = bytearray(len(self._bits))
        self._have = 0

    def accept(self, payload: bytes | memoryview) -> Accepted:
        """Verify one chunk frame and record it. Raises a fleet ChunkError subclass when it is refused."""
        m = self.manifest
        self.last_index = -1
        frame = decode_frame(payload, max_chunk=m.chunk_size)
        if frame.sha256 != m.sha256:
            raise ChunkForeignBlob(f"chunk of blob {frame.sha256[:12]} sent to the download of {m.sha256[:12]}")
        if frame.count != m.count or not 0 <= frame.index < m.count:
            raise ChunkOutOfRange(f"chunk {frame.index} of {frame.count} is outside 0..{m.count - 1}")
        self.last_index = frame.index
        if self._generation != self._entry.generation:
            self.reset()
            self._generation = self._entry.generation
        if self.has(frame.index):
            return Accepted.DUPLICATE
        entry = self._entry
        written = False
        if not self._cache.has(m.sha256):
            with entry.lock:
                if entry.receiver is None and not self._cache.has(m.sha256):
                    entry.receiver = ChunkReceiver(m, self._cache.work)
                receiver = entry.receiver
                if receiver is not None and not receiver.has(frame.index):
                    receiver.accept(frame)  # verifies length and digest, then writes
                    written = True
                    self._cache.chunks_written += 1
        if not written:
            if len(frame.data) != m.chunk_length(frame.index):
                raise ChunkDigestMismatch(f"chunk {frame.index} has {len(frame.data)} bytes")
            if hashlib.sha256(frame.data).hexdigest() != m.chunks[frame.index]:
                raise ChunkDigestMismatch(f"chunk {frame.index} does not match its signed digest")
        self._cache.chunks_verified += 1
        self._bits[frame.index >> 3] |= 1 << (frame.index & 7)
        self._have += 1
        return Accepted.NEW

    def finish(self) -> Path:
        """Once complete: the verified blob in the cache (its whole sha256 is checked once, by the first).

        Raises:
            BlobDigestMismatch: the chunks do not make up the blob; this download starts over.
        """
        m = self.manifest
        if not self.complete:
            raise ChunkOutOfRange(f"blob incomplete: {m.count - self._have} chunks missing")
        path = self._cache.path(m.sha256)
        entry = self._entry
        with entry.lock:
            if path.exists():
                return path
            receiver = entry.receiver
            if receiver is None or not receiver.complete:
                self.reset()
                raise BlobDigestMismatch(f"blob {m.sha256[:12]} was refused by its whole-blob check; refetching")
            try:
                receiver.finish(path)
            except BlobDigestMismatch:
                receiver.discard()
                entry.receiver = None
                entry.generation += 1
                self.reset()
                self._generation = entry.generation
                raise
            entry.receiver = None
            return path

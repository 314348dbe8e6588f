"""A content-addressed blob cache shared by every simulated agent in the process.

Each agent receives and verifies every chunk itself (frame header, index, length and the chunk's digest
from the signed manifest), but the bytes are written to disk once: the first agent to see a chunk hands it
to the one `fleet.chunks.ChunkReceiver` of that blob, which verifies and writes it; later agents verify their
chunk against the manifest and keep only a bitmap (`fleet.bitmap.ChunkBitmap`). N agents therefore
cost one copy on disk, not N, while the hub still has to deliver every chunk to every agent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fleet.bitmap import ChunkBitmap
from fleet.chunks import Accepted, ChunkReceiver, check_frame, decode_frame, verify_chunk
from fleet.errors import ChunkOutOfRange
from fleet.messages import BlobManifest, Range


@dataclass
class _Entry:
    manifest: BlobManifest
    lock: threading.Lock = field(default_factory=threading.Lock)
    receiver: ChunkReceiver | None = None


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
        self.bitmap = ChunkBitmap(self.manifest.count)
        self.last_index = -1

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    def has(self, index: int) -> bool:
        return self.bitmap.has(index)

    @property
    def have_count(self) -> int:
        return self.bitmap.have

    @property
    def complete(self) -> bool:
        return self.bitmap.complete

    @property
    def bytes_done(self) -> int:
        m = self.manifest
        return sum(m.chunk_length(i) for i in self.bitmap.held())

    def missing_ranges(self) -> list[Range]:
        """The chunk indexes still missing, as the half-open ranges of a Want."""
        return self.bitmap.missing_ranges()

    def accept(self, payload: bytes | memoryview) -> Accepted:
        """Verify one chunk frame and record it. Raises a fleet ChunkError subclass when it is refused."""
        m = self.manifest
        self.last_index = -1
        frame = decode_frame(payload, max_chunk=m.chunk_size)
        check_frame(m, frame)
        self.last_index = frame.index
        if self.bitmap.has(frame.index):
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
            verify_chunk(m, frame.index, frame.data)
        self._cache.chunks_verified += 1
        self.bitmap.add(frame.index)
        return Accepted.NEW

    def finish(self) -> Path:
        """Once complete: the verified blob in the cache (moved there by the first agent to finish)."""
        m = self.manifest
        if not self.complete:
            raise ChunkOutOfRange(f"blob incomplete: {m.count - self.have_count} chunks missing")
        path = self._cache.path(m.sha256)
        entry = self._entry
        with entry.lock:
            if not path.exists():
                receiver = entry.receiver
                if receiver is None or not receiver.complete:  # the cache was closed under this agent
                    self.bitmap.clear()
                    raise ChunkOutOfRange(f"blob {m.sha256[:12]}: its shared transfer was closed; fetching again")
                receiver.finish(path)
                entry.receiver = None
            return path

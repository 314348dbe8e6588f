"""Chunk serving: coalesce wants per blob, publish each wanted chunk once per round, rate-limited.

Agents publish `Want` messages naming the chunk ranges they miss. Wants arriving during a round are merged
per blob into the next round, so a chunk wanted by fifty agents is published once and reaches all of them
through the broker's fan-out. Chunks are read from disk one at a time and the publisher keeps a bounded
number unacknowledged, so memory stays bounded whatever the blob size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.chunks import encode_frame, read_chunk
from fleet.messages import BlobManifest, Want
from fleet.topics import Topics
from hub.settings import TransferSettings
from hub.store import Store

log = logging.getLogger(__name__)
PublishChunk = Callable[[str, bytes], None]


@dataclass
class TransferStats:
    """Counters of the chunk server."""

    wants: int = 0
    unknown_blob_wants: int = 0
    rounds: int = 0
    chunks_published: int = 0
    bytes_published: int = 0
    publish_errors: int = 0


class ChunkServer:
    """Serves blob chunks on their topics. `want()` is called from the MQTT thread; rounds run on their own."""

    def __init__(
        self,
        store: Store,
        blob_path: Callable[[str], Path],
        topics: Topics,
        publish: PublishChunk,
        settings: TransferSettings,
    ) -> None:
        self.store = store
        self.blob_path = blob_path
        self.topics = topics
        self._publish = publish
        self.settings = settings
        self.stats = TransferStats()
        self._pending: dict[str, set[int]] = {}
        self._manifests: dict[str, BlobManifest] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-chunk-server", daemon=True)
        self._sent_bytes = 0
        self._rate_start = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def manifest(self, sha256: str) -> BlobManifest | None:
        """The manifest of a stored blob (cached), or None when the hub has no such blob."""
        m = self._manifests.get(sha256)
        if m is None:
            raw = self.store.blob_manifest(sha256)
            if raw is None:
                return None
            m = self._manifests[sha256] = BlobManifest.model_validate(raw)
        return m

    def want(self, msg: Want) -> bool:
        """Queue the chunks `msg` asks for. False (and counted) for a blob the hub does not have."""
        m = self.manifest(msg.sha256)
        if m is None:
            self.stats.unknown_blob_wants += 1
            return False
        indexes = msg.indexes(m.count)
        with self._lock:
            self.stats.wants += 1
            self._pending.setdefault(msg.sha256, set()).update(indexes)
        self._wake.set()
        return True

    @property
    def pending_chunks(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._pending.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(1.0):
                continue
            if self._stop.is_set():
                return
            # a want woke us: the round starts after round_interval_s, so wants arriving meanwhile join it
            self._stop.wait(self.settings.round_interval_s)
            self._wake.clear()
            with self._lock:
                work, self._pending = self._pending, {}
            if not work:
                continue
            self.stats.rounds += 1
            for sha, indexes in work.items():
                try:
                    self._serve(sha, sorted(indexes))
                except Exception:
                    self.stats.publish_errors += 1
                    log.exception("transfer: serving blob %s failed", sha[:12])

    def _serve(self, sha: str, indexes: list[int]) -> None:
        m = self.manifest(sha)
        if m is None:
            return
        topic = self.topics.chunk(sha)
        with self.blob_path(sha).open("rb") as f:
            for i in indexes:
                if self._stop.is_set():
                    return
                frame = encode_frame(sha, i, m.count, read_chunk(f, m, i))
                self._throttle(len(frame))
                self._publish(topic, frame)
                self.stats.chunks_published += 1
                self.stats.bytes_published += len(frame)

    def _throttle(self, size: int) -> None:
        rate = self.settings.rate_limit_bytes_per_s
        if rate <= 0:
            return
        now = time.monotonic()
        if now - self._rate_start > 1.0 and self._sent_bytes / rate < now - self._rate_start:
            self._rate_start, self._sent_bytes = now, 0  # idle: do not bank unused budget
        self._sent_bytes += size
        ahead = self._sent_bytes / rate - (time.monotonic() - self._rate_start)
        if ahead > 0:
            self._stop.wait(ahead)

"""The simulated devices' model stores: one shared blob directory, a per-device view of it for each agent.

Every simulated agent runs the agent's own `agent.download.Download` against its own `SimStore`, which
implements `agent.store.StorePort`. Each device keeps its own pointers, the set of blobs it holds and, per
transfer, its own chunk bitmap (`SharedReceiver`); every chunk it receives is verified against the signed
chunk list exactly as on a device. The bytes are written once: the first device to receive a chunk hands it
to the blob's one `fleet.chunks.ChunkReceiver` in `SharedBlobs` (verify, write, fsync, rename at the end);
later devices check their copy and keep only the bit. 2000 devices fetching a 16 MiB model cost one 16 MiB
file, not 32 GiB, while the hub still delivers every chunk to every device.

A later device's copy is compared byte for byte with the copy the first device verified against the signed
digest (kept in memory: one copy of each blob being fetched), instead of hashing it again: equal bytes match
the digest, and a copy that differs in any bit is verified (and refused) in full as on a device. The result
of every check is the device's; only the simulating machine's cost drops, 2000 simulated devices' SHA-256
passes squeezed into one process (a compare costs ~1/30 of a hash here), so a rollout measures the hub and
the broker rather than the simulator's hashing.

What a device's disk would add is not simulated: pointers and bitmaps live in memory (a simulated device
does not survive a restart of the simulator), and free space is that of the shared directory.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import StoreError
from agent.store import ChunkSource, ShadowPointer, Spare, StoredModel, collection_order
from fleet.bitmap import ChunkBitmap
from fleet.chunks import Accepted, ChunkProgress, ChunkReceiver, verify_chunk
from fleet.errors import ChunkOutOfRange
from fleet.ids import check_sha256
from fleet.messages import BlobManifest


@dataclass
class _Entry:
    manifest: BlobManifest
    done: bool  # the complete blob is in `blobs/`
    lock: threading.Lock = field(default_factory=threading.Lock)
    receiver: ChunkReceiver | None = None
    verified: dict[int, bytes] = field(default_factory=dict)  # chunk bytes that matched their signed digest


class SharedBlobs:
    """Blobs by sha256 under `root/blobs`, the one partial transfer of each under `root/work`. Thread-safe.

    Args:
        root: the directory (created).
        sync_every, sync_interval_s: persistence cadence of the shared transfers (the agent's settings).
    """

    def __init__(self, root: Path, *, sync_every: int = 1024, sync_interval_s: float = 1.0) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.work = root / "work"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.sync_every = sync_every
        self.sync_interval_s = sync_interval_s
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.chunks_written = 0
        self.chunks_verified = 0  # chunks devices accepted (each checked against its signed digest)
        self.chunks_hashed = 0  # ... of which hashed again (not the first copy, and not equal to a verified one)

    def path(self, sha256: str) -> Path:
        """Where the complete blob `sha256` lives."""
        return self.blobs / check_sha256(sha256)

    def has(self, sha256: str) -> bool:
        """Whether the complete, verified blob is on disk."""
        return self.path(sha256).exists()

    def entry(self, manifest: BlobManifest) -> _Entry:
        with self._lock:
            entry = self._entries.get(manifest.sha256)
            if entry is None or entry.manifest != manifest:
                entry = _Entry(manifest, done=self.has(manifest.sha256))
                self._entries[manifest.sha256] = entry
            return entry

    def close(self) -> None:
        """Persist every partial transfer and release its file."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            with entry.lock:
                if entry.receiver is not None:
                    entry.receiver.close()
                    entry.receiver = None


class SharedReceiver(ChunkProgress):
    """One device's transfer of one blob (`agent.store.ChunkSink`): its own bitmap, every chunk verified,
    the bytes written once for all devices."""

    def __init__(self, shared: SharedBlobs, manifest: BlobManifest) -> None:
        self._shared = shared
        self._entry = shared.entry(manifest)
        self.manifest = manifest
        self.bitmap = ChunkBitmap(manifest.count)

    def put(self, index: int, data: bytes | memoryview) -> Accepted:
        """Verify chunk `index` against the signed chunk list; the first device to hold it writes it.

        Bytes equal to a copy already verified match the digest without hashing them again; any other copy is
        hashed (ChunkDigestMismatch if it differs, nothing marked), as on a device.
        """
        if self.bitmap.has(index):
            return Accepted.DUPLICATE
        shared, entry, m = self._shared, self._entry, self.manifest
        known = entry.verified.get(index)
        if known is None or len(known) != len(data) or not known.startswith(data):  # equal lengths: a memcmp
            written = False
            if not entry.done:
                with entry.lock:
                    if entry.receiver is None and not entry.done:
                        entry.receiver = ChunkReceiver(m, shared.work, sync_every=shared.sync_every,
                                                       sync_interval_s=shared.sync_interval_s)  # fmt: skip
                    receiver = entry.receiver
                    if receiver is not None and not receiver.has(index):
                        receiver.put(index, data)  # verifies length and digest, then writes
                        written = True
                        shared.chunks_written += 1
            if not written:
                verify_chunk(m, index, data)
                shared.chunks_hashed += 1
            entry.verified[index] = bytes(data)
        shared.chunks_verified += 1
        self.bitmap.add(index)
        return Accepted.NEW

    def flush(self) -> None:
        """Nothing of the device's to persist (the shared transfer persists on its own cadence)."""

    def finish(self, dest: Path) -> Path:
        """Once complete: the shared blob at `dest` (moved there by the first device to finish)."""
        m = self.manifest
        if not self.complete:
            raise ChunkOutOfRange(f"blob incomplete: {m.count - self.have_count} chunks missing")
        entry = self._entry
        with entry.lock:
            if not dest.exists():
                receiver = entry.receiver
                if receiver is None or not receiver.complete:  # the simulator closed the transfer under us
                    self.bitmap.clear()
                    raise OSError(f"blob {m.sha256[:12]}: its shared transfer was closed")
                receiver.finish(dest)
                entry.receiver = None
                entry.done = True
        return dest

    def close(self) -> None:
        """Nothing of the device's to release."""

    def discard(self) -> None:
        """Forget this device's chunks (other devices' transfer of the same blob goes on)."""
        self.bitmap.clear()


class SimStore:
    """One simulated device's model store (`agent.store.StorePort`) over the shared blob directory.

    Args:
        shared: the process-wide blobs.
        device_id: whose store this is (named in errors).
    """

    def __init__(self, shared: SharedBlobs, device_id: str) -> None:
        self.shared = shared
        self.root = shared.root
        self.device_id = device_id
        self.held: dict[str, BlobManifest] = {}  # blobs this device fetched, by sha256
        self._used: dict[str, int] = {}  # of each held blob, when it was last stored, activated or shadowed (a count)
        self._uses = itertools.count()
        self._active: dict[str, StoredModel] = {}  # by model name
        self._previous: dict[str, StoredModel] = {}
        self._shadow: dict[str, ShadowPointer] = {}
        self._chunks: dict[str, ChunkSource] | None = None

    # -- pointers, per model (the same rules as agent.store.ModelStore) --------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._active) | set(self._previous) | set(self._shadow))

    def active(self, name: str) -> StoredModel | None:
        return self._active.get(name)

    def previous(self, name: str) -> StoredModel | None:
        return self._previous.get(name)

    def promote(self, record: StoredModel) -> StoredModel | None:
        name = record.model.name
        if not self.has_blob(record.sha256):
            raise StoreError(f"cannot activate {name} {record.model.version}: blob missing")
        current = self._active.get(name)
        previous = self._previous.get(name) if current is None or current.sha256 == record.sha256 else current
        if previous is not None and previous.sha256 == record.sha256:
            previous = None  # rolling back onto previous: nothing older is known-good any more
        if previous is None:
            self._previous.pop(name, None)
        else:
            self._previous[name] = previous
        self._active[name] = record
        self._mark_used(record.sha256)
        return previous

    def clear_active(self, name: str) -> None:
        current = self._active.pop(name, None)
        if current is not None:
            self._previous[name] = current

    def shadow(self, name: str) -> ShadowPointer | None:
        return self._shadow.get(name)

    def set_shadow(self, pointer: ShadowPointer) -> None:
        record = pointer.candidate
        if not self.has_blob(record.sha256):
            raise StoreError(f"cannot shadow {record.model.name} {record.model.version}: blob missing")
        self._shadow[record.model.name] = pointer
        self._mark_used(record.sha256)

    def clear_shadow(self, name: str) -> None:
        self._shadow.pop(name, None)

    def forget(self, name: str) -> None:
        self._active.pop(name, None)
        self._previous.pop(name, None)
        self._shadow.pop(name, None)

    # -- blobs ----------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.shared.path(sha256)

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        manifest = self.held.get(sha256)
        return manifest is not None and (size is None or manifest.size == size) and self.shared.has(sha256)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.shared.root).free

    def collect(
        self,
        keep_bytes: int,
        *,
        keep: set[str] | frozenset[str] = frozenset(),
        room: int = 0,
        reuse: BlobManifest | None = None,
    ) -> list[str]:
        """Forget unreferenced blobs while they take more than `keep_bytes` or `room` asks for more free space than
        the disk has (counting each forgotten blob as freed, though the shared file stays); in the agent's order
        (`agent.store.collection_order`: fewest chunks shared with `reuse`, then least recently used, first)."""
        protected = {r.sha256 for r in (*self._active.values(), *self._previous.values())} | set(keep)
        protected |= {p.candidate.sha256 for p in self._shadow.values()}
        spare = [Spare(sha, m.size, self._used[sha], m.chunks) for sha, m in self.held.items() if sha not in protected]
        total = sum(b.size for b in spare)
        short = room - self.free_bytes() if room > 0 else 0
        removed = []
        for b in collection_order(spare, reuse):
            if total <= keep_bytes and short <= 0:
                break
            short -= b.size
            del self.held[b.sha256], self._used[b.sha256]
            total -= b.size
            removed.append(b.sha256)
        if removed:
            self._chunks = None
        return removed

    def record_manifest(self, manifest: BlobManifest) -> None:
        """The blob entered this device's store."""
        self.held[manifest.sha256] = manifest
        self._mark_used(manifest.sha256)
        self._chunks = None

    def _mark_used(self, sha256: str) -> None:
        """As the agent's store touches a blob's mtime: `collect` deletes the least recently used first."""
        self._used[sha256] = next(self._uses)

    def find_chunk(self, sha256: str) -> ChunkSource | None:
        if self._chunks is None:
            self._chunks = {}
            for manifest in self.held.values():
                path = self.blob_path(manifest.sha256)
                for i, digest in enumerate(manifest.chunks):
                    self._chunks.setdefault(digest, ChunkSource(path, manifest.offset(i), manifest.chunk_length(i)))
        return self._chunks.get(sha256)

    def discard_partials(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        return []  # a device's partial transfer is its in-memory bitmap, dropped with its Download

    def receiver(self, manifest: BlobManifest, *, sync_every: int, sync_interval_s: float) -> SharedReceiver:
        return SharedReceiver(self.shared, manifest)

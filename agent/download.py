"""One blob transfer over the want/chunk protocol: free-space check, verified chunks, resume, re-want.

The transfer keeps its state in the store's `partial/` directory through `fleet.chunks.ChunkReceiver`, so
it resumes after a broker restart (the agent wants what is still missing when the link is back) and after
an agent restart (chunks whose bits were persisted are not wanted again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from agent.errors import AgentError, DiskError, DownloadError, InsufficientDisk, disk_error
from agent.settings import DownloadSettings
from agent.store import StorePort
from fleet.chunks import Accepted, decode_frame
from fleet.errors import ChunkDigestMismatch, ChunkError, MessageError
from fleet.messages import BlobManifest, DownloadProgress, Range, Want
from infra.sizes import mib

log = logging.getLogger(__name__)


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except OSError as e:
        log.warning("cannot reuse chunks of %s: %s", path.name[:12], e)
        return None


SendWant = Callable[[Want], bool]


def _failed(e: OSError, what: str) -> AgentError:
    """An OSError of a transfer, typed: the disk refusing writes (`agent.errors.disk_error`), else DownloadError."""
    return disk_error(e, what) or DownloadError(f"{what}: {e}")


class Download:
    """Fetches one blob into the store.

    Args:
        store: the model store (its `receiver` holds the work files, `blobs/` receives the blob).
        manifest: the signed manifest of the blob.
        device_id: this device (named in wants).
        settings: re-want delay and persistence cadence.
        send_want: publishes a want; returns False when the link is down (the want is sent on reconnect).
        min_free_bytes: free space to leave on the store's filesystem after the blob.

    Raises:
        InsufficientDisk: not enough free space for the rest of the blob.
    """

    def __init__(
        self,
        store: StorePort,
        manifest: BlobManifest,
        device_id: str,
        settings: DownloadSettings,
        send_want: SendWant,
        *,
        min_free_bytes: int = 0,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.device_id = device_id
        self.settings = settings
        self._send_want = send_want
        self.min_free_bytes = min_free_bytes
        self.receiver = store.receiver(
            manifest, sync_every=settings.sync_every, sync_interval_s=settings.sync_interval_s
        )
        needed = manifest.size - self.receiver.bytes_done + min_free_bytes
        free = store.free_bytes()
        if free < needed:
            self.receiver.close()
            raise InsufficientDisk(
                f"no space left on device for blob {manifest.sha256[:12]}: needs {mib(needed)} more "
                f"(incl. {mib(min_free_bytes)} kept free), {mib(free)} free under {store.root}",
                needed=needed,
            )
        self.resumed_chunks = self.receiver.have_count
        self.reused_chunks, self.reused_bytes = self._reuse()
        self.refused = 0
        self.duplicates = 0
        self.wants_sent = 0
        self._last_chunk = time.monotonic()
        self._last_want = 0.0

    def _reuse(self) -> tuple[int, int]:
        """Take every missing chunk the store already holds (an earlier version's) from disk, verified.

        Returns the chunks and bytes taken. A local copy that does not match its digest is skipped (and
        fetched); a read error on one blob only stops reuse from it.

        Raises:
            OSError: writing into the partial file failed (disk full).
        """
        r, m = self.receiver, self.manifest
        taken = nbytes = 0
        files: dict[Path, BinaryIO | None] = {}
        try:
            for i in r.missing():
                source = self.store.find_chunk(m.chunks[i])
                if source is None or source.length != m.chunk_length(i):
                    continue
                if source.path not in files:
                    files[source.path] = _open(source.path)
                f = files[source.path]
                if f is None:
                    continue
                try:
                    f.seek(source.offset)
                    data = f.read(source.length)
                except OSError as e:
                    log.warning("cannot reuse chunks of %s: %s", source.path.name[:12], e)
                    files[source.path] = None
                    continue
                try:
                    r.put(i, data)  # an OSError writing (disk full) is the download's, not the source's
                except ChunkDigestMismatch as e:
                    log.warning("chunk %d of %s held in %s is corrupt, fetching it: %s", i, self.sha256[:12],
                                source.path.name[:12], e)  # fmt: skip
                    continue
                taken += 1
                nbytes += source.length
            if taken:
                r.flush()
                log.info("blob %s: %d of %d chunks (%d bytes) taken from the store", self.sha256[:12], taken,
                         m.count, nbytes)  # fmt: skip
        finally:
            for f in files.values():
                if f is not None:
                    f.close()
        return taken, nbytes

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def complete(self) -> bool:
        return self.receiver.complete

    def progress(self) -> DownloadProgress:
        """Chunks and bytes verified so far."""
        r = self.receiver
        return DownloadProgress(
            sha256=self.sha256,
            have_chunks=r.have_count,
            total_chunks=self.manifest.count,
            bytes_done=r.bytes_done,
            bytes_total=self.manifest.size,
        )

    def want(self, ranges: list[Range] | None = None) -> bool:
        """Send a want for `ranges` (default: everything still missing). Returns whether it was sent."""
        missing = ranges if ranges is not None else self.receiver.missing_ranges()
        if not missing:
            return True
        want = Want(device_id=self.device_id, sha256=self.sha256, missing=missing[: self.settings.max_want_ranges])
        self._last_want = time.monotonic()
        sent = self._send_want(want)
        self.wants_sent += int(sent)
        return sent

    def on_chunk(self, payload: bytes) -> bool:
        """Verify and write one chunk frame; returns True when this chunk was new.

        A refused chunk (truncated, foreign, not matching its signed digest) is counted and its index
        wanted again at once when the frame names one.
        """
        try:
            frame = decode_frame(payload, max_chunk=self.manifest.chunk_size)
        except MessageError as e:
            self.refused += 1
            log.warning("refused chunk frame for %s: %s", self.sha256[:12], e)
            return False
        try:
            result = self.receiver.accept(frame)
        except ChunkError as e:
            self.refused += 1
            log.warning("refused chunk %s of %s: %s", frame.index, self.sha256[:12], e)
            if frame.sha256 == self.sha256 and 0 <= frame.index < self.manifest.count:
                self.want([(frame.index, frame.index + 1)])
            return False
        except OSError as e:  # disk full (a file-size limit), read-only: the chunk is not taken, nothing is marked
            left = self.manifest.size - self.receiver.bytes_done
            what = f"chunk {frame.index} of blob {self.sha256[:12]} could not be written"
            then = (f" ({mib(left)} of the blob still to write, {mib(self.store.free_bytes())} free); the download "
                    "resumes from its last durable chunk once the disk takes writes again")  # fmt: skip
            needed = left + self.min_free_bytes  # as the free-space check counts it
            raise (disk_error(e, what, then, needed=needed) or DiskError(f"{what}: {e}{then}")) from e
        self._last_chunk = time.monotonic()
        if result is Accepted.DUPLICATE:
            self.duplicates += 1
            return False
        return True

    def tick(self) -> None:
        """Want the missing chunks again when nothing arrived for `rewant_after_s` (lost with the broker)."""
        now = time.monotonic()
        idle = now - max(self._last_chunk, self._last_want)
        if not self.complete and idle >= self.settings.rewant_after_s:
            self.want()

    def finish(self) -> None:
        """Move the complete blob into the store (every chunk matched the signed list: no whole-blob pass)."""
        self.receiver.finish(self.store.blob_path(self.sha256))
        self.store.record_manifest(self.manifest)

    def close(self) -> None:
        """Persist progress and release files (the transfer can resume later)."""
        self.receiver.close()

    def cancel(self) -> None:
        """Drop the transfer and its work files (a newer desired state made it stale)."""
        self.receiver.discard()


class Fetcher:
    """At most one `Download` at a time, with its chunk-topic subscription, for the reconciler.

    Args:
        store: the model store.
        device_id: this device (named in wants).
        settings: download settings.
        min_free_bytes: free space to leave after a blob.
        send_want, watch, unwatch: the transport (publish a want; subscribe/unsubscribe a blob's chunks).
    """

    def __init__(
        self,
        store: StorePort,
        device_id: str,
        settings: DownloadSettings,
        *,
        min_free_bytes: int,
        send_want: SendWant,
        watch: Callable[[str], None],
        unwatch: Callable[[str], None],
    ) -> None:
        self.store = store
        self.device_id = device_id
        self.settings = settings
        self.min_free_bytes = min_free_bytes
        self._send_want = send_want
        self._watch = watch
        self._unwatch = unwatch
        self.current: Download | None = None
        self.stray_chunks = 0

    def ensure(self, manifest: BlobManifest) -> bool:
        """Start or continue fetching `manifest`'s blob; True once it is in the store.

        Raises:
            AgentError: temporary (no disk space, disk errors: retry later) or permanent (the signed
                manifest is inconsistent); the transfer is dropped or kept as fits.
        """
        sha = manifest.sha256
        if self.current is not None and self.current.sha256 != sha:
            self.cancel()
        if self.current is None:
            self._watch(sha)
            try:
                self.current = Download(self.store, manifest, self.device_id, self.settings, self._send_want,
                                        min_free_bytes=self.min_free_bytes)  # fmt: skip
            except (AgentError, OSError) as e:
                self._unwatch(sha)
                if isinstance(e, AgentError):
                    raise
                raise _failed(e, f"cannot start {sha[:12]}") from e
            if not self.current.complete:
                self.current.want()
        if self.current.complete:
            self._finish()
            return True
        return False

    def on_chunk(self, sha256: str, payload: bytes) -> Literal["stray", "new", "old", "complete"]:
        """Handle one chunk frame; 'complete' when the blob just entered the store.

        Raises:
            AgentError: as for `ensure`.
        """
        dl = self.current
        if dl is None or dl.sha256 != sha256:
            self.stray_chunks += 1
            return "stray"
        try:
            new = dl.on_chunk(payload)
        except OSError as e:  # the disk failing: the chunk stays wanted
            raise _failed(e, f"writing {sha256[:12]}") from e
        if dl.complete:
            self._finish()
            return "complete"
        return "new" if new else "old"

    def _finish(self) -> None:
        dl = self.current
        assert dl is not None
        try:
            dl.finish()
        except AgentError:
            self.cancel()
            raise
        except OSError as e:
            raise _failed(e, f"storing {dl.sha256[:12]}") from e
        self._unwatch(dl.sha256)
        self.current = None

    def cancel(self) -> None:
        """Drop the transfer in progress and its files."""
        if self.current is not None:
            log.info("cancelling download of %s", self.current.sha256[:12])
            self._unwatch(self.current.sha256)
            self.current.cancel()
            self.current = None

    def keep_only(self, needed: set[str]) -> None:
        """Cancel the transfer in progress unless its blob is in `needed` (a newer desired state)."""
        if self.current is not None and self.current.sha256 not in needed:
            self.cancel()

    def want_missing(self) -> None:
        """Want everything still missing (the link came back)."""
        if self.current is not None:
            self.current.want()

    def tick(self) -> None:
        if self.current is not None:
            self.current.tick()

    def progress(self) -> DownloadProgress | None:
        return self.current.progress() if self.current is not None else None

    def close(self) -> None:
        """Persist progress (the transfer resumes on the next start)."""
        if self.current is not None:
            self.current.close()

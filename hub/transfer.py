"""Chunk serving: one paced pass per blob that late joiners join, then only what someone still lacks.

Agents publish `Want` messages naming the chunk ranges they miss. Every chunk published on a blob's topic
reaches every agent subscribed to it, so the server keeps, per blob, a *carousel*: the set of chunks someone
still needs and a cursor moving through the blob. A want adds its chunks to the set; chunks still ahead of
the cursor are already coming (a late joiner gets the rest of the current pass), and the ones behind it are
published once more after the cursor wraps, for everyone who missed them at once. Nothing is published
twice in one pass, and a chunk nobody lacks is never published again.

The first pass of a blob starts `round_interval_s` after its first want, unless another device wants it
meanwhile or devices told about it are still to come (below): then the wants are gathered until no new device
wanted for `join_gap_s`, at most `join_window_s` after the first. A rollout tells many devices at once,
their wants arrive over seconds (2000 simulated agents on 2 cores: over 10 s, in bursts up to 1.5 s apart),
and a chunk published before a device joined goes out again for it, to every device then subscribed
(measured: a third of the blob published twice).
The store says whom deploys told about the blob: when a blob's first want comes, the server asks it which
devices' desired states name the blob and were issued within the last `join_window_s` (`Store.devices_told`),
leaving out those that wanted it lately, and expects them: once every one of them wanted it, the
pass starts at once instead of waiting out the gap (a device told but not wanting, offline or holding the
blob already, leaves the gap rule as it was). The store, not the deployer in this process, because with hub
replicas a deploy may be served by any of them while only the leader's chunk server serves; and a deployer
records its states before it publishes the first, so the first want, even one sent a millisecond after it,
finds all of them (the lookup is one indexed query per blob and wave, on the MQTT thread).

Publishing is paced by the downloaders' reported progress: a blob's next chunk goes out only while the
median downloader has fewer than `window` chunks published for it but not yet received. Otherwise the whole
pass would sit in the broker's queues within a second, every agent that subscribes a moment later would miss
all of it, and each of their wants would be another full pass to every subscriber (measured: 147 passes for
2000 agents). The window starts at `window_chunks` and doubles whenever the median downloader has received
everything published for it (the window, not the fleet, was the limit), so small fleets are not held back.
A blob without progress reports for `pace_timeout_s` gets its next chunk anyway. The pacing rule costs a
pass over the blob's downloaders, so a paced blob is looked at again every `PACE_POLL_S`, not at every
progress report (2000 downloaders report about 2000 times a second; re-evaluating on each took a sixth of
the hub's CPU in a 2000-agent rollout); while the pacing keeps holding, that interval doubles up to
`PACE_POLL_MAX_S` (a 2000-device fleet drains about one chunk a second, so polling every 20 ms looked 50
times per publish; the window keeps many seconds queued, so a publish a few hundred ms late starves nobody),
and idle downloaders are looked for once a second.

Chunks are read from disk one at a time and the publisher keeps a bounded number unacknowledged, so memory
stays bounded whatever the blob size. Each chunk read is checked against its signed digest before it goes out:
a copy on this host that went bad (a failing disk, a hand-edited file) would otherwise be published again at
every want and refused by every agent, a download that never ends with the hub none the wiser. A chunk that
does not match has the file set aside (`set_aside`: `Registry.set_aside`) and is read again, from the store's
checked copy where it keeps one; a blob that cannot be read is counted (`read_errors`), logged, and its pending
chunks are dropped until a device wants them again. The check costs one SHA-256 pass per byte published.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.chunks import encode_frame, read_chunk, verify_chunk
from fleet.errors import ChunkDigestMismatch
from fleet.messages import BlobManifest, DownloadProgress, Want
from fleet.topics import Topics
from hub.settings import TransferSettings
from hub.store import Store
from infra.logthrottle import log_sampled

log = logging.getLogger(__name__)
PublishChunk = Callable[[str, bytes], None]
PACE_POLL_S = 0.02  # a paced blob is looked at again after this long (progress reports do not wake the loop)
PACE_POLL_MAX_S = 0.32  # ... doubling while it stays paced, up to this
EXPIRE_EVERY_S = 1.0  # idle downloaders and finished blobs are looked for this often


@dataclass
class TransferStats:
    """Counters of the chunk server."""

    wants: int = 0
    unknown_blob_wants: int = 0
    rounds: int = 0  # passes started (a blob's first chunk, and each wrap of its cursor)
    chunks_published: int = 0
    chunks_republished: int = 0  # publishes of a chunk that was published before (late joiners, losses)
    bytes_published: int = 0
    publish_errors: int = 0
    corrupt_chunks: int = 0  # chunks read from this host's copy of a blob that did not match their signed digest
    read_errors: int = 0  # chunks not published because no good copy of their blob could be read
    paced_waits: int = 0  # times a blob's next chunk waited for downloaders to catch up
    pace_timeouts: int = 0  # ... and was published anyway because no progress came for pace_timeout_s
    progress_reports: int = 0


@dataclass(frozen=True)
class Step:
    """What one `ChunkServer.step()` did: the (blob, chunk) it published, or how long nothing is due."""

    published: tuple[str, int] | None
    wait_s: float


@dataclass
class _Downloader:
    """One device fetching one blob, as the server accounts for it."""

    needs: bytearray  # 1 for each chunk its wants named
    sent: bytearray  # 1 for each needed chunk published since it wanted it
    sent_count: int
    have_at_join: int
    have: int
    seen: float  # monotonic time of its last want or progress report
    reported: bool = False  # a progress report for this blob came on the device's own topic

    @property
    def outstanding(self) -> int:
        """Chunks published for it that it has not reported receiving (queued at the broker or unreported)."""
        return max(0, self.sent_count - (self.have - self.have_at_join))


@dataclass
class _Expected:
    """Devices told about a blob that have not wanted it yet, and those that wanted it while this counts."""

    devices: set[str]
    until: float  # monotonic time after which the expectation is forgotten (the gathering is over by then)
    wanted: set[str] = field(default_factory=set)  # a later lookup still finds their states: they are not awaited


@dataclass
class _Stream:
    """The carousel of one blob."""

    manifest: BlobManifest
    window: int
    start_at: float  # wants are coalesced until then before the first chunk goes out
    opened: float  # when its first want came (the gathering ends join_window_s later at the latest)
    todo: bytearray = field(init=False)
    todo_count: int = 0
    cursor: int = 0
    published: bytearray = field(init=False)  # chunks published at least once
    last_publish: float = 0.0
    downloaders: dict[str, _Downloader] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.todo = bytearray(self.manifest.count)
        self.published = bytearray(self.manifest.count)

    def gather(self, now: float, settings: TransferSettings) -> None:
        """A wave is coming: hold the first pass until no new device wanted it for `join_gap_s`, and no longer
        than `join_window_s` after the first want."""
        gathered = min(now + settings.join_gap_s, self.opened + settings.join_window_s)
        self.start_at = max(self.start_at, gathered)


class ChunkServer:
    """Serves blob chunks on their topics. `want()` and `progress()` are called from the MQTT thread; the
    publishing loop runs on its own."""

    def __init__(
        self,
        store: Store,
        blob_path: Callable[[str], Path],  # the blob's file on this host (`Registry.local_blob`: fetched if need be)
        topics: Topics,
        publish: PublishChunk,
        settings: TransferSettings,
        *,
        set_aside: Callable[[str, str], object] | None = None,  # (sha256, detail): a copy not matching its digest
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._set_aside = set_aside
        self.clock = clock
        self.blob_path = blob_path
        self.topics = topics
        self._publish = publish
        self.settings = settings
        self.stats = TransferStats()
        self._streams: dict[str, _Stream] = {}
        self._manifests: dict[str, BlobManifest] = {}
        self._order: list[str] = []  # round-robin over blobs with work
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-chunk-server", daemon=True)
        self._sent_bytes = 0
        self._rate_start = time.monotonic()
        self._expired_at = float("-inf")
        self._expected: dict[str, _Expected] = {}
        self._pace_poll = PACE_POLL_S

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

    # -- input (MQTT thread, API thread) ------------------------------------------------------------------
    def _expect(self, sha256: str, device_ids: list[str], now: float) -> None:
        """`device_ids` were told to fetch blob `sha256` (`_told`, at its first want): its first pass may start as
        soon as all of them wanted it (for `join_window_s` from now; a device that does not want it leaves the gap
        rule). Devices that wanted the blob lately are not awaited again. Call under the lock."""
        e = self._live(sha256, now)
        if e is None:
            e = self._expected[sha256] = _Expected(set(), now)
        e.devices.update(d for d in device_ids if d not in e.wanted)
        e.until = now + self.settings.join_window_s

    def _told(self, sha256: str) -> list[str]:
        """Devices whose desired state names blob `sha256` and was issued within `join_window_s` (none when the
        store cannot answer: the gap rule serves them as before)."""
        try:
            return self.store.devices_told(sha256, since=time.time() - self.settings.join_window_s)
        except Exception:  # the database is unreachable or failing: serve the want all the same
            log.warning("transfer: cannot read whom deploys told about %s", sha256[:12], exc_info=True)
            return []

    def awaiting(self, sha256: str) -> frozenset[str]:
        """Devices told about blob `sha256` that have not wanted it yet (while that counts)."""
        with self._lock:
            e = self._live(sha256, self.clock())
            return frozenset(e.devices) if e is not None else frozenset()

    def _live(self, sha256: str, now: float) -> _Expected | None:
        """Who is expected to want `sha256`, while that counts (`join_window_s` after the latest deploy told)."""
        e = self._expected.get(sha256)
        return e if e is not None and now <= e.until else None

    def _all_expected_wanted(self, sha256: str, device_id: str, now: float) -> bool:
        """Note that `device_id` wanted `sha256`; True when that was the last device told about it."""
        e = self._live(sha256, now)
        if e is None:
            return False
        e.wanted.add(device_id)
        if device_id not in e.devices:
            return False
        e.devices.discard(device_id)
        return not e.devices

    def _awaits(self, sha256: str, now: float) -> bool:
        """Devices told about `sha256` are still to want it."""
        e = self._live(sha256, now)
        return e is not None and bool(e.devices)

    def want(self, msg: Want) -> bool:
        """Queue the chunks `msg` asks for. False (and counted) for a blob the hub does not have."""
        m = self.manifest(msg.sha256)
        if m is None:
            self.stats.unknown_blob_wants += 1
            return False
        indexes = msg.indexes(m.count)
        told = self._told(msg.sha256) if msg.sha256 not in self._streams else None  # outside the lock
        now = self.clock()
        with self._lock:
            self.stats.wants += 1
            stream = self._streams.get(msg.sha256)
            if stream is None:
                if told is not None:
                    self._expect(msg.sha256, told, now)
                stream = _Stream(m, self.settings.window_chunks, now + self.settings.round_interval_s, now)
                self._streams[msg.sha256] = stream
                self._order.append(msg.sha256)
            d = stream.downloaders.get(msg.device_id)
            if d is None or now - d.seen > self.settings.downloader_idle_s:
                last = d is None and self._all_expected_wanted(msg.sha256, msg.device_id, now)
                if d is None and now < stream.start_at:
                    if last:
                        stream.start_at = now  # every device told wants it: nobody to wait for
                    elif stream.downloaders or self._awaits(msg.sha256, now):
                        # a second device, or told devices still to come: a wave, whose wants come over seconds
                        # (a lone device resuming on its own keeps round_interval_s)
                        stream.gather(now, self.settings)
                have = m.count - len(indexes)  # a want's ranges are disjoint
                d = _Downloader(bytearray(m.count), bytearray(m.count), 0, have, have, now)
                stream.downloaders[msg.device_id] = d
            d.seen = now
            for i in indexes:
                d.needs[i] = 1
                if d.sent[i]:  # it says it lacks a chunk published for it: lost (broker restart), count it again
                    d.sent[i] = 0
                    d.sent_count -= 1
                if not stream.todo[i]:
                    stream.todo[i] = 1
                    stream.todo_count += 1
        self._wake.set()
        return True

    def progress(self, device_id: str, download: DownloadProgress | None) -> None:
        """A device reported its download progress (None: it fetches nothing now, so it is done or gone)."""
        with self._lock:
            self.stats.progress_reports += 1
            if download is None:
                for stream in self._streams.values():
                    stream.downloaders.pop(device_id, None)
                return
            current = self._streams.get(download.sha256)
            d = current.downloaders.get(device_id) if current is not None else None
            if current is None or d is None:
                return
            if download.have_chunks >= download.total_chunks:
                del current.downloaders[device_id]
            else:
                d.have = max(d.have, download.have_chunks)
                d.seen = self.clock()
                d.reported = True
        # no wake-up: a paced blob is looked at again within PACE_POLL_S anyway

    @property
    def pending_chunks(self) -> int:
        with self._lock:
            return sum(s.todo_count for s in self._streams.values())

    # -- publishing loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                step = self.step()
            except Exception:  # a bug or a failing disk must not end chunk serving for good
                self.stats.publish_errors += 1
                log.exception("transfer: publishing failed")
                step = Step(None, 1.0)
            if step.published is None:
                self._wake.wait(step.wait_s)
                self._wake.clear()

    def step(self) -> Step:
        """Publish the next chunk that is due, if any (the loop calls this; tests call it directly)."""
        now = self.clock()
        with self._lock:
            job, wait_s = self._next_job(now)
        if job is None:
            return Step(None, wait_s)
        self._pace_poll = PACE_POLL_S
        manifest, index = job
        if not self._serve(manifest, index):
            return Step(None, 0.0)
        return Step((manifest.sha256, index), 0.0)

    def _next_job(self, now: float) -> tuple[tuple[BlobManifest, int] | None, float]:
        """The next (blob, chunk) to publish, or None and how long to wait before looking again."""
        wait_s = 1.0
        paced = False
        if now - self._expired_at >= EXPIRE_EVERY_S or now < self._expired_at:
            self._expired_at = now
            self._expire(now)
        for _ in range(len(self._order)):
            sha = self._order.pop(0)
            self._order.append(sha)
            stream = self._streams[sha]
            if stream.todo_count == 0:
                continue
            if now < stream.start_at:
                wait_s = min(wait_s, stream.start_at - now)
                continue
            if not self._may_publish(stream, now):
                paced = True
                continue
            return (stream.manifest, self._take(stream, now)), 0.0
        if paced:
            wait_s = min(wait_s, self._pace_poll)
            self._pace_poll = min(PACE_POLL_MAX_S, self._pace_poll * 2)
        return None, wait_s

    def _may_publish(self, stream: _Stream, now: float) -> bool:
        """Pacing: the median downloader has fewer than `window` chunks published for it but not received."""
        if self.settings.window_chunks == 0:
            return True
        # Downloaders sent nothing yet (they joined behind the cursor) neither hold the pass back nor say how
        # fast the others drain. Once any progress came, only downloaders that reported count: a want may name
        # any enrolled device (MQTT does not say who sent it), a progress report only the device itself.
        senders = [d for d in stream.downloaders.values() if d.sent_count]
        reporters = [d for d in senders if d.reported]
        backlog = sorted(d.outstanding for d in reporters or senders)
        if not backlog:
            return True
        median = backlog[len(backlog) // 2]
        if median == 0 and stream.window < stream.manifest.count:
            stream.window = min(stream.manifest.count, stream.window * 2)  # they drained it: the window limited
        if median < stream.window:
            return True
        if now - stream.last_publish >= self.settings.pace_timeout_s:
            self.stats.pace_timeouts += 1
            return True
        self.stats.paced_waits += 1
        return False

    def _take(self, stream: _Stream, now: float) -> int:
        """Move the cursor to the next chunk someone needs (wrapping once past the end) and account for it."""
        index = stream.todo.find(1, stream.cursor)
        if index < 0 or stream.cursor == 0:
            index = stream.todo.find(1)
            self.stats.rounds += 1
        stream.todo[index] = 0
        stream.todo_count -= 1
        stream.cursor = index + 1
        stream.last_publish = now
        if stream.published[index]:
            self.stats.chunks_republished += 1
        stream.published[index] = 1
        for d in stream.downloaders.values():
            if d.needs[index] and not d.sent[index]:
                d.sent[index] = 1
                d.sent_count += 1
        return index

    def _expire(self, now: float) -> None:
        """Forget downloaders not heard from for `downloader_idle_s`, and blobs with nothing left to do."""
        idle = self.settings.downloader_idle_s
        for sha in list(self._order):
            stream = self._streams[sha]
            for device in [k for k, d in stream.downloaders.items() if now - d.seen > idle]:
                del stream.downloaders[device]
            if stream.todo_count == 0 and not stream.downloaders:
                del self._streams[sha]
                self._order.remove(sha)
        for sha in [k for k, e in self._expected.items() if now > e.until]:
            del self._expected[sha]

    def _serve(self, manifest: BlobManifest, index: int) -> bool:
        """Publish chunk `index`; False when no good copy of the blob could be read (its pending chunks are
        dropped: devices want them again, and a missing blob is not tried once per chunk)."""
        sha = manifest.sha256
        try:
            chunk = self._read(manifest, index)
        except OSError as e:
            self.stats.read_errors += 1
            with self._lock:
                stream = self._streams.get(sha)
                if stream is not None:
                    stream.todo = bytearray(manifest.count)
                    stream.todo_count = 0
            if log_sampled(self.stats.read_errors):
                log.error("transfer: cannot serve blob %s (#%d): %s", sha, self.stats.read_errors, e)
            return False
        frame = encode_frame(sha, index, manifest.count, chunk)
        self._throttle(len(frame))
        self._publish(self.topics.chunk(sha), frame)
        self.stats.chunks_published += 1
        self.stats.bytes_published += len(frame)
        return True

    def _read(self, manifest: BlobManifest, index: int) -> bytes:
        """Chunk `index` from this host's copy of the blob, checked against its signed digest; a copy that does
        not match is set aside and the chunk read once more (from the store's copy, where it keeps one).

        Raises:
            OSError: no copy of the blob (FileNotFoundError), or none that matches (EIO).
        """
        for _ in range(2):
            with self.blob_path(manifest.sha256).open("rb") as f:
                chunk = read_chunk(f, manifest, index)
            try:
                verify_chunk(manifest, index, chunk)  # the receivers' own check: length and signed digest
            except ChunkDigestMismatch as e:
                self.stats.corrupt_chunks += 1
                if self._set_aside is None:
                    break
                self._set_aside(manifest.sha256, f"{e} ({len(chunk)} bytes read)")
            else:
                return chunk
        raise OSError(
            errno.EIO, f"chunk {index} of blob {manifest.sha256} on this host does not match its signed digest"
        )

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

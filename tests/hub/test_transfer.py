"""The chunk server's carousel and pacing, driven step by step with a fake clock (no broker, real SQLite)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.chunks import decode_frame
from fleet.messages import BlobManifest, DownloadProgress, Want
from fleet.plan import plan_bytes
from fleet.topics import Topics
from hub.settings import TransferSettings
from hub.store import Desired, DesiredSlot, Device, SqlStore, open_store
from hub.store.base import ModelVersion
from hub.transfer import PACE_POLL_MAX_S, ChunkServer

CHUNK = 1024
COUNT = 40


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, store: SqlStore, blob_dir: Path, **settings: object) -> None:
        data = hashlib.shake_256(b"blob").digest(COUNT * CHUNK)
        self.manifest = plan_bytes(data, CHUNK, chunking="fixed")
        (blob_dir / self.manifest.sha256).write_bytes(data)
        store.add_model_version(
            ModelVersion(
                name="m",
                version="1.0.0",
                task="classification",
                sha256=self.manifest.sha256,
                size=len(data),
                descriptor={},
                manifest=self.manifest.model_dump(),
                created_at=0,
                created_by="test",
            )  # fmt: skip
        )
        self.clock = Clock()
        self.sent: list[int] = []
        self.topics = Topics("t/v1")
        defaults: dict[str, object] = {"round_interval_s": 0.05, "join_gap_s": 0.05, "window_chunks": 0}
        self.server = ChunkServer(
            store, lambda sha: blob_dir / sha, self.topics, self._publish,
            TransferSettings.model_validate(defaults | settings), clock=self.clock,
        )  # fmt: skip

    def _publish(self, topic: str, frame: bytes) -> None:
        assert topic == self.topics.chunk(self.manifest.sha256)
        self.sent.append(decode_frame(frame).index)

    def want(self, device: str, ranges: list[tuple[int, int]]) -> None:
        assert self.server.want(Want(device_id=device, sha256=self.manifest.sha256, missing=ranges))

    def report(self, device: str, have: int) -> None:
        progress = DownloadProgress(sha256=self.manifest.sha256, have_chunks=have, total_chunks=COUNT,
                                    bytes_done=have * CHUNK, bytes_total=COUNT * CHUNK)  # fmt: skip
        self.server.progress(device, progress)

    def run(self, steps: int | None = None) -> list[int]:
        """Step until nothing is due (or `steps` publishes); return what was published."""
        out: list[int] = []
        while steps is None or len(out) < steps:
            step = self.server.step()
            if step.published is None:
                break
            out.append(step.published[1])
        return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(tmp_path / "hub.db")
    yield s
    s.close()


def test_wants_gathered_before_the_first_chunk_publish_each_chunk_once(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path)
    w.want("a", [(0, COUNT)])
    w.want("b", [(3, 9)])
    assert w.run() == [], "the first wants are gathered for round_interval_s"
    w.clock.now += 0.05
    assert w.run() == list(range(COUNT))
    assert w.server.stats.chunks_published == COUNT and w.server.stats.chunks_republished == 0


def test_the_first_pass_waits_while_devices_keep_joining_up_to_the_join_window(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=0.1, join_window_s=0.5)
    w.want("a", [(0, COUNT)])
    w.clock.now += 0.04
    w.want("b", [(0, COUNT)])  # a second device: a wave, gathered until none joined for join_gap_s
    w.clock.now += 0.09
    assert w.run() == [], "past round_interval_s, but a new device wanted 90 ms ago"
    w.want("a", [(0, COUNT)])  # a device wanting again does not prolong it
    w.clock.now += 0.01
    assert w.run(steps=1) == [0]


def test_a_lone_device_no_deploy_announced_waits_only_the_round_interval(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=1.0, join_window_s=5.0)
    w.want("a", [(0, COUNT)])  # resuming a download on its own: no wave is coming
    w.clock.now += 0.04
    assert w.run() == []
    w.clock.now += 0.01
    assert w.run(steps=1) == [0], "round_interval_s after its want, not join_gap_s"


def test_joiners_that_never_stop_wait_only_the_join_window(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=0.1, join_window_s=0.2)
    opened = w.clock.now
    for i in range(6):  # a new device every 30 ms, up to 150 ms after the first
        w.want(f"d{i}", [(0, COUNT)])
        assert w.run() == []
        w.clock.now += 0.03
    w.clock.now = opened + 0.2
    w.want("d-late", [(0, COUNT)])
    assert w.run(steps=1) == [0], "join_window_s after the first want the pass starts, joiners or not"


def _told(store: SqlStore, sha256: str, *devices: str, ago_s: float = 0.0) -> None:
    """Record desired states naming blob `sha256` for `devices`, as a deployer on another replica does: the chunk
    server under test hears nothing of it but what the store holds."""
    at = time.time() - ago_s
    store.add_devices([Device(id=d, labels={}, password_hash="x", enrolled_at=at, enrolled_by="t") for d in devices])
    versions = store.allocate_desired_versions(list(devices))
    slot = DesiredSlot("m", "1.0.0", sha256)
    store.put_desired([Desired(d, versions[d], (slot,), "{}", at, at + 3600) for d in devices])


def test_a_wave_another_replica_told_starts_once_every_device_of_it_wanted(store: SqlStore, tmp_path: Path) -> None:
    """A deploy served by a follower tells nobody in the leader's process: the first want finds the wave in the
    store."""
    w = World(store, tmp_path, join_gap_s=1.0, join_window_s=5.0)
    _told(store, w.manifest.sha256, "a", "b", "c")
    w.want("a", [(0, COUNT)])
    w.want("b", [(0, COUNT)])
    w.clock.now += 0.5
    assert w.run() == [] and w.server.awaiting(w.manifest.sha256) == {"c"}
    w.want("c", [(0, COUNT)])
    assert w.run(steps=1) == [0], "all told devices wanted: no gap to wait out"
    assert w.server.awaiting(w.manifest.sha256) == frozenset()


def test_a_told_device_that_never_wants_leaves_the_gap_rule(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=1.0, join_window_s=5.0)
    _told(store, w.manifest.sha256, "a", "offline")
    w.want("a", [(0, COUNT)])
    w.clock.now += 0.9
    assert w.run() == []
    w.clock.now += 0.1
    assert w.run(steps=1) == [0]


def test_states_issued_before_the_join_window_are_not_awaited(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=1.0, join_window_s=5.0)
    _told(store, w.manifest.sha256, "long-ago", ago_s=60.0)  # holds the blob, or will want it on its own
    _told(store, w.manifest.sha256, "a")
    w.want("a", [(0, COUNT)])
    assert w.server.awaiting(w.manifest.sha256) == frozenset()
    assert w.run(steps=1) == [0], "the one device told lately wanted: the pass starts"


def test_told_devices_that_wanted_lately_are_not_awaited_again(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, join_gap_s=1.0, join_window_s=5.0)
    _told(store, w.manifest.sha256, "a", "b")
    w.want("a", [(0, COUNT)])
    w.want("b", [(0, COUNT)])
    assert len(w.run()) == COUNT
    w.report("a", COUNT)
    w.report("b", COUNT)
    w.clock.now += 1.0
    assert w.run() == []  # the finished blob is forgotten
    w.want("a", [(0, 4)])  # a resumes on its own (lost part of its store): its state still names the blob
    assert w.server.awaiting(w.manifest.sha256) == frozenset()
    w.clock.now += 0.05
    assert w.run() == [0, 1, 2, 3], "a lone device again: round_interval_s, not join_gap_s"


def test_a_paced_blob_is_polled_less_often_while_it_stays_paced(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=1)
    w.want("a", [(0, COUNT)])
    w.want("b", [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0]
    waits = [w.server.step().wait_s for _ in range(7)]
    assert waits == sorted(waits) and waits[0] < waits[-1] == PACE_POLL_MAX_S
    w.report("a", 1)
    w.report("b", 1)
    assert w.run(steps=1) == [1]
    assert w.server.step().wait_s < PACE_POLL_MAX_S, "a publish starts the polling over"


def test_a_late_joiner_gets_the_rest_of_the_pass_then_only_the_head(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path)
    w.want("early", [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run(steps=10) == list(range(10))
    w.want("late-1", [(0, COUNT)])
    w.want("late-2", [(0, COUNT)])
    rest = w.run()
    assert rest == list(range(10, COUNT)) + list(range(10)), "the rest of the pass, then the head once for both"
    assert w.server.stats.chunks_republished == 10 and w.server.stats.rounds == 2


def test_a_chunk_nobody_lacks_is_not_published_again(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path)
    w.want("a", [(0, COUNT)])
    w.clock.now += 0.05
    w.run()
    w.want("a", [(7, 8), (30, 31)])  # lost with a broker restart
    assert w.run() == [7, 30]


def test_out_of_range_wants_ask_only_for_chunks_that_exist(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path)
    w.want("a", [(COUNT - 2, 1 << 40)])
    w.clock.now += 0.05
    assert w.run() == [COUNT - 2, COUNT - 1]
    other = Want(device_id="a", sha256="cd" * 32, missing=[(0, 3)])
    assert not w.server.want(other)
    assert w.server.stats.unknown_blob_wants == 1


def test_frames_carry_the_chunk(store: SqlStore, tmp_path: Path) -> None:
    frames: list[bytes] = []
    w = World(store, tmp_path)
    w.server._publish = lambda _t, f: frames.append(f)
    w.want("a", [(5, 6)])
    w.clock.now += 0.05
    w.run()
    f = decode_frame(frames[0])
    data = (tmp_path / w.manifest.sha256).read_bytes()
    assert (f.index, f.count, bytes(f.data)) == (5, COUNT, data[5 * CHUNK : 6 * CHUNK])


def test_pacing_holds_the_pass_to_the_median_downloader(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=4, pace_timeout_s=5.0)
    for d in ("a", "b", "c"):
        w.want(d, [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0, 1, 2, 3], "a window's worth, then wait for progress"
    assert w.server.step().wait_s <= 0.05
    w.report("a", 3)
    w.report("b", 1)
    w.report("c", 2)  # outstanding 1, 3 and 2: the median has room for two more
    assert w.run() == [4, 5]
    assert w.server.stats.paced_waits > 0


def test_the_window_doubles_when_downloaders_drain_it(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=4)
    w.want("a", [(0, COUNT)])
    w.clock.now += 0.05
    assert len(w.run()) == 4
    w.report("a", 4)
    assert len(w.run()) == 8, "it received everything: the window, not the device, was the limit"
    w.report("a", 12)
    assert len(w.run()) == 16


def test_no_progress_for_pace_timeout_publishes_anyway(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=2, pace_timeout_s=5.0)
    w.want("silent", [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0, 1]
    w.clock.now += 4.9
    assert w.run() == []
    w.clock.now += 0.2
    assert w.run(steps=1) == [2]
    assert w.server.stats.pace_timeouts == 1


def test_only_downloaders_that_report_pace_once_progress_arrives(store: SqlStore, tmp_path: Path) -> None:
    """A want may name any enrolled device; a progress report comes on the device's own topic."""
    w = World(store, tmp_path, window_chunks=2)
    for d in ("named-by-someone-else", "real-1", "real-2"):
        w.want(d, [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0, 1]
    w.report("real-1", 1)
    w.report("real-2", 2)
    assert w.run() == [2], "the silent one (2 outstanding) is left out of the median"


def test_finished_and_vanished_downloaders_stop_pacing(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=2, downloader_idle_s=60.0, pace_timeout_s=100.0)
    for d in ("done", "gone", "slow"):
        w.want(d, [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0, 1]
    for d in ("done", "gone", "slow"):
        w.report(d, 1)
    assert w.run() == [2]
    w.server.progress("done", None)  # reported no download: finished (or dropped) it
    w.clock.now += 30
    w.report("slow", 3)
    assert w.run() == [], "gone (2 outstanding) and slow (0): the upper median, gone's, holds the pass"
    w.clock.now += 31  # gone was last heard from 61 s ago: forgotten
    assert w.run() == [3, 4, 5, 6], "slow alone paces now; it had drained its window, which doubled"


def test_a_lost_chunk_counts_again_for_its_downloader(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path, window_chunks=2)
    w.want("a", [(0, COUNT)])
    w.clock.now += 0.05
    assert w.run() == [0, 1]
    w.report("a", 1)
    w.want("a", [(1, 2)])  # chunk 1 was lost: it is outstanding no more, and wanted again
    assert w.run() == [2, 3, 4, 5], "nothing outstanding: the window doubled to 4"
    sent, have = [2, 3, 4, 5], 5
    w.report("a", have)
    while got := w.run():  # a fast device: it reports everything published so far
        sent += got
        have += len(got)
        w.report("a", min(have, COUNT - 1))
    assert sorted(sent) == list(range(1, COUNT)) and sent[-1] == 1, "the lost chunk again, after the wrap"


def test_manifest_is_validated_from_the_store(store: SqlStore, tmp_path: Path) -> None:
    w = World(store, tmp_path)
    assert w.server.manifest(w.manifest.sha256) == BlobManifest.model_validate(w.manifest.model_dump())
    assert w.server.manifest("ab" * 32) is None

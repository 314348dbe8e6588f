"""The want/chunk download: corrupted and lost chunks, stale downloads, disk space, broker restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from agent.download import Download
from agent.runtime import Agent
from fleet.codec import encode
from fleet.messages import BlobManifest, Command, CommandName
from models.samples import classifier_descriptor, retrain_head
from models.validate import validate
from tests.agent.conftest import AgentFactory, Sample
from tests.support import disks
from tests.support.broker import Broker
from tests.support.disks import SmallDisk
from tests.support.hubside import HubSide, one
from tests.support.models import classifier_versions


def test_corrupted_chunk_is_refused_and_wanted_again(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    make_agent(hub, device_id, broker.url)
    ref = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.corrupt_once = {1, 3}
    hub.publish_desired(device_id, hub.desired(device_id, 1, ref))
    hub.wait_active("1.0.0")
    sha = ref.blob.sha256
    assert [i for s, i in hub.served if s == sha].count(1) == 2
    assert [i for s, i in hub.served if s == sha].count(3) == 2
    singles = [w.missing for w in hub.wants if w.sha256 == sha][1:]
    assert [(1, 2)] in singles and [(3, 4)] in singles, "each refused chunk is wanted again on its own"


def test_lost_chunk_is_wanted_again_after_a_quiet_spell(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    make_agent(hub, device_id, broker.url, download={"rewant_after_s": 0.3})
    ref = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.drop_once = {0, ref.blob.count - 1}
    hub.publish_desired(device_id, hub.desired(device_id, 1, ref))
    hub.wait_active("1.0.0")
    assert [w.missing for w in hub.wants][-1] == [(0, 1), (ref.blob.count - 1, ref.blob.count)]


def test_newer_desired_state_cancels_a_stale_download(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    agent, _ = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.withhold = set(range(v1.blob.count // 2, v1.blob.count))  # half of v1 arrives, then it stalls
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_reported(
        lambda r: (download := one(r).download) is not None and download.have_chunks >= v1.blob.count // 2
    )
    partial = agent.store.partial
    assert any(p.name.startswith(v1.blob.sha256) for p in partial.iterdir())
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.withhold = set()
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    r = hub.wait_active("2.0.0")
    assert one(r).previous is None
    assert list(partial.iterdir()) == [], "the stale transfer's files are gone"
    assert not agent.store.has_blob(v1.blob.sha256)


def test_not_enough_disk_space_is_reported_and_nothing_is_fetched(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    make_agent(hub, device_id, broker.url, store={"min_free_bytes": 1 << 60})
    ref = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, ref))
    r = hub.wait_reported(lambda r: (error := one(r).error) is not None and error.code == "insufficient_disk")
    assert r.phase == "downloading" and (error := one(r).error) is not None and not error.permanent
    assert hub.wants == [] and hub.served == []


def test_broker_restart_mid_download_resumes_without_refetching(
    private_broker: Broker,
    topic_prefix: str,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
    tmp_path: Path,
) -> None:
    hub = HubSide(private_broker.host, private_broker.port, topic_prefix)
    try:
        agent, _ = make_agent(hub, device_id, private_broker.url)
        ref = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
        half = ref.blob.count // 2
        hub.withhold = set(range(half, ref.blob.count))
        hub.publish_desired(device_id, hub.desired(device_id, 1, ref))
        hub.wait_reported(lambda r: (download := one(r).download) is not None and download.have_chunks == half)
        private_broker.kill()
        hub.withhold = set()
        private_broker.start()
        hub.wait_connected()
        hub.wait_active("1.0.0", timeout=60)
        served = [i for s, i in hub.served if s == ref.blob.sha256]
        assert sorted(served) == list(range(ref.blob.count)), "no verified chunk was fetched twice"
        assert agent.link.connects >= 2
    finally:
        hub.close()


def test_left_over_chunk_subscription_of_an_earlier_run_is_dropped(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.withhold = set(range(v1.blob.count))
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_reported(lambda r: r.phase == "downloading")
    first.stop()  # the broker keeps the persistent session, with its subscription to v1's chunks
    # as if the agent had died just after accepting a newer state, before it unsubscribed v1's chunks
    (data / "state.json").unlink()
    hub.withhold = set()
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    start = len(hub.reported)
    second, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    hub.wait_active("2.0.0", since=start)
    hub.publish_raw(hub.topics.chunk(v1.blob.sha256), b"chunk traffic of another device's download")
    now = time.time()
    ping = Command(device_id=device_id, version=1, issued_at=now, expires_at=now + 60, correlation_id="after",
                   name=CommandName.PING)  # fmt: skip
    hub.publish_raw(hub.topics.cmd(device_id), encode(hub.key.sign(ping)))
    hub.wait(lambda: any(a.correlation_id == "after" for a in hub.acks), what="ack")
    assert second.reconciler.stray_chunks == 0, "no chunks of a blob this device no longer fetches"


def _head_retrained(v1: Sample, out: Path, version: str = "2.0.0") -> Sample:
    """v1 with a fine-tuned head only: the bytes of every other layer are unchanged."""
    path = out / f"classifier-{version}-head.onnx"
    path.write_bytes(retrain_head(onnx.load(v1.path), seed=7).SerializeToString())
    fresh = classifier_descriptor(num_classes=10, height=64, width=64, name="cls").model_copy(
        update={"version": version}
    )
    return Sample(path, validate(path, fresh).descriptor)


def test_a_new_version_fetches_only_the_chunks_the_store_lacks(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample], tmp_path: Path
) -> None:
    agent, _ = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_active("1.0.0")
    v2 = _head_retrained(samples["v1"], tmp_path)
    ref = hub.model_ref(v2.path, v2.descriptor)
    held = set(v1.blob.chunks)
    new = {i for i, digest in enumerate(ref.blob.chunks) if digest not in held}
    assert 0 < len(new) < ref.blob.count // 2, "a head-only change touches few content-defined chunks"
    start = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 2, ref))
    hub.wait_active("2.0.0")
    wanted = {i for w in hub.wants[start:] if w.sha256 == ref.blob.sha256 for i in w.indexes(ref.blob.count)}
    assert wanted == new, "only the chunks no blob in the store holds are fetched"
    assert agent.store.blob_path(ref.blob.sha256).read_bytes() == v2.path.read_bytes()


def test_a_corrupt_local_copy_of_a_shared_chunk_is_fetched_instead(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample], tmp_path: Path
) -> None:
    agent, _ = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_active("1.0.0")
    v2 = _head_retrained(samples["v1"], tmp_path)
    ref = hub.model_ref(v2.path, v2.descriptor)
    with agent.store.blob_path(v1.blob.sha256).open("r+b") as f:  # bit rot in chunk 0 of the held v1 blob
        f.write(b"\xff")
    start = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 2, ref))
    hub.wait_active("2.0.0")
    wanted = {i for w in hub.wants[start:] if w.sha256 == ref.blob.sha256 for i in w.indexes(ref.blob.count)}
    assert 0 in wanted and ref.blob.chunks[0] == v1.blob.chunks[0]
    assert agent.store.blob_path(ref.blob.sha256).read_bytes() == v2.path.read_bytes()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A small ext4 filesystem (`tests.support.disks`). Request it before `make_agent`, so its agents are stopped
    (their files closed) before it is unmounted."""
    with disks.small_disk(tmp_path) as disk:
        yield disk


def _half_fetched(agent: Agent, blob: BlobManifest) -> Download | None:
    """The transfer of `blob` once half of its chunks are in (the hub withholds the others)."""
    dl = agent.reconciler.download
    return dl if dl is not None and dl.sha256 == blob.sha256 and dl.receiver.have_count == blob.count // 2 else None


def test_a_disk_filled_mid_download_frees_spare_blobs_and_goes_on(
    small_disk: SmallDisk, broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, tmp_path: Path
) -> None:
    """Another program fills the disk after the free-space check passed: the chunk writes fail with ENOSPC, and
    the download frees spare blobs as a refused check does, then goes on (it stalled with insufficient_disk while
    the spare blob held the space)."""
    (tmp_path / "models").mkdir()
    made = classifier_versions(tmp_path / "models", ("1.0.0", "2.0.0", "3.0.0", "4.0.0"))
    refs = {v: hub.model_ref(path, desc) for v, (path, desc) in made.items()}
    agent, _ = make_agent(hub, device_id, broker.url, data_dir=small_disk.path / "agent", store={"min_free_bytes": 0})
    for n, version in enumerate(("1.0.0", "2.0.0", "3.0.0"), start=1):  # 1.0.0 is then spare (kept for reuse)
        hub.publish_desired(device_id, hub.desired(device_id, n, refs[version]))
        hub.wait_active(version)
    store, spare = agent.store, refs["1.0.0"].blob.sha256
    assert store.has_blob(spare)
    new = refs["4.0.0"].blob
    hub.withhold = set(range(new.count // 2, new.count))  # the check passes, half of the chunks come
    hub.publish_desired(device_id, hub.desired(device_id, 4, refs["4.0.0"]))
    hub.wait(lambda: _half_fetched(agent, new), what="half of 4.0.0 fetched")
    small_disk.fill()  # then another program takes every free byte
    hub.withhold = set()
    r = hub.wait_active("4.0.0")
    assert not store.has_blob(spare), "the spare blob made room for the rest of the download"
    assert one(r).error is None and store.blob_path(new.sha256).read_bytes() == made["4.0.0"][0].read_bytes()


def test_a_disk_filled_mid_download_with_nothing_spare_stalls_and_resumes_when_freed(
    small_disk: SmallDisk,
    broker: Broker,
    hub: HubSide,
    device_id: str,
    make_agent: AgentFactory,
    samples: dict[str, Sample],
) -> None:
    """Nothing spare to delete: the download stalls, reports insufficient_disk, and resumes once space is back."""
    v1, v2 = (hub.model_ref(samples[v].path, samples[v].descriptor) for v in ("v1", "v2"))
    agent, _ = make_agent(hub, device_id, broker.url, data_dir=small_disk.path / "agent", store={"min_free_bytes": 0})
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_active("1.0.0")
    hub.withhold = set(range(v2.blob.count // 2, v2.blob.count))
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    hub.wait(lambda: _half_fetched(agent, v2.blob), what="half of 2.0.0 fetched")
    small_disk.fill()
    start = len(hub.reported)
    hub.withhold = set()
    r = hub.wait_reported(lambda r: (e := one(r).error) is not None and e.code == "insufficient_disk", since=start)
    assert one(r).phase == "downloading" and (e := one(r).error) is not None and "could not be written" in e.message
    assert agent.store.has_blob(v1.blob.sha256)
    small_disk.free()
    hub.wait_active("2.0.0")

"""The simulated device's store (`sim.store.SimStore`) collects spare blobs by the agent's rule."""

from __future__ import annotations

from pathlib import Path

from agent.store import StoredModel
from fleet.messages import AppliedModel, BlobManifest
from fleet.plan import plan_bytes
from sim.store import SharedBlobs, SimStore


def _held(store: SimStore, data: bytes) -> BlobManifest:
    """A blob this device fetched (in the shared directory, recorded as the agent's download does)."""
    manifest = plan_bytes(data, 1024, chunking="fixed")
    store.shared.path(manifest.sha256).write_bytes(data)
    store.record_manifest(manifest)
    return manifest


def _record(manifest: BlobManifest, version: str) -> StoredModel:
    sha = manifest.sha256
    return StoredModel(sha256=sha, model=AppliedModel(name="m", version=version, sha256=sha), task="classification",
                       descriptor={"name": "m", "version": version})  # fmt: skip


def test_spare_blobs_go_least_recently_used_first_not_first_fetched(tmp_path: Path) -> None:
    """As on the agent (`agent.store.ModelStore.collect`): a blob fetched early but serving until later is kept
    over one fetched later that stopped serving earlier; among those, fewest chunks shared with the next download
    first. The simulator deleted in the order the blobs were fetched."""
    store = SimStore(SharedBlobs(tmp_path), "sim-00001")
    x, y = _held(store, b"x" * 4096), _held(store, b"y" * 4096)  # x fetched first
    store.promote(_record(y, "1.0.0"))
    store.promote(_record(x, "2.0.0"))  # x serves after y: used more recently
    for n, data in enumerate((b"z" * 4096, b"w" * 4096), start=3):  # y, then x, stop being active or previous
        store.promote(_record(_held(store, data), f"{n}.0.0"))
    assert store.collect(4096) == [y.sha256], "the least recently used spare blob goes first"
    store.record_manifest(y)
    reuse = plan_bytes(b"x" * 4096, 1024, chunking="fixed")  # a download that takes x's chunks from the store
    assert store.collect(4096, reuse=reuse) == [y.sha256], "the one sharing chunks with the download stays"

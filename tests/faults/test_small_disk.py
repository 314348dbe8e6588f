"""A real agent on a real small filesystem (an ext4 image of its own) that fills up or turns read-only: the agent
keeps serving, says why on the hub, and carries on once the disk is writable again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

from models.samples import classifier_descriptor, retrain_head
from models.validate import validate
from tests.faults.conftest import FaultWorld
from tests.support import disks
from tests.support.agents import AgentProc
from tests.support.disks import SmallDisk
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


def _spawn(w: FaultWorld, bundle: Path, data: Path) -> AgentProc:
    """An agent that keeps no space free after a blob (the default 64 MiB is more than these disks hold)."""
    return w.spawn(bundle, data, EDGEFLEET_AGENT_STORE_MIN_FREE_BYTES="0")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A small ext4 filesystem (`tests.support.disks`). Request it before `fault_world`, so its agents are stopped
    before it is unmounted."""
    with disks.small_disk(tmp_path) as disk:
        yield disk


def _reported_error(w: FaultWorld, agent: AgentProc, device: str) -> dict[str, Any]:
    """The device's report once it carries an error; fails at once if the agent process died."""

    def error() -> dict[str, Any] | None:
        assert agent.proc.poll() is None, f"the agent died:\n{agent.output()[-3000:]}"
        r = w.reported(device)
        return r if r.get("error") else None

    return wait_for(error, timeout=60)


def test_restart_on_a_full_disk_serves_the_current_model(small_disk: SmallDisk, fault_world: FaultWorld) -> None:
    """A device whose disk filled up while the agent was down starts, reports and serves its model."""
    w = fault_world
    bundle = w.enrol("cam-full")
    data = small_disk.path / "agent"
    agent = _spawn(w, bundle, data)
    w.deploy("cam-full", "1.0.0")
    w.wait_active("cam-full", "1.0.0")
    assert agent.stop() == 0
    state = (data / "state.json").read_bytes()
    small_disk.fill()
    again = _spawn(w, bundle, data)
    w.deploy("cam-full", "2.0.0")
    r = _reported_error(w, again, "cam-full")
    assert r["error"]["code"] == "insufficient_disk" and "no space left" in r["error"]["message"], r
    assert (r.get("active") or {}).get("version") == "1.0.0"
    # the accepted state could not be saved: the file is the last one written, whole, and no temporary is left
    assert (data / "state.json").read_bytes() == state
    assert not list(data.glob("*.tmp"))
    assert again.proc.poll() is None, again.output()[-3000:]
    small_disk.free()
    w.wait_active("cam-full", "2.0.0")
    assert "control loop error" not in again.output(), again.output()[-3000:]
    assert again.stop() == 0
    record("fault", "disk full at agent start, then a deployment", "recovered")


def test_desired_state_while_disk_full_is_reported(small_disk: SmallDisk, fault_world: FaultWorld) -> None:
    """A new desired state arriving when not one byte is free: accepted, the reason reported, done once freed."""
    w = fault_world
    bundle = w.enrol("cam-nospace")
    data = small_disk.path / "agent"
    agent = _spawn(w, bundle, data)
    w.deploy("cam-nospace", "1.0.0")
    w.wait_active("cam-nospace", "1.0.0")
    small_disk.fill()
    w.deploy("cam-nospace", "2.0.0")
    r = _reported_error(w, agent, "cam-nospace")
    assert r["error"]["code"] == "insufficient_disk", r
    assert re.search(r"needs \d+\.\d MiB more .* 0\.0 MiB free under ", r["error"]["message"]), r
    assert (r.get("active") or {}).get("version") == "1.0.0"
    assert agent.proc.poll() is None
    small_disk.free()
    w.wait_active("cam-nospace", "2.0.0")
    assert "control loop error" not in agent.output(), agent.output()[-3000:]
    assert agent.stop() == 0
    record("fault", "disk full when a desired state arrives", "recovered")


def test_data_dir_turning_read_only_is_reported(small_disk: SmallDisk, fault_world: FaultWorld) -> None:
    """The data dir's filesystem turns read-only while the agent runs: it keeps serving and says why on the hub;
    repaired (fsck) and restarted, it finishes the deployment."""
    w = fault_world
    bundle = w.enrol("cam-ro")
    data = small_disk.path / "agent"
    agent = _spawn(w, bundle, data)
    w.deploy("cam-ro", "1.0.0")
    w.wait_active("cam-ro", "1.0.0")
    small_disk.fail()
    w.deploy("cam-ro", "2.0.0")
    r = _reported_error(w, agent, "cam-ro")
    assert r["error"]["code"] == "disk_read_only", r
    assert "read-only" in r["error"]["message"].lower(), r
    assert (r.get("active") or {}).get("version") == "1.0.0"
    assert "control loop error" not in agent.output(), agent.output()[-3000:]
    assert agent.stop() == 0
    # a restart before the repair (a reboot that did not fsck) starts on the read-only disk and says so again
    again = _spawn(w, bundle, data)
    r = wait_for(lambda: (x := _reported_error(w, again, "cam-ro"))["seq"] > r["seq"] and x, timeout=60)
    assert r["error"]["code"] == "disk_read_only", r
    assert (r.get("active") or {}).get("version") == "1.0.0"
    assert again.stop() == 0
    small_disk.repair()
    repaired = _spawn(w, bundle, data)
    w.wait_active("cam-ro", "2.0.0")
    assert repaired.stop() == 0
    record("fault", "data dir turned read-only while running", "recovered")


def test_spare_blobs_make_room_for_a_version_that_would_not_fit(
    small_disk: SmallDisk, fault_world: FaultWorld, tmp_path: Path
) -> None:
    """Unreferenced blobs kept for chunk reuse (up to STORE_GC_KEEP_BYTES) are deleted when a new version would
    not fit otherwise, instead of refusing it with insufficient_disk while they take the space."""
    w = fault_world
    (tmp_path / "more").mkdir()
    more = classifier_versions(tmp_path / "more", ("1.0.0", "2.0.0", "3.0.0", "4.0.0"))  # seeds 2, 3: new blobs
    for version in ("3.0.0", "4.0.0"):
        path, desc = more[version]
        assert w.hub.push_model(path, desc.to_json()).status_code == 201
    bundle = w.enrol("cam-spare")
    data = small_disk.path / "agent"
    agent = _spawn(w, bundle, data)
    for version in ("1.0.0", "2.0.0", "3.0.0"):  # 1.0.0 is then neither active nor previous: spare
        w.deploy("cam-spare", version)
        w.wait_active("cam-spare", version)
    blobs = data / "store" / "blobs"
    spare = w.hub.hub.registry.get("cls", "1.0.0").manifest["sha256"]
    assert (blobs / spare).exists()
    size = w.hub.hub.registry.get("cls", "4.0.0").manifest["size"]
    small_disk.fill(leave=size // 2)  # half of what 4.0.0 needs: the spare blob holds the rest
    assert disks.free_bytes(small_disk.path) < size
    w.deploy("cam-spare", "4.0.0")
    w.wait_active("cam-spare", "4.0.0")
    assert not (blobs / spare).exists()
    assert agent.stop() == 0
    record("fault", "disk too full for a new version while spare blobs are kept", "recovered")


def test_a_version_that_does_not_fit_frees_only_the_spare_blobs_it_needs(
    small_disk: SmallDisk, fault_world: FaultWorld, tmp_path: Path
) -> None:
    """Two spare blobs, room needed for one: only one is deleted, and the one whose chunks the new version reuses
    stays (though it is the older one), so the download stays a delta. Every spare blob was deleted before."""
    w = fault_world
    (tmp_path / "more").mkdir()
    more = classifier_versions(tmp_path / "more", ("1.0.0", "2.0.0", "3.0.0", "4.0.0"))  # seeds 2, 3: new blobs
    tuned = tmp_path / "more" / "cls-5.0.0.onnx"  # 1.0.0 with a fine-tuned head: most of its chunks are 1.0.0's
    tuned.write_bytes(retrain_head(onnx.load(more["1.0.0"][0]), seed=7).SerializeToString())
    desc = classifier_descriptor(num_classes=10, height=64, width=64, name="cls")
    desc = desc.model_copy(update={"version": "5.0.0"})
    pushed = [*(more[v] for v in ("3.0.0", "4.0.0")), (tuned, validate(tuned, desc).descriptor)]
    for path, d in pushed:
        assert w.hub.push_model(path, d.to_json()).status_code == 201
    blob = {v: w.hub.hub.registry.get("cls", v).manifest for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0")}
    shared = set(blob["1.0.0"]["chunks"]) & set(blob["5.0.0"]["chunks"])
    assert len(shared) > len(blob["5.0.0"]["chunks"]) // 2
    assert not set(blob["2.0.0"]["chunks"]) & set(blob["5.0.0"]["chunks"])
    bundle = w.enrol("cam-room")
    data = small_disk.path / "agent"
    agent = _spawn(w, bundle, data)
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):  # 1.0.0, then 2.0.0, become spare
        w.deploy("cam-room", version)
        w.wait_active("cam-room", version)
    blobs = data / "store" / "blobs"
    assert all((blobs / blob[v]["sha256"]).exists() for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"))
    size = blob["5.0.0"]["size"]
    small_disk.fill(leave=size // 2)  # deleting one spare blob (about as large as 5.0.0) makes room
    assert disks.free_bytes(small_disk.path) < size
    w.deploy("cam-room", "5.0.0")
    r = w.wait_active("cam-room", "5.0.0")
    assert (r.get("previous") or {}).get("version") == "4.0.0"
    assert not (blobs / blob["2.0.0"]["sha256"]).exists(), "the spare blob sharing no chunk with 5.0.0 is deleted"
    kept = ("1.0.0", "3.0.0", "4.0.0", "5.0.0")
    assert all((blobs / blob[v]["sha256"]).exists() for v in kept), "only as much as needed was deleted"
    log = agent.output()
    assert re.search(rf"blob {blob['5.0.0']['sha256'][:12]}: \d+ of \d+ chunks .* taken from the store",
                     log), log[-3000:]  # fmt: skip
    assert agent.stop() == 0
    record("fault", "disk too full for a new version: only the spare blobs needed deleted", "recovered")

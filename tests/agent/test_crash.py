"""The agent SIGKILLed mid-download and before activation: on restart it serves the old model, then completes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.store import ModelStore
from fleet.messages import ReportedState
from tests.agent.conftest import AgentFactory, Sample
from tests.support.agents import AgentProc
from tests.support.broker import Broker
from tests.support.hubside import HubSide, one

Spawn = Callable[..., AgentProc]


def _with_v1_active(
    hub: HubSide, broker: Broker, device_id: str, spawn: Spawn, samples: dict[str, Sample], tmp_path: Path
) -> tuple[Path, Path]:
    bundle = tmp_path / "bundle.json"
    hub.bundle(device_id, broker.url).save(bundle)
    data = tmp_path / "data"
    first = spawn(bundle, data)
    hub.publish_desired(
        device_id, hub.desired(device_id, 1, hub.model_ref(samples["v1"].path, samples["v1"].descriptor))
    )
    hub.wait_active("1.0.0")
    first.kill()
    will = hub.wait(lambda: next((s for s in hub.statuses if s.state == "offline"), None), what="last will")
    # the will carries the time of its connect, as the birth does: the hub orders the will after the birth
    births = [s for s in hub.statuses if s.state == "online" and s.session == will.session]
    assert births and births[-1].ts == will.ts
    return bundle, data


def _first_report_after(hub: HubSide, start: int, version: int) -> ReportedState:
    return hub.wait(lambda: next((r for r in hub.reported[start:] if r.desired_version == version), None))


def test_killed_mid_download_serves_old_model_then_resumes(
    broker: Broker, hub: HubSide, device_id: str, spawn_agent: Spawn, samples: dict[str, Sample], tmp_path: Path
) -> None:
    bundle, data = _with_v1_active(hub, broker, device_id, spawn_agent, samples, tmp_path)
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    persisted = -(-v2.blob.count // 2)
    hub.withhold = set(range(persisted, v2.blob.count))  # the link "breaks" half-way: the rest never comes
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    second = spawn_agent(bundle, data)  # sync_every=1 (the fixture): each verified chunk is durable when counted
    hub.wait(
        lambda: any((d := one(r).download) and d.sha256 == v2.blob.sha256 and d.have_chunks == persisted
                    for r in hub.reported),
        timeout=60, what="half the chunks verified and persisted",
    )  # fmt: skip
    second.kill()
    hub.withhold = set()
    pointer = ModelStore(data / "store").active("cls")
    assert pointer is not None and pointer.model.version == "1.0.0"

    start, wants_before = len(hub.reported), len(hub.wants)
    third = spawn_agent(bundle, data)
    first = _first_report_after(hub, start, 2)
    assert (active := one(first).active) is not None and active.version == "1.0.0", "the old model serves at once"
    done = hub.wait_active("2.0.0", timeout=60, since=start)
    assert (previous := one(done).previous) is not None and previous.version == "1.0.0"
    resumed = [w for w in hub.wants[wants_before:] if w.sha256 == v2.blob.sha256]
    assert resumed, "the restarted agent wanted the rest"
    assert min(i for w in resumed for i in w.indexes(v2.blob.count)) >= persisted, "persisted chunks not wanted"
    assert third.stop() == 0


def test_killed_mid_activation_serves_old_model_then_completes(
    broker: Broker, hub: HubSide, device_id: str, spawn_agent: Spawn, samples: dict[str, Sample], tmp_path: Path
) -> None:
    bundle, data = _with_v1_active(hub, broker, device_id, spawn_agent, samples, tmp_path)
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    lock = tmp_path / "update.lock"  # the application holds the update lock: v2 is fetched but not activated
    lock.touch()
    second = spawn_agent(bundle, data, EDGEFLEET_AGENT_ACTIVATION_UPDATE_LOCK_FILE=str(lock))
    held = hub.wait(lambda: next((r for r in hub.reported if r.desired_version == 2 and r.phase == "activating"), None))
    assert (active := one(held).active) is not None and active.version == "1.0.0"
    second.kill()  # killed while the verified v2 waits to be activated
    store = ModelStore(data / "store")
    pointer = store.active("cls")
    assert pointer is not None and pointer.model.version == "1.0.0", "a crash before the switch leaves the old pointer"
    assert store.has_blob(v2.blob.sha256, v2.blob.size)

    start, wants_before = len(hub.reported), len(hub.wants)
    third = spawn_agent(bundle, data)
    first = _first_report_after(hub, start, 2)
    assert (active := one(first).active) is not None and active.version == "1.0.0"
    done = hub.wait_active("2.0.0", timeout=60, since=start)
    assert (previous := one(done).previous) is not None and previous.version == "1.0.0"
    assert hub.wants[wants_before:] == [], "the verified blob is not fetched again"
    assert third.stop() == 0
    hub.wait(lambda: hub.statuses[-1].state == "offline", what="offline status after a clean stop")


def test_damaged_active_blob_falls_back_to_previous_then_is_fetched_again(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    agent, _ = make_agent(hub, device_id, broker.url, data_dir=data)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_active("1.0.0")
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    hub.wait_active("2.0.0")
    agent.stop()
    blob = ModelStore(data / "store").blob_path(v2.blob.sha256)
    blob.write_bytes(blob.read_bytes()[:1000])  # torn by a disk fault

    start, wants_before = len(hub.reported), len(hub.wants)
    _again, serving = make_agent(hub, device_id, broker.url, data_dir=data)
    first = hub.wait(lambda: next((r for r in hub.reported[start:]), None))
    assert (active := one(first).active) is not None and active.version == "1.0.0", (
        "previous serves when active is damaged"
    )
    assert (error := one(first).error) is not None and error.code == "invalid_model_file"
    done = hub.wait_active("2.0.0", since=start)
    assert (previous := one(done).previous) is not None and previous.version == "1.0.0"
    assert any(w.sha256 == v2.blob.sha256 for w in hub.wants[wants_before:]), "the damaged blob was fetched again"
    assert serving.active_model is not None and serving.active_model.version == "2.0.0"

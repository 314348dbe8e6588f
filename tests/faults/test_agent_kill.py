"""An agent SIGKILLed with a verified model waiting to be activated (its update lock held), seen from the real
hub: the device goes offline (its will), comes back still serving the old model with the new blob kept, and
completes the activation.
(tests/agent/test_crash.py covers the agent's side in detail against a hub stand-in.)"""

from __future__ import annotations

from agent.store import ModelStore
from hub.store import Device
from tests.faults.conftest import FaultWorld
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


def test_agent_killed_mid_activation_recovers_under_the_real_hub(fault_world: FaultWorld) -> None:
    w = fault_world
    bundle = w.enrol("cam-kill")
    data = w.tmp / "agent-kill"
    lock = w.tmp / "update.lock"

    def device() -> Device | None:
        return w.hub.hub.store.get_device("cam-kill")

    second = w.spawn(bundle, data)
    w.deploy("cam-kill", "1.0.0")
    w.wait_active("cam-kill", "1.0.0")
    assert second.stop() == 0
    lock.touch()  # the application holds the update lock: 2.0.0 is fetched and verified, not activated
    third = w.spawn(bundle, data, EDGEFLEET_AGENT_ACTIVATION_UPDATE_LOCK_FILE=str(lock))
    blobs = set((data / "store" / "blobs").iterdir())
    w.deploy("cam-kill", "2.0.0")
    wait_for(lambda: len(set((data / "store" / "blobs").iterdir()) - blobs) == 1, timeout=60)  # verified, stored
    third.kill()
    wait_for(lambda: (d := device()) is not None and d.status == "offline", timeout=30)  # its last will
    store = ModelStore(data / "store")
    active = store.active("cls")
    assert active is not None and active.model.version == "1.0.0", "the old pointer survives the crash"

    fourth = w.spawn(bundle, data)
    done = w.wait_active("cam-kill", "2.0.0")
    assert done["previous"]["version"] == "1.0.0"
    wait_for(lambda: (d := device()) is not None and d.status == "online")
    with w.hub.client() as c:
        assert c.get("/api/v1/devices/cam-kill").json()["state"] == "online"
    assert fourth.stop() == 0
    record("fault", "agent SIGKILL before activation (update lock)", "recovered")

"""Deploy, replace and roll back over a real Mosquitto with real files and real onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from agent.serving import NotReady
from agent.store import ModelStore
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide, one


def _image() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}


def test_deploy_replace_and_instant_rollback(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    r1 = hub.wait_active("1.0.0")
    m1 = one(r1)
    assert r1.desired_version == 1 and r1.error is None and m1.error is None and m1.active is not None
    assert m1.active.sha256 == v1.blob.sha256 and m1.active.provider == "CPUExecutionProvider"
    assert serving.active_model is not None and serving.active_model.version == "1.0.0"
    out_v1 = serving.infer(_image())["logits"]
    assert hub.wait_reported(lambda r: one(r).download is not None and r.phase == "downloading")

    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    r2 = hub.wait_active("2.0.0")
    assert (reported_previous := one(r2).previous) is not None and reported_previous.version == "1.0.0"
    assert not np.allclose(serving.infer(_image())["logits"], out_v1)
    store = ModelStore(agent.settings.data_dir / "store")
    active, previous = store.active("cls"), store.previous("cls")
    assert active is not None and active.model.version == "2.0.0" and active.desired_version == 2
    assert previous is not None and previous.model.version == "1.0.0"

    wants_before = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 3, v1))  # a rollback is a newly signed state
    r3 = hub.wait_reported(lambda r: r.desired_version == 3 and r.phase == "active")
    m3 = one(r3)
    assert m3.active is not None and m3.active.version == "1.0.0"
    assert m3.previous is not None and m3.previous.version == "2.0.0"
    assert len(hub.wants) == wants_before, "a rollback must not download"
    assert np.allclose(serving.infer(_image())["logits"], out_v1)


def test_desired_state_without_a_model_stops_serving_and_keeps_previous(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url, store={"gc_keep_bytes": 0})
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    hub.wait_active("1.0.0")
    hub.publish_desired(device_id, hub.desired(device_id, 2, None))
    r = hub.wait_reported(lambda r: r.desired_version == 2 and r.phase == "idle")
    m = one(r)
    assert m.active is None and m.previous is not None and m.previous.version == "1.0.0"
    assert serving.active_model is None
    with pytest.raises(NotReady):
        serving.infer(_image())
    assert agent.store.active("cls") is None and agent.store.has_blob(v1.blob.sha256), "kept as previous despite GC"
    wants = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 3, v1))
    hub.wait_reported(lambda r: r.desired_version == 3 and r.phase == "active")
    assert len(hub.wants) == wants and serving.active_model is not None

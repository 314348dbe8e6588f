"""Deploy, replace and roll back over a real Mosquitto with real files and real onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from agent.serving import NotReady
from agent.store import ModelStore
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide


def _image() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}


def test_deploy_replace_and_instant_rollback(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
    r1 = hub.wait_active("1.0.0")
    assert r1.desired_version == 1 and r1.error is None and r1.active is not None
    assert r1.active.sha256 == v1.blob.sha256 and r1.active.provider == "CPUExecutionProvider"
    assert serving.active_model is not None and serving.active_model.version == "1.0.0"
    out_v1 = serving.infer(_image())["logits"]
    assert hub.wait_reported(lambda r: r.download is not None and r.phase == "downloading")

    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
    r2 = hub.wait_active("2.0.0")
    assert r2.previous is not None and r2.previous.version == "1.0.0"
    assert not np.allclose(serving.infer(_image())["logits"], out_v1)
    store = ModelStore(agent.settings.data_dir / "store")
    active, previous = store.active(), store.previous()
    assert active is not None and active.model.version == "2.0.0" and active.desired_version == 2
    assert previous is not None and previous.model.version == "1.0.0"

    wants_before = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 3, v1))  # a rollback is a newly signed state
    r3 = hub.wait_reported(lambda r: r.desired_version == 3 and r.phase == "active")
    assert r3.active is not None and r3.active.version == "1.0.0"
    assert r3.previous is not None and r3.previous.version == "2.0.0"
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
    assert r.active is None and r.previous is not None and r.previous.version == "1.0.0"
    assert serving.active_model is None
    with pytest.raises(NotReady):
        serving.infer(_image())
    assert agent.store.active() is None and agent.store.has_blob(v1.blob.sha256), "kept as previous despite GC"
    wants = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 3, v1))
    hub.wait_reported(lambda r: r.desired_version == 3 and r.phase == "active")
    assert len(hub.wants) == wants and serving.active_model is not None

"""Shadow: the candidate is downloaded, checked and run beside the active model; telemetry carries agreement."""

from __future__ import annotations

import numpy as np

from fleet.messages import ShadowSpec, ShadowStats
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide, one


def test_shadow_candidate_runs_beside_the_active_model(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    agent, serving = make_agent(hub, device_id, broker.url, telemetry={"interval_s": 0.1})
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1, shadow=ShadowSpec(model=v2, sample_rate=1.0)))
    r = hub.wait_reported(lambda r: r.phase == "active" and one(r).shadow is not None)
    active, shadow = one(r).active, one(r).shadow
    assert active is not None and active.version == "1.0.0" and shadow is not None and shadow.version == "2.0.0"
    pointer = agent.store.shadow(v1.name)  # what cluster mode's serving pods follow
    assert pointer is not None and pointer.candidate.sha256 == v2.blob.sha256 and pointer.sample_rate == 1.0
    start = len(hub.telemetry)
    image = {"image": np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    for _ in range(4):
        serving.infer(image)

    def shadows() -> list[ShadowStats]:
        return [m.shadow for w in hub.telemetry[start:] for m in w.models if m.shadow]

    hub.wait(lambda: sum(s.samples for s in shadows()) >= 4, what="shadow stats")
    stats = [s for s in shadows() if s.samples]
    assert all(s.candidate_version == "2.0.0" and 0 <= s.agreements <= s.samples for s in stats)
    assert all(s.latency_delta_ms is not None for s in stats)

    # the same candidate on a smaller share of requests: the new rate takes effect (and reaches the pointer)
    hub.publish_desired(device_id, hub.desired(device_id, 2, v1, shadow=ShadowSpec(model=v2, sample_rate=0.25)))
    r = hub.wait_reported(lambda r: r.desired_version == 2 and r.phase == "active")
    shadow = one(r).shadow
    assert shadow is not None and shadow.version == "2.0.0"
    pointer = agent.store.shadow(v1.name)
    assert pointer is not None and pointer.sample_rate == 0.25

    hub.publish_desired(device_id, hub.desired(device_id, 3, v1))
    r = hub.wait_reported(lambda r: r.desired_version == 3 and r.phase == "active")
    assert one(r).shadow is None and serving.shadow_model is None
    assert agent.store.shadow(v1.name) is None

    # a pointer an earlier run left behind (written, then the agent stopped) goes with the next desired state
    agent.store.set_shadow(pointer)
    hub.publish_desired(device_id, hub.desired(device_id, 4, v1))
    hub.wait_reported(lambda r: r.desired_version == 4 and r.phase == "active")
    assert agent.store.shadow(v1.name) is None


def test_shadow_failing_its_golden_check_keeps_the_active_model(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    _agent, serving = make_agent(hub, device_id, broker.url)
    v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
    bad = hub.model_ref(samples["bad"].path, samples["bad"].descriptor)
    hub.publish_desired(device_id, hub.desired(device_id, 1, v1, shadow=ShadowSpec(model=bad, sample_rate=0.5)))
    r = hub.wait_reported(lambda r: r.phase == "active" and one(r).error is not None)
    error = one(r).error
    assert error is not None and error.code == "shadow_golden_mismatch" and one(r).shadow is None
    assert (active := one(r).active) is not None and active.version == "1.0.0" and serving.shadow_model is None

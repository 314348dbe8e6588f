"""A desired state from a hub newer than this agent, over a real Mosquitto with real onnxruntime: a model slot
with a field or a value this agent does not know refuses that model only (reported `unsupported_model`, its
version serving stays); every other model is applied. A device-level field it cannot read still refuses the
whole state. Before, one such slot made the agent refuse every desired state, so none of its models updated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.headless import HeadlessServing
from fleet.messages import DesiredModel, DesiredState, ModelStatus, Phase, ReportedState
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide
from tests.support.wire import future_envelope

IMAGE = {"image": np.zeros((1, 3, 64, 64), dtype=np.float32)}
FRAME = {"images": np.zeros((1, 3, 64, 64), dtype=np.float32)}


def _slot(hub: HubSide, sample: Sample) -> DesiredModel:
    return DesiredModel(model=hub.model_ref(sample.path, sample.descriptor))


def _future(state: DesiredState, name: str, **changes: Any) -> dict[str, Any]:
    """`state` as JSON with `changes` to model `name`'s slot (`part__field`: a field of a part of it)."""
    body = state.model_dump(mode="json")
    slot = next(s for s in body["models"] if s["model"]["name"] == name)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        at = slot
        for p in parents:
            at = at[p]
        at[leaf] = value
    return body


def _model(r: ReportedState, name: str) -> ModelStatus:
    m = r.model(name)
    assert m is not None, f"{name} not reported: {r}"
    return m


@pytest.fixture
def two_models(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample],
    detector: Sample,
) -> HeadlessServing:  # fmt: skip
    """An agent serving `cls` 1.0.0 and `det` 1.0.0 (desired version 1)."""
    _agent, serving = make_agent(hub, device_id, broker.url)
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[_slot(hub, samples["v1"]),
                                                                         _slot(hub, detector)]))  # fmt: skip
    hub.wait_reported(lambda r: r.desired_version == 1 and r.phase == "active" and len(r.models) == 2)
    return serving


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"model__task": "segmentation"}, "model.task: Input should be"),
        ({"runtime__pinned_cores": [0, 1]}, "runtime.pinned_cores: Extra inputs are not permitted"),
    ],
    ids=["unknown-task", "unknown-runtime-field"],
)
def test_a_slot_of_a_newer_hub_refuses_that_model_and_the_others_update(
    hub: HubSide, device_id: str, two_models: HeadlessServing, samples: dict[str, Sample], detector: Sample,
    changes: dict[str, Any], reason: str,
) -> None:  # fmt: skip
    serving = two_models
    state = hub.desired(device_id, 2, None, others=[_slot(hub, samples["v2"]), _slot(hub, detector)])
    hub.publish_desired(device_id, future_envelope(hub.key, _future(state, "det", **changes)))

    r = hub.wait_active("2.0.0", model="cls")
    assert r.desired_version == 2 and r.error is None, r.error
    det = _model(r, "det")
    assert det.phase == Phase.FAILED and det.error is not None and det.error.code == "unsupported_model"
    assert reason in det.error.message and "upgrade the agent" in det.error.message and det.error.permanent
    assert det.active is not None and det.active.version == "1.0.0", "the detector's version serving stays"
    assert [m.name for m in r.models] == ["cls", "det"]
    assert serving.infer(IMAGE, "cls")["logits"].shape == (1, 10)
    assert set(serving.infer(FRAME, "det")), "the detector still answers"
    assert _model(r, "cls").error is None

    # the hub sends the detector the way this agent reads it: the refusal is over, nothing was lost
    start = len(hub.reported)
    hub.publish_desired(device_id, hub.desired(device_id, 3, None, others=[_slot(hub, samples["v2"]),
                                                                         _slot(hub, detector)]))  # fmt: skip
    r = hub.wait_active("1.0.0", model="det", since=start)
    assert r.desired_version == 3 and _model(r, "det").error is None
    assert (cls := _model(r, "cls")).active is not None and cls.active.version == "2.0.0"


def test_a_new_model_the_agent_cannot_read_is_reported_and_kept_across_a_restart(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample],
    detector: Sample, tmp_path: Path,
) -> None:  # fmt: skip
    data_dir = tmp_path / "agent"
    agent, _serving = make_agent(hub, device_id, broker.url, data_dir=data_dir)
    state = hub.desired(device_id, 1, None, others=[_slot(hub, samples["v1"]), _slot(hub, detector)])
    body = _future(state, "det", model__task="segmentation", model__name="seg")  # a model never served here
    hub.publish_desired(device_id, future_envelope(hub.key, body))
    r = hub.wait_active("1.0.0", model="cls")
    seg = _model(r, "seg")
    assert seg.phase == Phase.FAILED and seg.active is None and seg.error is not None
    assert seg.error.code == "unsupported_model" and "model 'seg'" in seg.error.message

    agent.stop()  # the accepted state (with its unread slot) is read again from state.json at the next start
    start = len(hub.reported)
    _agent, serving = make_agent(hub, device_id, broker.url, data_dir=data_dir)
    r = hub.wait_active("1.0.0", model="cls", since=start)
    assert r.desired_version == 1 and r.error is None
    seg = _model(r, "seg")
    assert seg.error is not None and seg.error.code == "unsupported_model" and seg.active is None
    assert serving.infer(IMAGE, "cls")["logits"].shape == (1, 10)


@pytest.mark.parametrize(
    "field", [{"priority": "high"}, {"expires_at": "soon"}], ids=["unknown-device-field", "ill-formed-device-field"]
)
def test_a_device_level_field_the_agent_cannot_read_refuses_the_whole_state(
    hub: HubSide, device_id: str, two_models: HeadlessServing, samples: dict[str, Sample], detector: Sample,
    field: dict[str, Any],
) -> None:  # fmt: skip
    state = hub.desired(device_id, 2, None, others=[_slot(hub, samples["v2"]), _slot(hub, detector)])
    hub.publish_desired(device_id, future_envelope(hub.key, {**state.model_dump(mode="json"), **field}))
    r = hub.wait_reported(lambda r: r.error is not None, what="refusal")
    assert r.error is not None and r.error.code == "malformed_envelope" and next(iter(field)) in r.error.message
    assert r.desired_version == 1 and r.phase == "active"
    assert [(m.name, m.active.version if m.active else None, m.error) for m in r.models] == [
        ("cls", "1.0.0", None), ("det", "1.0.0", None),
    ]  # fmt: skip
    assert two_models.infer(IMAGE, "cls")["logits"].shape == (1, 10)

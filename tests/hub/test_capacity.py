"""The hub refuses cluster-mode runtime options a device's advertised K3s nodes cannot run (hub/capacity.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.messages import LEGACY_TASKS, TASKS, Autoscaling, Capabilities, NodeInfo, RuntimeOptions
from hub.capacity import advertised, check_runtime, check_task, needs_cluster, problem
from hub.errors import Unplaceable
from hub.store import Device


def device(name: str, *nodes: NodeInfo, mode: str = "k3s", caps: bool = True) -> Device:
    capabilities = Capabilities(
        agent_version="0.1.0", onnxruntime_version="1.32", providers=["CPUExecutionProvider"], cpu_count=4,
        memory_bytes=8 << 30, mode=mode, nodes=list(nodes),
    )  # fmt: skip
    return Device(
        id=name, labels={}, password_hash="x", enrolled_at=0.0, enrolled_by="test",
        capabilities=capabilities if caps else None,
    )  # fmt: skip


def mig(name: str, profile: str, count: int, ready: bool = True) -> NodeInfo:
    return NodeInfo(name=name, ready=ready, allocatable={f"nvidia.com/mig-{profile}": str(count), "cpu": "8"})


def gpus(name: str, count: int, ready: bool = True) -> NodeInfo:
    return NodeInfo(name=name, ready=ready, allocatable={"nvidia.com/gpu": str(count), "cpu": "8"})


def rt(**fields: Any) -> RuntimeOptions:
    return RuntimeOptions(**fields)


def test_the_message_of_the_issue() -> None:
    cam = device("cam-3", mig("a100", "2g.20gb", 3))
    assert problem(cam, rt(mig_profile="1g.10gb")) == "cam-3 has no MIG slices of 1g.10gb; it advertises 2g.20gb x3"


@pytest.mark.parametrize(
    ("runtime", "nodes", "expected"),
    [
        (rt(mig_profile="2g.20gb", replicas=3), [mig("a", "2g.20gb", 3)], None),
        (rt(mig_profile="2g.20gb", replicas=4), [mig("a", "2g.20gb", 3)],
         "cam fits 3 serving pod(s) of 1 MIG slice of 2g.20gb on its ready nodes; 4 asked"),
        (rt(mig_profile="2g.20gb", replicas=4), [mig("a", "2g.20gb", 3), mig("b", "2g.20gb", 1)], None),
        (rt(mig_profile="2g.20gb"), [mig("a", "2g.20gb", 3, ready=False)], "cam reports no ready K3s node"),
        (rt(gpus=1, replicas=2), [gpus("a", 1), gpus("b", 1)], None),
        (rt(gpus=2), [gpus("a", 1), gpus("b", 1)],
         "cam has at most 1 x nvidia.com/gpu on one node; a serving pod asks for 2"),
        (rt(gpus=1), [mig("a", "1g.10gb", 7)], "cam has no GPUs (nvidia.com/gpu); it advertises 1g.10gb x7"),
        (rt(mig_profile="1g.10gb"), [gpus("a", 2)], "cam has no MIG slices of 1g.10gb; it advertises 2 GPUs"),
        (rt(gpus=1), [NodeInfo(name="cpu", ready=True)],
         "cam has no GPUs (nvidia.com/gpu); it advertises no GPUs and no MIG slices"),
        (rt(replicas=5), [NodeInfo(name="cpu", ready=True)], None),  # CPU pods: the scheduler's business
        (rt(gpus=1, autoscaling=Autoscaling(min_replicas=2, max_replicas=8)), [gpus("a", 1)],
         "cam fits 1 serving pod(s) of 1 GPU on its ready nodes; autoscaling needs at least 2"),
        (rt(gpus=1, autoscaling=Autoscaling(max_replicas=8)), [gpus("a", 1)], None),  # the HPA stops at what fits
    ],
)  # fmt: skip
def test_placement(runtime: RuntimeOptions, nodes: list[NodeInfo], expected: str | None) -> None:
    assert problem(device("cam", *nodes), runtime) == expected


def test_single_device_mode_and_unknown_inventory_are_refused_for_cluster_options() -> None:
    single = device("cam-1", mode="single")
    assert problem(single, rt(replicas=2)) == "cam-1 runs in single-device mode: 2 replicas needs cluster mode (K3s)"
    fresh = device("cam-2", caps=False)
    assert problem(fresh, rt(mig_profile="1g.10gb", autoscaling=Autoscaling(max_replicas=3))) == (
        "cam-2 has not reported its inventory yet (no birth message): cannot place a MIG slice of 1g.10gb "
        "and autoscaling 1-3 pods"
    )
    check_runtime([single, fresh], rt(providers=["CUDAExecutionProvider"]))  # not a cluster option: no check
    check_runtime([single], None)


def test_one_refusal_names_every_device_up_to_a_limit() -> None:
    devices = [device(f"cam-{i}", mig("a", "2g.20gb", 3)) for i in range(8)] + [device("ok", mig("a", "1g.10gb", 7))]
    with pytest.raises(Unplaceable) as info:
        check_runtime(devices, rt(mig_profile="1g.10gb"))
    assert info.value.status == 422 and info.value.code == "insufficient_capacity"
    assert info.value.message.count("has no MIG slices of 1g.10gb") == 5
    assert info.value.message.endswith("and 3 more device(s)")
    assert "ok " not in info.value.message


def test_needs_cluster_and_advertised() -> None:
    assert not needs_cluster(rt()) and not needs_cluster(rt(providers=["CUDAExecutionProvider"]))
    assert needs_cluster(rt(replicas=0)) and needs_cluster(rt(gpus=1)) and needs_cluster(rt(mig_profile="1g.10gb"))
    assert advertised([gpus("a", 1), gpus("b", 1), mig("c", "3g.40gb", 2)]) == "2 GPUs, 3g.40gb x2"


def test_the_other_models_pods_hold_their_share_of_the_device() -> None:
    cam = device("cam", mig("a", "2g.20gb", 3), gpus("b", 1))
    detector = rt(mig_profile="2g.20gb", replicas=2)  # a model already placed on two of the three slices
    assert problem(cam, rt(mig_profile="2g.20gb"), [detector]) is None
    assert problem(cam, rt(mig_profile="2g.20gb", replicas=2), [detector]) == (
        "cam fits 1 serving pod(s) of 1 MIG slice of 2g.20gb on its ready nodes beside its other models' pods "
        "(2 x nvidia.com/mig-2g.20gb taken); 2 asked"
    )
    assert problem(cam, rt(gpus=1), [detector]) is None, "another resource: not taken by the detector"
    with pytest.raises(Unplaceable, match="beside its other models"):
        check_runtime([cam], rt(mig_profile="2g.20gb", replicas=2), {"cam": [detector]})
    check_runtime([cam], rt(mig_profile="2g.20gb", replicas=2), {"other": [detector]})


def test_a_task_an_agent_does_not_serve_is_refused_naming_the_devices_and_agents() -> None:
    old = device("cam-old", mode="single")  # a birth without `tasks`: an agent from before kind `tensors`
    assert old.capabilities is not None and "tasks" not in old.capabilities.model_dump(exclude_unset=True)
    new = Device(
        id="cam-new", labels={}, password_hash="x", enrolled_at=0.0, enrolled_by="test",
        capabilities=old.capabilities.model_copy(update={"agent_version": "0.2.0", "tasks": list(TASKS)}),
    )  # fmt: skip
    fresh = device("cam-fresh", caps=False)  # no birth yet: its agent is unknown, not refused
    for task in LEGACY_TASKS:
        check_task([old, new, fresh], task)
    check_task([new, fresh], "tensors")
    with pytest.raises(Unplaceable) as info:
        check_task([old, new, fresh], "tensors")
    assert info.value.status == 422 and info.value.code == "unsupported_task"
    assert info.value.devices == ["cam-old"]
    assert "cam-old (agent 0.1.0 serves classification, detection)" in info.value.message
    assert "would refuse the device's whole desired state" in info.value.message and "cam-new" not in info.value.message


def test_an_unsupported_task_refusal_names_every_device_up_to_a_limit() -> None:
    devices = [device(f"cam-{i}", mode="single") for i in range(7)]
    with pytest.raises(Unplaceable) as info:
        check_task(devices, "tensors")
    assert info.value.devices == [f"cam-{i}" for i in range(7)]
    assert info.value.message.count("(agent 0.1.0 serves") == 5 and info.value.message.endswith("and 2 more device(s)")

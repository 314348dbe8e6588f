"""Whether devices can run what a deployment asks: GPUs, MIG slices, replicas and autoscaling bounds.

Cluster-mode runtime options (`RuntimeOptions.gpus`, `mig_profile`, `replicas`, `autoscaling`) become pod
resource requests on the device's K3s cluster. A request no node can satisfy would leave the serving pods
Pending there, so the hub checks every targeted device's advertised inventory (the K3s nodes in its last
birth message) before it signs anything, and refuses with the reason, e.g. "cam-3 has no MIG slices of 1g.10gb;
it advertises 2g.20gb x3". Pure functions over stored devices: the deployer and the rollout engine call them,
so the REST API and the CLI refuse alike.

The same goes for a model's task: an agent refuses a whole desired state holding a task it does not know
(`task` is a closed enum on the wire), which would stop every model of the device from updating. So the hub
refuses to deploy a task (e.g. `tensors`) to a device whose agent's birth does not list it (`check_task`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from fleet.messages import Capabilities, NodeInfo, RuntimeOptions
from hub.errors import Unplaceable
from hub.store import Device

GPU = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
MAX_LISTED = 5  # devices named in one refusal; the rest are counted


@dataclass(frozen=True)
class PodRequest:
    """What one serving pod asks for beyond CPU and memory: `count` of extended resource `resource`."""

    resource: str | None
    count: int

    @property
    def label(self) -> str:
        """For people: `1 GPU`, `2 MIG slices of 1g.10gb`."""
        if self.resource is None:
            return "no accelerator"
        if self.resource == GPU:
            return f"{self.count} GPU" + ("s" if self.count > 1 else "")
        return f"{self.count} MIG slice{'s' if self.count > 1 else ''} of {self.resource.removeprefix(MIG_PREFIX)}"


def pod_request(runtime: RuntimeOptions) -> PodRequest:
    """The accelerator one serving pod requests (as `agent.k3s.render` renders it)."""
    if runtime.mig_profile is not None:
        return PodRequest(MIG_PREFIX + runtime.mig_profile, max(runtime.gpus, 1))
    if runtime.gpus > 0:
        return PodRequest(GPU, runtime.gpus)
    return PodRequest(None, 0)


def needs_cluster(runtime: RuntimeOptions) -> bool:
    """True when `runtime` asks for anything only cluster mode does (GPUs, MIG, replicas other than 1, HPA)."""
    return (
        runtime.gpus > 0 or runtime.mig_profile is not None or runtime.replicas != 1 or runtime.autoscaling is not None
    )


def check_runtime(
    devices: Iterable[Device],
    runtime: RuntimeOptions | None,
    others: Mapping[str, Sequence[RuntimeOptions]] | None = None,
) -> None:
    """Refuse `runtime` unless every device in `devices` can run it beside its other models' pods.

    Args:
        others: device id -> the runtime options of the device's other models (their pods take their
            GPUs and MIG slices first: each model runs in pods of its own).

    Raises:
        Unplaceable: with one line per device that cannot (at most `MAX_LISTED`, then a count).
    """
    if runtime is None or not needs_cluster(runtime):
        return
    taken = others or {}
    problems = [p for d in devices if (p := problem(d, runtime, taken.get(d.id, ()))) is not None]
    if not problems:
        return
    text = "; ".join(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        text += f"; and {len(problems) - MAX_LISTED} more device(s)"
    raise Unplaceable(text)


def check_task(devices: Iterable[Device], task: str) -> None:
    """Refuse model task `task` unless the agent of every device in `devices` serves it.

    A device whose birth has no `tasks` runs an agent from before that field: it serves `LEGACY_TASKS`. A device
    that never sent a birth is not refused (its agent's version is unknown; it is checked at the next deploy).

    Raises:
        Unplaceable: code `unsupported_task`, naming the devices (at most `MAX_LISTED`, then a count; all of
            them in `devices`) and their agent versions.
    """
    old = [(d.id, caps) for d in devices
           if (caps := _capabilities(d)) is not None and task not in caps.served_tasks()]  # fmt: skip
    if not old:
        return
    listed = "; ".join(
        f"{name} (agent {caps.agent_version} serves {', '.join(caps.served_tasks())})"
        for name, caps in old[:MAX_LISTED]
    )
    if len(old) > MAX_LISTED:
        listed += f"; and {len(old) - MAX_LISTED} more device(s)"
    raise Unplaceable(
        f"task {task!r} needs an agent that serves it, one that lists it in its birth's capabilities (the agent "
        f"of this hub's version or newer); an older agent would refuse the device's whole desired state, all its "
        f"models. Upgrade the agents of: {listed}",
        code="unsupported_task",
        devices=[name for name, _ in old],
    )


def _pods(runtime: RuntimeOptions) -> int:
    return runtime.autoscaling.min_replicas if runtime.autoscaling is not None else runtime.replicas


def problem(device: Device, runtime: RuntimeOptions, others: Sequence[RuntimeOptions] = ()) -> str | None:
    """Why `device` cannot run `runtime` (None: it can) beside the pods of its other models (`others`), from the
    inventory of its last birth message."""
    caps = _capabilities(device)
    name = device.id
    if caps is None:
        return f"{name} has not reported its inventory yet (no birth message): cannot place {_asked(runtime)}"
    if caps.mode != "k3s":
        return f"{name} runs in single-device mode: {_asked(runtime)} needs cluster mode (K3s)"
    ready = [n for n in caps.nodes if n.ready]
    if not ready:
        return f"{name} reports no ready K3s node"
    request = pod_request(runtime)
    pods = _pods(runtime)
    if request.resource is None:
        return None
    per_node = {n.name: _count(n, request.resource) for n in ready}
    if not any(per_node.values()):
        return f"{name} has no {_noun(request.resource)}; it advertises {advertised(ready)}"
    fits = sum(count // request.count for count in per_node.values())
    if fits == 0:
        most = max(per_node.values())
        return f"{name} has at most {most} x {request.resource} on one node; a serving pod asks for {request.count}"
    used = sum(r.count * _pods(o) for o in others if (r := pod_request(o)).resource == request.resource)
    if used:  # the other models' pods hold their share of the same resource
        fits = min(fits, (sum(per_node.values()) - used) // request.count)
    if fits < pods:
        asked = f"autoscaling needs at least {pods}" if runtime.autoscaling is not None else f"{pods} asked"
        beside = f" beside its other models' pods ({used} x {request.resource} taken)" if used else ""
        return f"{name} fits {max(fits, 0)} serving pod(s) of {request.label} on its ready nodes{beside}; {asked}"
    return None


def advertised(nodes: list[NodeInfo]) -> str:
    """The accelerators of `nodes` for people: `2g.20gb x3`, `2 GPUs, 1g.10gb x7`, or `no GPUs and no MIG slices`."""
    totals: dict[str, int] = {}
    for node in nodes:
        for key in node.allocatable:
            if key == GPU or key.startswith(MIG_PREFIX):
                totals[key] = totals.get(key, 0) + _count(node, key)
    gpus = totals.pop(GPU, 0)
    parts = [f"{gpus} GPU{'s' if gpus > 1 else ''}"] if gpus else []
    parts += [f"{k.removeprefix(MIG_PREFIX)} x{v}" for k, v in sorted(totals.items()) if v]
    return ", ".join(parts) if parts else "no GPUs and no MIG slices"


def _noun(resource: str) -> str:
    return "GPUs (nvidia.com/gpu)" if resource == GPU else f"MIG slices of {resource.removeprefix(MIG_PREFIX)}"


def _count(node: NodeInfo, resource: str) -> int:
    value = node.allocatable.get(resource, "0")
    return int(value) if value.isdigit() else 0


def _asked(runtime: RuntimeOptions) -> str:
    parts = []
    if runtime.mig_profile is not None:
        parts.append(f"a MIG slice of {runtime.mig_profile}")
    elif runtime.gpus:
        parts.append(f"{runtime.gpus} GPU(s) per pod")
    if runtime.autoscaling is not None:
        parts.append(f"autoscaling {runtime.autoscaling.min_replicas}-{runtime.autoscaling.max_replicas} pods")
    elif runtime.replicas != 1:
        parts.append(f"{runtime.replicas} replicas")
    return " and ".join(parts)


def _capabilities(device: Device) -> Capabilities | None:
    if not device.capabilities:
        return None
    try:
        return Capabilities.model_validate(device.capabilities)
    except ValidationError:  # stored by an older agent: treat as unknown rather than guess
        return None

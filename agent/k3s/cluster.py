"""Cluster mode on one event loop: node inventory, server-side apply of the workload, and the rollout watch.

Every coroutine here bounds itself: calls are retried `retry_attempts` times, the rollout watch ends at our
own deadline (lightkube's watch would reconnect forever), and every failure becomes an `ApiCallError` or a
`ClusterWorkload` in state `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Service
from lightkube.types import PatchType

from agent.errors import AgentError
from agent.k3s.connection import retry_delay, translate, with_retries
from agent.k3s.errors import ApiCallError, ClusterError
from agent.k3s.inventory import node_info
from agent.k3s.render import render_workload, workload_name
from agent.k3s.settings import ClusterSettings
from agent.ports import ClusterCheck, WorkloadNow
from fleet.messages import ClusterWorkload, DesiredState, NodeInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_NODES = 1024  # what a birth message carries (fleet.messages.Capabilities.nodes)
MAX_MESSAGE = 2000  # reported messages are at most 2048 characters on the wire
KINDS: dict[str, Any] = {
    "ConfigMap": ConfigMap,
    "Service": Service,
    "Deployment": Deployment,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
}
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments.apps",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers.autoscaling",
}


class Cluster:
    """The async operations of cluster mode over one lightkube client (see `ClusterBridge` for the blocking API)."""

    def __init__(self, client: AsyncClient, settings: ClusterSettings) -> None:
        self.client = client
        self.settings = settings

    async def inventory(self) -> list[NodeInfo]:
        """Every node with readiness, allocatable GPU/MIG resources and GPU product, sorted by name."""
        nodes, _ = await self._list_nodes()
        return nodes

    async def _list_nodes(self) -> tuple[list[NodeInfo], str | None]:
        async def call() -> tuple[list[NodeInfo], str | None]:
            listing = self.client.list(Node)
            found = [node_info(n) async for n in listing]
            try:
                version: str | None = listing.resourceVersion
            except Exception:  # no items: lightkube cannot tell the version
                version = None
            if len(found) > MAX_NODES:
                log.warning("%d nodes: the inventory reports the first %d by name", len(found), MAX_NODES)
            return sorted(found, key=lambda n: n.name)[:MAX_NODES], version

        return await with_retries(self.settings, "list nodes", call)

    async def watch_inventory(self, on_change: Callable[[list[NodeInfo]], None]) -> None:
        """Call `on_change` with the whole inventory whenever it changes, until cancelled. Never raises.

        Lists the nodes, then watches from the list's resourceVersion; any error re-lists after a backoff (or
        the server's Retry-After).
        """
        last: list[NodeInfo] | None = None
        failures = 0
        while True:
            try:
                nodes, version = await self._list_nodes()
                by_name = {n.name: n for n in nodes}
                if nodes != last:
                    last = nodes
                    _notify(on_change, nodes)
                failures = 0
                async for kind, obj in self.client.watch(
                    Node, resource_version=version, server_timeout=self.settings.watch_timeout_s
                ):
                    info = node_info(obj)
                    if kind == "DELETED":
                        by_name.pop(info.name, None)
                    else:
                        by_name[info.name] = info
                    current = sorted(by_name.values(), key=lambda n: n.name)[:MAX_NODES]
                    if current != last:
                        last = current
                        _notify(on_change, current)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = translate(e, "watch nodes")
                delay, asked = retry_delay(self.settings, error, min(failures, 8))
                failures += 1
                log.warning("node inventory watch: %s; re-listing in %.2fs%s", error, delay, asked)
                await asyncio.sleep(delay)

    async def apply(self, desired: DesiredState, model: str) -> ClusterWorkload:
        """Server-side apply model `model`'s workload of `desired`, then wait until its rollout is ready or our
        deadline.

        Raises:
            WorkloadError: the desired state cannot be rendered (nothing was applied).
            ApiCallError: an apply call failed (permanent at once, temporary after the retries).
        """
        workload = render_workload(desired, model, self.settings)
        deadline = time.monotonic() + self.settings.rollout_deadline_s
        deployment: Any = None
        if workload.autoscaler is None:  # fixed replicas: an HPA we applied before would fight them
            await self._delete("HorizontalPodAutoscaler", workload_name(self.settings.workload_name, model))
        for obj in workload.objects():
            applied = await self._apply_one(obj)
            if obj["kind"] == "Deployment":
                deployment = applied
        result = await self.wait_rollout(deployment, deadline)
        return await self._with_pod_problems(result, workload.deployment["spec"]["selector"]["matchLabels"])

    async def _with_pod_problems(self, rollout: ClusterWorkload, selector: dict[str, str]) -> ClusterWorkload:
        """`rollout`, when not ready, with why its pods are not (a crash loop and how the container last ended,
        unschedulable): the most specific reason there is, after an apply and at every check alike."""
        if rollout.state == "ready":
            return rollout
        why = await self.pod_problems(selector)
        if not why:
            return rollout
        message = f"{rollout.message}; pods: {why}" if rollout.message else f"pods: {why}"
        return ClusterWorkload.model_validate({**rollout.model_dump(), "message": _short(message)})

    async def remove(self, model: str) -> None:
        """Delete model `model`'s workload (HPA, Deployment, Service, ConfigMap); absent objects are fine.

        Raises:
            ApiCallError: a delete call failed (permanent at once, temporary after the retries).
        """
        name = workload_name(self.settings.workload_name, model)
        for kind in ("HorizontalPodAutoscaler", "Deployment", "Service", "ConfigMap"):
            await self._delete(kind, name)

    async def workload(self, desired: DesiredState, model: str) -> WorkloadNow:
        """Model `model`'s workload of `desired` as the cluster has it now: one read of each object `apply`
        applies (ConfigMap, Deployment, Service and the HPA when it autoscales), so a deleted one is noticed.

        Raises:
            WorkloadError: the desired state cannot be rendered.
            ApiCallError: an object could not be read (permanent at once, temporary after the retries).
        """
        rollout = None
        missing: list[str] = []
        workload = render_workload(desired, model, self.settings)
        for obj in workload.objects():
            kind, meta = obj["kind"], obj["metadata"]
            found = await self._read(kind, meta["name"])
            if found is None:
                missing.append(f"{kind} {meta['namespace']}/{meta['name']}")
            elif kind == "Deployment":
                rollout = summarize(found, self.settings.namespace)
        if rollout is not None:
            rollout = await self._with_pod_problems(rollout, workload.deployment["spec"]["selector"]["matchLabels"])
        return WorkloadNow(rollout, tuple(missing))

    async def check(
        self, desired: DesiredState, read: Sequence[str], apply: Sequence[str], remove: Sequence[str]
    ) -> ClusterCheck:
        """One periodic round (see `agent.ports.ClusterPort.check`): each model's failure is kept as its result.
        Never raises but CancelledError."""
        found = ClusterCheck(desired.version)
        for name in read:
            found.workloads[name] = await _outcome(self.workload(desired, name))
        for name in apply:
            found.applied[name] = await _outcome(self.apply(desired, name))
        for name in remove:
            outcome = await _outcome(self.remove(name))
            found.removed[name] = outcome if isinstance(outcome, AgentError) else None
        return found

    async def pod_problems(self, selector: dict[str, str]) -> str | None:
        """Why the workload's pods are not ready (unschedulable, image pull, crash loop), or None.

        Best effort: None too when the pods cannot be listed.
        """
        labels: dict[str, Any] = dict(selector)
        try:
            pods = [p async for p in self.client.list(Pod, namespace=self.settings.namespace, labels=labels)]
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("cannot list the serving pods: %s", translate(e, "list pods"))
            return None
        reasons: dict[str, int] = {}
        for pod in pods:
            reason = pod_reason(pod)
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
        if not reasons:
            return None
        return "; ".join(f"{count}x {reason}" for reason, count in sorted(reasons.items(), key=lambda r: -r[1])[:3])

    async def _apply_one(self, obj: dict[str, Any]) -> Any:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        namespace = obj["metadata"]["namespace"]
        what = f"apply {PLURALS[kind]} {namespace}/{name}"
        await self._exists(kind, name)  # refuses an object of that name someone else made

        async def call() -> Any:
            return await self.client.patch(
                KINDS[kind],
                name,
                obj,
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager=self.settings.field_manager,
                force=self.settings.force_conflicts,
            )

        return await with_retries(self.settings, what, call)

    async def _exists(self, kind: str, name: str) -> bool:
        """Whether object `name` of `kind` exists in our namespace (and was applied by us).

        Raises:
            ApiCallError: code `not_ours` when an object of that name exists that no apply of our field manager
                made (created by hand, by kubectl, by another tool): it is not ours to overwrite or delete.
        """
        namespace = self.settings.namespace
        found = await self._read(kind, name)
        if found is None:
            return False
        entries = (found.metadata.managedFields if found.metadata is not None else None) or []
        me = self.settings.field_manager
        if any(e.manager == me and e.operation == "Apply" for e in entries):
            return True
        managers = ", ".join(sorted({str(e.manager) for e in entries})) or "none recorded"
        raise ApiCallError(
            f"{kind} {namespace}/{name} exists but was not applied by {me} (its field managers: {managers}): "
            f"not ours to overwrite or delete; delete or rename it, or set EDGEFLEET_K3S_WORKLOAD_NAME to another "
            f"prefix",
            code="not_ours",
            permanent=True,
            status=409,
        )

    async def _read(self, kind: str, name: str) -> Any:
        """Object `name` of `kind` in our namespace, or None when there is none."""
        namespace = self.settings.namespace

        async def call() -> Any:
            try:
                return await self.client.get(KINDS[kind], name, namespace=namespace)
            except ApiError as e:
                if e.status.code != 404:
                    raise
                return None

        return await with_retries(self.settings, f"get {PLURALS[kind]} {namespace}/{name}", call)

    async def _delete(self, kind: str, name: str) -> None:
        """Delete one object of ours if it exists (none: nothing to do; one not ours: refused)."""
        namespace = self.settings.namespace
        if not await self._exists(kind, name):
            return

        async def call() -> None:
            try:
                await self.client.delete(KINDS[kind], name, namespace=namespace)
            except ApiError as e:
                if e.status.code != 404:
                    raise
                return
            log.info("deleted %s %s/%s", kind, namespace, name)

        await with_retries(self.settings, f"delete {PLURALS[kind]} {namespace}/{name}", call)

    async def wait_rollout(self, deployment: Any, deadline: float) -> ClusterWorkload:
        """Watch `deployment` (as the apply returned it) until its rollout completes, fails or `deadline` passes."""
        current = summarize(deployment, self.settings.namespace)
        if current.state in ("ready", "failed"):
            return current
        name = deployment.metadata.name
        version: str | None = deployment.metadata.resourceVersion
        failures = 0
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                while True:
                    try:
                        async for kind, obj in self.client.watch(
                            Deployment,
                            namespace=self.settings.namespace,
                            fields={"metadata.name": name},
                            resource_version=version,
                            server_timeout=self.settings.watch_timeout_s,
                        ):
                            if kind == "DELETED":
                                return failed(current, "the Deployment was deleted during rollout")
                            version = obj.metadata.resourceVersion if obj.metadata is not None else version
                            current = summarize(obj, self.settings.namespace)
                            failures = 0
                            if current.state in ("ready", "failed"):
                                return current
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        error = translate(e, f"watch deployments.apps {self.settings.namespace}/{name}")
                        if error.permanent and error.code != "expired":
                            return failed(current, error.message)
                        if error.code == "expired":
                            version = None  # too old: watch again from the current state
                        failures += 1
                        delay, asked = retry_delay(self.settings, error, min(failures - 1, 8))
                        log.warning("rollout watch: %s; resuming in %.2fs%s", error, delay, asked)
                        await asyncio.sleep(delay)
        except TimeoutError:
            waited = self.settings.rollout_deadline_s
            why = f"; last: {current.message}" if current.message else ""
            return failed(
                current,
                f"rollout not complete after our deadline of {waited:g}s: "
                f"{current.ready_replicas}/{current.replicas} pods ready{why}",
            )


def pod_reason(pod: Any) -> str | None:
    """One line on why a pod is not ready: unschedulable (e.g. no free GPU), a waiting or crashed container."""
    status = pod.status
    if status is None:
        return None
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return _short(f"{cond.reason or 'Unschedulable'}: {cond.message or ''}".strip(": "))[:300]
    for container in status.containerStatuses or []:
        state = container.state
        waiting = state.waiting if state is not None else None
        last = _last_exit(container)
        if waiting is not None and waiting.reason:
            return f"{container.name} {waiting.reason}: {waiting.message or ''}".strip(": ")[:240] + last
        if not container.ready and container.restartCount:
            return f"{container.name} not ready after {container.restartCount} restarts{last}"
    return None


def _last_exit(container: Any) -> str:
    """Why the container's previous run ended, e.g. " (last exit: OOMKilled, code 137)": a crash loop's cause."""
    last = container.lastState
    terminated = last.terminated if last is not None else None
    if terminated is None:
        return ""
    return f" (last exit: {terminated.reason or 'Error'}, code {terminated.exitCode})"[:60]


def failed(current: ClusterWorkload, message: str) -> ClusterWorkload:
    """`current` marked failed with `message` (validated, so it fits the wire message)."""
    return ClusterWorkload.model_validate({**current.model_dump(), "state": "failed", "message": _short(message)})


def summarize(deployment: Any, namespace: str) -> ClusterWorkload:
    """A rollout report from a Deployment, with the rules of `kubectl rollout status`."""
    meta = deployment.metadata
    spec = deployment.spec
    status = deployment.status
    generation = int(meta.generation or 0)
    observed = int(getattr(status, "observedGeneration", None) or 0)
    replicas = int(spec.replicas if spec is not None and spec.replicas is not None else 1)
    updated = int(getattr(status, "updatedReplicas", None) or 0)
    ready = int(getattr(status, "readyReplicas", None) or 0)
    available = int(getattr(status, "availableReplicas", None) or 0)
    total = int(getattr(status, "replicas", None) or 0)
    conditions = {c.type: c for c in (getattr(status, "conditions", None) or [])}
    base = {
        "namespace": meta.namespace or namespace,
        "deployment": str(meta.name),
        "generation": generation,
        "observed_generation": observed,
        "replicas": replicas,
        "ready_replicas": ready,
        "updated_replicas": updated,
    }
    progressing = conditions.get("Progressing")
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        return ClusterWorkload(
            **base, state="failed", message=_short(f"ProgressDeadlineExceeded: {progressing.message}")
        )
    if observed < generation:
        message = f"waiting for the Deployment controller to observe generation {generation}"
        return ClusterWorkload(**base, state="progressing", message=message)
    failure = conditions.get("ReplicaFailure")
    hint = f" ({failure.reason}: {failure.message})" if failure is not None and failure.status == "True" else ""
    if updated < replicas:
        message = f"{updated} of {replicas} pods updated{hint}"
    elif total > updated:
        message = f"{total - updated} old pods pending termination{hint}"
    elif available < updated or ready < replicas:
        message = f"{min(available, ready)} of {replicas} updated pods available{hint}"
    else:
        return ClusterWorkload(**base, state="ready", message=None)
    return ClusterWorkload(**base, state="progressing", message=_short(message))


async def _outcome(call: Awaitable[T]) -> T | AgentError:
    """What `call` returned, or the error it raised (a bug too: an error with its reason, never a crash)."""
    try:
        return await call
    except asyncio.CancelledError:
        raise
    except AgentError as e:
        return e
    except Exception as e:
        log.exception("unexpected error in the periodic cluster check")
        return ClusterError(f"unexpected {type(e).__name__} in cluster mode: {e}"[:1500], code="internal")


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _notify(on_change: Callable[[list[NodeInfo]], None], nodes: list[NodeInfo]) -> None:
    try:
        on_change(nodes)
    except Exception:
        log.exception("the inventory callback failed")


def _loop_deadline(deadline: float) -> float:
    """Turn a `time.monotonic()` deadline into one of the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


__all__ = ["ApiCallError", "Cluster", "summarize"]

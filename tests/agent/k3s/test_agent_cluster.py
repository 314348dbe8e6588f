"""The agent in cluster mode, end to end: real agent runtime + real lightkube bridge + our K8s API test server.

The birth carries the node inventory and goes out again when it changes; a desired state is activated and
its serving workload server-side-applied, and the reported state says how far the rollout got.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.headless import HeadlessServing
from agent.k3s import ClusterBridge, ClusterSettings
from agent.k3s.render import workload_name
from agent.runtime import Agent
from tests.agent.conftest import Sample, fast_settings
from tests.agent.k3s.conftest import all_rules_but
from tests.agent.k3s.conftest import fast_settings as fast_settings_k3s
from tests.k8s.controller import deployment_status
from tests.k8s.server import ApiServer
from tests.support.broker import Broker
from tests.support.hubside import HubSide, one
from tests.support.mqtt import wait_for


@contextlib.contextmanager
def _deployed(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], settings: ClusterSettings, tmp_path: Path
) -> Iterator[None]:
    """A cluster-mode agent that checks its cluster every 0.5 s, sent a desired state with version 1.0.0."""
    agent = Agent(
        hub.bundle(device_id, broker.url),
        fast_settings(tmp_path / "agent", activation={"cluster_retry_s": 0.5}),
        HeadlessServing(),
        ClusterBridge(settings),
    )
    agent.start()
    try:
        v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
        hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
        yield
    finally:
        agent.stop()


def test_birth_inventory_and_workload_follow_the_cluster(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer,
    settings: ClusterSettings, tmp_path: Path,
) -> None:  # fmt: skip
    api.put_node("edge-1", allocatable={"nvidia.com/gpu": "1"}, labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
    agent = Agent(
        hub.bundle(device_id, broker.url), fast_settings(tmp_path / "agent"), HeadlessServing(), ClusterBridge(settings)
    )
    agent.start()
    try:

        def nodes_in_last_birth() -> list[str]:
            births = [s.capabilities for s in hub.statuses if s.device_id == device_id and s.capabilities is not None]
            return [n.name for n in births[-1].nodes] if births else []

        wait_for(lambda: nodes_in_last_birth() == ["edge-1"], timeout=30)
        assert hub.statuses[-1].capabilities is not None and hub.statuses[-1].capabilities.mode == "k3s"

        api.put_node("edge-2", allocatable={"nvidia.com/mig-1g.10gb": "7"})  # a node joins: a new birth
        wait_for(lambda: sorted(nodes_in_last_birth()) == ["edge-1", "edge-2"], timeout=30)

        v1 = hub.model_ref(samples["v1"].path, samples["v1"].descriptor)
        hub.publish_desired(device_id, hub.desired(device_id, 1, v1))
        hub.wait_active("1.0.0")
        reported = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "ready")
        cluster = one(reported).cluster
        assert cluster is not None and cluster.ready_replicas == cluster.replicas >= 1
        deployment = api.get("apps", "deployments", settings.namespace, cluster.deployment)
        assert deployment is not None
    finally:
        agent.stop()


def test_a_workload_the_cluster_refused_is_applied_once_the_cluster_is_fixed(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer,
    settings: ClusterSettings, tmp_path: Path,
) -> None:  # fmt: skip
    api.store.namespaces.discard(settings.namespace)  # the operator has not created the namespace yet
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        refused = hub.wait_reported(lambda r: (e := one(r).error) is not None and e.code == "not_found")
        error = one(refused).error
        assert error is not None and f'namespaces "{settings.namespace}" not found' in error.message
        assert one(refused).cluster is None

        api.add_namespace(settings.namespace)  # fixed: the same desired state is applied, no new one is needed
        since = len(hub.reported)
        fixed = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "ready", since=since)
        assert one(fixed).error is None  # the error no longer shows on `edgefleet device show`
        assert fixed.desired_version == 1


@pytest.mark.parametrize(
    ("group", "plural", "kind"), [("apps", "deployments", "Deployment"), ("", "services", "Service")]
)
def test_an_object_deleted_by_someone_is_reported_and_applied_again(
    group: str, plural: str, kind: str, broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample],
    api: ApiServer, settings: ClusterSettings, tmp_path: Path,
) -> None:  # fmt: skip
    """`kubectl delete deployment` (the device no longer serves what it says) or `kubectl delete service` (the
    on-device API has no route to the model's pods): reported while it is gone, then applied again."""
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        ready = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "ready")
        cluster = one(ready).cluster
        assert cluster is not None
        key = (group, plural, settings.namespace, cluster.deployment)  # all of a model's objects share its name
        assert api.get(*key) is not None
        since = len(hub.reported)
        api.store.delete(key)

        missing = "workload_missing"
        gone = hub.wait_reported(lambda r: (e := one(r).error) is not None and e.code == missing, since=since)
        error, reported = one(gone).error, one(gone).cluster
        assert error is not None and f"{kind} {settings.namespace}/{cluster.deployment}" in error.message
        assert reported is not None and reported.state == "failed"
        back = hub.wait_reported(
            lambda r: one(r).error is None and (c := one(r).cluster) is not None and c.state == "ready",
            since=hub.reported.index(gone),
        )
        assert back.desired_version == 1  # the same desired state, applied again
        assert api.get(*key) is not None


def test_a_refused_removal_is_reported_and_tried_again(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer,
    settings: ClusterSettings, tmp_path: Path,
) -> None:  # fmt: skip
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        ready = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "ready")
        cluster = one(ready).cluster
        assert cluster is not None
        key = ("apps", "deployments", settings.namespace, cluster.deployment)
        api.allow(all_rules_but(("delete", "deployments")))  # someone tightened the agent's Role

        hub.publish_desired(device_id, hub.desired(device_id, 2, None))  # the model is no longer desired
        refused = hub.wait_reported(lambda r: (e := one(r).error) is not None and e.code == "forbidden")
        error = one(refused).error
        assert refused.desired_version == 2 and error is not None and "cluster workload not removed" in error.message
        assert api.get(*key) is not None  # its pods still hold the device's memory and GPU

        api.rules = None  # the Role is fixed: no new desired state is needed
        removed = hub.wait_reported(lambda r: one(r).error is None, since=hub.reported.index(refused))
        assert removed.desired_version == 2
        assert api.get(*key) is None


def test_a_failed_rollout_that_becomes_healthy_later_is_reported_ready(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer,
    settings: ClusterSettings, tmp_path: Path,
) -> None:  # fmt: skip
    api.controller = "stalled"  # Kubernetes' progress deadline passes: the rollout is reported failed
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        stalled = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "failed")
        cluster = one(stalled).cluster
        assert cluster is not None
        key = ("apps", "deployments", settings.namespace, cluster.deployment)
        deployment = api.get(*key)
        assert deployment is not None
        api.store.set_status(key, deployment_status(deployment, "ready"))  # e.g. a GPU was freed: pods start

        healthy = hub.wait_reported(
            lambda r: (c := one(r).cluster) is not None and c.state == "ready", since=hub.reported.index(stalled)
        )
        assert healthy.desired_version == 1 and one(healthy).cluster.ready_replicas == 1  # type: ignore[union-attr]


def test_a_new_desired_state_does_not_wait_behind_a_hanging_periodic_check(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer, tmp_path: Path
) -> None:  # fmt: skip
    """The API server hangs on a read of the periodic check (API Priority and Fairness queueing, an etcd stall):
    a new desired state (a new version, or a rollback) is still taken in at once, its pointer moved (the serving
    pods follow it) and its workload applied; the check does not hold the control thread."""
    settings = fast_settings_k3s(api.kubeconfig, request_timeout_s=120)  # the client waits while the server hangs
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "ready")
        held = api.hold(verb="get")  # the next read is the periodic check's
        try:
            assert held.entered.wait(30)
            since = len(hub.reported)
            v2 = hub.model_ref(samples["v2"].path, samples["v2"].descriptor)
            hub.publish_desired(device_id, hub.desired(device_id, 2, v2))
            hub.wait_active("2.0.0", since=since)
            applied = hub.wait_reported(
                lambda r: r.desired_version == 2 and (c := one(r).cluster) is not None and c.state == "ready",
                since=since,
            )
            assert one(applied).error is None
        finally:
            held.released.set()


def test_the_periodic_check_keeps_why_the_pods_are_not_ready(
    broker: Broker, hub: HubSide, device_id: str, samples: dict[str, Sample], api: ApiServer, tmp_path: Path
) -> None:  # fmt: skip
    """A serving pod in a crash loop (killed for memory): the apply's report says so from the pod, and so does the
    periodic check's read-back, not a bare "0 of 1 updated pods available"."""
    api.controller = "never"  # the pods never become ready
    settings = fast_settings_k3s(api.kubeconfig, rollout_deadline_s=0.5)
    name = workload_name(settings.workload_name, samples["v1"].descriptor.name)
    oom = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "startedAt": "2026-01-01T00:00:00Z",
                          "finishedAt": "2026-01-01T00:00:09Z"}}  # fmt: skip
    backoff = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
    container = {"name": "serve", "ready": False, "restartCount": 3, "image": "x", "imageID": "", "state": backoff,
                 "lastState": oom}  # fmt: skip
    labels = {"app.kubernetes.io/name": "edgefleet-inference", "app.kubernetes.io/instance": name}
    pod = {"metadata": {"name": f"{name}-1", "namespace": settings.namespace, "labels": labels},
           "spec": {"containers": [{"name": "serve", "image": "x"}]},
           "status": {"phase": "Running", "containerStatuses": [container]}}  # fmt: skip
    api.store.put(api.store_kind("pods"), pod)
    why = "1x serve CrashLoopBackOff: back-off 40s (last exit: OOMKilled, code 137)"
    with _deployed(broker, hub, device_id, samples, settings, tmp_path):
        failed = hub.wait_reported(lambda r: (c := one(r).cluster) is not None and c.state == "failed")
        cluster = one(failed).cluster
        assert cluster is not None and cluster.message is not None and why in cluster.message
        # our deadline passed, Kubernetes' has not: the check reads the rollout back as still progressing
        checked = hub.wait_reported(
            lambda r: (c := one(r).cluster) is not None and c.state == "progressing", since=hub.reported.index(failed)
        )
        cluster = one(checked).cluster
        assert cluster is not None and cluster.message is not None
        assert why in cluster.message, cluster.message

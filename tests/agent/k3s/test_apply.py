"""Server-side apply of the workload and the rollout watch, through the real lightkube client."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest

from agent.k3s import ClusterBridge, ClusterError
from agent.k3s.render import ACTIVE_FILE, HASH_ANNOTATION
from agent.ports import ClusterCheck, WorkloadNow
from fleet.messages import Autoscaling, ClusterWorkload, DesiredState
from tests.agent.k3s.conftest import MODEL, NAMESPACE, desired, fast_settings, with_slot
from tests.k8s.schemas import DNS1035_LABEL
from tests.k8s.server import ApiServer

NAME = "edgefleet-inference-resnet"  # the workload of model MODEL


def deployment(api: ApiServer) -> dict[str, Any]:
    obj = api.get("apps", "deployments", NAMESPACE, NAME)
    assert obj is not None
    return obj


def test_apply_creates_every_object_and_waits_until_ready(api: ApiServer, bridge: ClusterBridge) -> None:
    result = bridge.apply(desired(1, replicas=2), MODEL)
    assert result.state == "ready", result
    assert (result.replicas, result.ready_replicas, result.updated_replicas) == (2, 2, 2)
    assert result.generation == result.observed_generation == 1
    assert result.namespace == NAMESPACE and result.deployment == NAME
    dep = deployment(api)
    assert dep["metadata"]["uid"]
    assert [m["manager"] for m in dep["metadata"]["managedFields"]] == ["edgefleet-agent"]
    assert api.get("", "services", NAMESPACE, NAME) is not None
    cm = api.get("", "configmaps", NAMESPACE, NAME)
    assert cm is not None
    assert json.loads(cm["data"][ACTIVE_FILE])["model"]["name"] == "resnet"
    assert api.get("autoscaling", "horizontalpodautoscalers", NAMESPACE, NAME) is None
    # the rollout was followed by a watch from the apply's resourceVersion, not by polling
    watches = [r for r in api.requests if r.verb == "watch"]
    assert len(watches) == 1 and watches[0].resource == "deployments"


def test_apply_update_advances_generation_and_restarts_only_when_needed(api: ApiServer, bridge: ClusterBridge) -> None:
    bridge.apply(desired(1), MODEL)
    first = deployment(api)
    # a model change: only the ConfigMap changes, the Deployment is untouched (no pod restart)
    result = bridge.apply(desired(2, model_version="2.0.0"), MODEL)
    assert result.state == "ready" and result.generation == 1
    same = deployment(api)
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    cm = api.get("", "configmaps", NAMESPACE, NAME)
    assert cm is not None and json.loads(cm["data"][ACTIVE_FILE])["model"]["version"] == "2.0.0"
    # a GPU request changes the pod template: generation advances, the controller rolls it out
    result = bridge.apply(desired(3, model_version="2.0.0", gpus=1), MODEL)
    assert result.state == "ready"
    assert result.generation == result.observed_generation == 2
    changed = deployment(api)
    assert changed["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(changed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert changed["metadata"]["annotations"][HASH_ANNOTATION] != first["metadata"]["annotations"][HASH_ANNOTATION]
    limits = changed["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    # scaling changes the spec (generation) but not the template
    result = bridge.apply(desired(4, model_version="2.0.0", gpus=1, replicas=3), MODEL)
    assert (result.generation, result.replicas, result.ready_replicas) == (3, 3, 3)
    scaled = deployment(api)
    assert scaled["metadata"]["annotations"][HASH_ANNOTATION] == changed["metadata"]["annotations"][HASH_ANNOTATION]


def test_a_deployment_that_never_becomes_ready_hits_our_deadline(api: ApiServer) -> None:
    api.controller = "never"
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.5)) as bridge:
        result = bridge.apply(desired(1, replicas=2), MODEL)
        assert result.state == "failed"
        assert result.message is not None and "deadline of 0.5s" in result.message
        assert "0/2 pods ready" in result.message
        assert result.ready_replicas == 0 and result.replicas == 2
        # the bridge is still usable afterwards
        assert bridge.inventory() == []


def test_kubernetes_progress_deadline_is_reported_before_ours(api: ApiServer, bridge: ClusterBridge) -> None:
    api.controller = "stalled"
    result = bridge.apply(desired(1), MODEL)
    assert result.state == "failed"
    assert result.message is not None and result.message.startswith("ProgressDeadlineExceeded")


def test_deployment_deleted_during_rollout(api: ApiServer) -> None:
    api.controller = "off"
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=10)) as bridge:

        def delete_soon() -> None:
            while api.get("apps", "deployments", NAMESPACE, NAME) is None:
                threading.Event().wait(0.01)
            threading.Event().wait(0.1)
            api.store.delete(("apps", "deployments", NAMESPACE, NAME))

        t = threading.Thread(target=delete_soon)
        t.start()
        result = bridge.apply(desired(1), MODEL)
        t.join()
    assert result.state == "failed" and result.message == "the Deployment was deleted during rollout"


def test_zero_replicas_is_ready_at_once(bridge: ClusterBridge) -> None:
    result = bridge.apply(desired(1, replicas=0), MODEL)
    assert result.state == "ready" and result.replicas == 0


def test_autoscaler_is_applied_owns_replicas_and_goes_when_turned_off(api: ApiServer, bridge: ClusterBridge) -> None:
    result = bridge.apply(desired(1, autoscaling=Autoscaling(min_replicas=2, max_replicas=4)), MODEL)
    assert result.state == "ready"
    hpa = api.get("autoscaling", "horizontalpodautoscalers", NAMESPACE, NAME)
    assert hpa is not None and hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 4
    assert "replicas" not in deployment(api)["spec"]
    assert bridge.apply(desired(2, replicas=3), MODEL).state == "ready"  # autoscaling off: fixed replicas, no HPA left
    assert api.get("autoscaling", "horizontalpodautoscalers", NAMESPACE, NAME) is None
    assert deployment(api)["spec"]["replicas"] == 3


def test_watch_resumes_after_an_error_and_after_410_gone(api: ApiServer, bridge: ClusterBridge) -> None:
    api.controller_delay_s = 0.3
    api.fail(500, verb="watch", resource="deployments", times=1)
    assert bridge.apply(desired(1), MODEL).state == "ready"
    api.store.compacted = api.store.rv + 100  # every resourceVersion is now too old
    assert bridge.apply(desired(2, gpus=1), MODEL).state == "ready"
    watch_codes = [r.code for r in api.requests if r.verb == "watch"]
    assert watch_codes[0] == 500 and len(watch_codes) >= 3


def test_settings_namespace_and_field_manager_are_used(api: ApiServer) -> None:
    api.add_namespace("edge-b")
    s = fast_settings(api.kubeconfig, namespace="edge-b", field_manager="edgefleet-test", workload_name="serve")
    with ClusterBridge(s) as bridge:
        assert bridge.apply(desired(1), MODEL).deployment == "serve-resnet"
    dep = api.get("apps", "deployments", "edge-b", "serve-resnet")
    assert dep is not None and dep["metadata"]["managedFields"][0]["manager"] == "edgefleet-test"


def test_calls_from_several_threads_share_one_loop(api: ApiServer, bridge: ClusterBridge) -> None:
    api.put_node("n1")
    api.controller_delay_s = 0.3
    results: list[ClusterWorkload] = []
    worker = threading.Thread(target=lambda: results.append(bridge.apply(desired(1), MODEL)))
    worker.start()
    inventories = [bridge.inventory() for _ in range(5)]  # not blocked by the rollout wait
    worker.join()
    assert all(len(i) == 1 for i in inventories)
    assert results[0].state == "ready"


def pod(name: str, status: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": "edgefleet-inference", "app.kubernetes.io/instance": NAME}
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels if labels is not None else selector},
        "spec": {"containers": [{"name": "serve", "image": "x"}]},
        "status": status,
    }


def test_a_failed_rollout_says_why_from_its_pods(api: ApiServer) -> None:
    api.controller = "never"
    kind = api.store_kind("pods")
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb.",
            }
        ],
    }
    crashing = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "serve",
                "ready": False,
                "restartCount": 4,
                "image": "x",
                "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            }
        ],
    }
    api.store.put(kind, pod("p1", unschedulable))
    api.store.put(kind, pod("p2", unschedulable))
    api.store.put(kind, pod("p3", crashing))
    api.store.put(kind, pod("other", crashing, labels={"app": "something-else"}))  # not ours: the selector skips it
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.3)) as bridge:
        result = bridge.apply(desired(1, mig_profile="1g.10gb", replicas=3), MODEL)
    assert result.state == "failed"
    assert result.message is not None
    assert "pods: 2x Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb." in result.message
    assert "1x serve CrashLoopBackOff: back-off 40s" in result.message


def test_a_crash_loop_says_how_the_container_last_ended(api: ApiServer) -> None:
    # a serving pod over its memory limit: kubelet's OOM kill is only in the container's lastState
    api.controller = "never"
    oom = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "startedAt": "2026-01-01T00:00:00Z",
                          "finishedAt": "2026-01-01T00:00:09Z"}}  # fmt: skip
    backoff = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
    status = {"phase": "Running", "containerStatuses": [
        {"name": "serve", "ready": False, "restartCount": 3, "image": "x", "imageID": "", "state": backoff,
         "lastState": oom}]}  # fmt: skip
    api.store.put(api.store_kind("pods"), pod("p1", status))
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.3)) as bridge:
        result = bridge.apply(desired(1), MODEL)
    assert result.state == "failed" and result.message is not None
    assert "1x serve CrashLoopBackOff: back-off 40s (last exit: OOMKilled, code 137)" in result.message


def test_pods_that_cannot_be_listed_leave_the_message_as_it_was(api: ApiServer) -> None:
    api.controller = "never"
    api.fail(403, verb="list", resource="pods")
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.3)) as bridge:
        result = bridge.apply(desired(1), MODEL)
    assert result.state == "failed" and result.message is not None and "pods:" not in result.message


def named(state: DesiredState, model: str) -> DesiredState:
    """`state` with its one slot serving model `model` (any name the wire contract allows)."""
    return with_slot(state, model=state.models[0].model.model_copy(update={"name": model}))


@pytest.mark.parametrize("model", ["resnet_50", "yolo.v8", "m" * 63, "x." + "y_" * 30 + "z", "0-9"])
def test_every_model_name_the_wire_allows_gets_a_workload(api: ApiServer, bridge: ClusterBridge, model: str) -> None:
    # model names may hold '.' and '_' and 63 characters; a Service name is a DNS-1035 label (no '.', no '_',
    # 63 at most): the apiserver refuses the raw name with 422 Invalid
    result = bridge.apply(named(desired(1), model), model)
    assert result.state == "ready", result
    name = result.deployment
    assert len(name) <= 63 and re.fullmatch(DNS1035_LABEL, name), name
    for group, plural in (("", "configmaps"), ("apps", "deployments"), ("", "services")):
        obj = api.get(group, plural, NAMESPACE, name)
        assert obj is not None and obj["metadata"]["labels"]["edgefleet.io/model"] == model
    bridge.remove(model)
    assert api.get("apps", "deployments", NAMESPACE, name) is None


def test_model_names_that_differ_only_in_punctuation_get_workloads_of_their_own(bridge: ClusterBridge) -> None:
    names = {bridge.apply(named(desired(1), m), m).deployment for m in ("resnet-50", "resnet_50", "resnet.50")}
    assert len(names) == 3 and "edgefleet-inference-resnet-50" in names  # names that are labels already stay


def test_a_periodic_round_reads_back_applies_and_removes_without_raising(api: ApiServer, bridge: ClusterBridge) -> None:
    assert bridge.apply(desired(1), MODEL).state == "ready"
    api.store.delete(("", "services", NAMESPACE, NAME))  # someone deleted it
    found = bridge.check(desired(1), read=[MODEL], apply=[], remove=[]).result(timeout=30)
    assert found.desired_version == 1
    assert found.workloads == {MODEL: WorkloadNow(found_rollout(found), (f"Service {NAMESPACE}/{NAME}",))}

    api.fail(403, verb="delete", resource="deployments")
    found = bridge.check(desired(1), read=[], apply=[MODEL], remove=[MODEL]).result(timeout=30)
    applied, removed = found.applied[MODEL], found.removed[MODEL]
    assert isinstance(applied, ClusterWorkload) and applied.state == "ready"
    assert isinstance(removed, ClusterError) and removed.code == "forbidden"  # an error as the result, not raised
    assert api.get("", "services", NAMESPACE, NAME) is not None


def found_rollout(found: ClusterCheck) -> ClusterWorkload | None:
    now = found.workloads[MODEL]
    assert isinstance(now, WorkloadNow)
    return now.rollout


def test_an_apply_cancels_a_round_that_a_hanging_server_holds(api: ApiServer) -> None:
    with ClusterBridge(fast_settings(api.kubeconfig, request_timeout_s=120)) as bridge:
        assert bridge.apply(desired(1), MODEL).state == "ready"
        held = api.hold(verb="get")
        try:
            pending = bridge.check(desired(1), read=[MODEL], apply=[], remove=[])
            assert held.entered.wait(10)
            assert bridge.apply(desired(2, gpus=1), MODEL).state == "ready"  # not behind the round
            assert pending.cancelled()
        finally:
            held.released.set()

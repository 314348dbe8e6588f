"""The Role grants what the code calls: the test API server enforces the rendered Role while the real code runs,
and every request it saw is in agent/k3s/calls.py (test_manifests compares the Role with that table)."""

from __future__ import annotations

from agent.k3s import API_CALLS, ClusterBridge
from agent.ports import ServedVersions
from fleet.messages import Autoscaling, NodeInfo
from tests.agent.k3s.conftest import MODEL, NAMESPACE, desired, fast_settings
from tests.agent.k3s.manifests import AGENT, find, granted_rules, render
from tests.k8s.server import ApiServer, Rule


def manifest_rules() -> set[Rule]:
    """What `kubectl kustomize deploy/overlays/cpu` grants the agent's ServiceAccount (the same in every overlay)."""
    objects = render("cpu")
    deployment = find(objects, "Deployment", AGENT)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert deployment["metadata"]["namespace"] == NAMESPACE
    return granted_rules(objects, account, NAMESPACE)


def test_code_calls_nothing_outside_the_declaration_and_works_with_the_role(api: ApiServer) -> None:
    api.allow(manifest_rules())  # the server enforces the manifests' RBAC
    api.put_node("gpu-1", allocatable={"nvidia.com/mig-1g.10gb": "7"})
    api.controller_delay_s = 0.1
    with ClusterBridge(fast_settings(api.kubeconfig)) as bridge:
        seen: list[list[NodeInfo]] = []
        bridge.watch_inventory(seen.append)
        assert [n.name for n in bridge.inventory()] == ["gpu-1"]
        scaling = Autoscaling(max_replicas=3)
        assert bridge.apply(desired(1, mig_profile="1g.10gb", autoscaling=scaling), MODEL).state == "ready"
        assert bridge.apply(desired(2, gpus=1), MODEL).state == "ready"  # update: patch, no create; the HPA is deleted
        assert MODEL in bridge.serving_windows(
            {MODEL: ServedVersions("2.0.0")}
        )  # telemetry lists the serving pods to scrape them
        bridge.remove(MODEL)  # the model is no longer desired: its workload is deleted
        assert bridge.apply(desired(2, gpus=1), MODEL).state == "ready"  # and a later deploy creates it again
    api.controller = "never"  # a failed rollout also lists the pods to say why
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.3)) as bridge:
        assert bridge.apply(desired(3, gpus=2), MODEL).state == "failed"
    refused = [r for r in api.requests if r.code >= 400 and not (r.verb == "get" and r.code == 404)]
    assert not refused, refused  # (reading an object that is not there yet is a 404, not a refusal)
    used = api.calls()
    declared = {(c.verb, c.resource, c.group) for c in API_CALLS}
    assert used <= declared, used - declared
    assert used == declared, f"declared but never called: {declared - used}"

"""The Role grants what the code calls: deploy/ is installed with the real `kubectl apply -k --server-side`, then
the real cluster code runs as the agent's ServiceAccount, and the test API server allows each of its requests
only if the Roles and ClusterRoles kubectl stored there grant it (RBAC as kube-apiserver evaluates it); every
request it saw is in agent/k3s/calls.py (test_manifests compares the Role with that table)."""

from __future__ import annotations

from pathlib import Path

from agent.k3s import API_CALLS, ClusterBridge
from agent.ports import ServedVersions
from fleet.messages import Autoscaling, NodeInfo
from tests.agent.k3s.conftest import MODEL, NAMESPACE, desired, fast_settings
from tests.agent.k3s.manifests import AGENT, install
from tests.k8s.server import ApiServer


def as_the_agent(api: ApiServer) -> Path:
    """Install deploy/overlays/cpu with kubectl --server-side (the RBAC is the same in every overlay): a kubeconfig
    that is the ServiceAccount the agent's Deployment runs as."""
    # (server-side: the fixture made the namespace, and a client-side apply would patch it, not served here)
    install(api.kubeconfig, "cpu", "--server-side")
    deployment = api.get("apps", "deployments", NAMESPACE, AGENT)
    assert deployment is not None
    api.requests.clear()  # (kubectl's own requests: not the agent's)
    return api.kubeconfig_as(NAMESPACE, deployment["spec"]["template"]["spec"]["serviceAccountName"])


def test_code_calls_nothing_outside_the_declaration_and_works_with_the_role(api: ApiServer) -> None:
    kubeconfig = as_the_agent(api)
    api.put_node("gpu-1", allocatable={"nvidia.com/mig-1g.10gb": "7"})
    api.controller_delay_s = 0.1
    with ClusterBridge(fast_settings(kubeconfig)) as bridge:
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
    with ClusterBridge(fast_settings(kubeconfig, rollout_deadline_s=0.3)) as bridge:
        assert bridge.apply(desired(3, gpus=2), MODEL).state == "failed"
    refused = [r for r in api.requests if r.code >= 400 and not (r.verb == "get" and r.code == 404)]
    assert not refused, refused  # (reading an object that is not there yet is a 404, not a refusal)
    used = api.calls()
    declared = {(c.verb, c.resource, c.group) for c in API_CALLS}
    assert used <= declared, used - declared
    assert used == declared, f"declared but never called: {declared - used}"

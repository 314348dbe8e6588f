"""The Role grants exactly what the code calls: manifests vs API_CALLS vs the requests the server saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.k3s import API_CALLS, ClusterBridge
from fleet.messages import Autoscaling
from tests.agent.k3s.conftest import NAMESPACE, desired, fast_settings
from tests.k8s.server import ApiServer, Rule

RBAC = Path(__file__).resolve().parents[3] / "deploy" / "base" / "rbac.yaml"


def manifest_rules() -> set[Rule]:
    """Every (verb, resource, group, namespace) the Roles and ClusterRoles in deploy/ grant, bound to our SA."""
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    granted: set[Rule] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subjects = binding["subjects"]
        assert {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE} in subjects
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs expected"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), "least privilege: no wildcards"
                        granted.add(Rule(verb, resource, group, namespace))
    return granted


def declared_rules() -> set[Rule]:
    return {Rule(c.verb, c.resource, c.group, None if c.cluster_scoped else NAMESPACE) for c in API_CALLS}


def test_role_grants_exactly_the_declared_calls() -> None:
    assert manifest_rules() == declared_rules()


def test_code_calls_nothing_outside_the_declaration_and_works_with_the_role(api: ApiServer) -> None:
    api.allow(manifest_rules())  # the server enforces the manifests' RBAC
    api.put_node("gpu-1", allocatable={"nvidia.com/mig-1g.10gb": "7"})
    api.controller_delay_s = 0.1
    with ClusterBridge(fast_settings(api.kubeconfig)) as bridge:
        seen = []
        bridge.watch_inventory(seen.append)
        assert [n.name for n in bridge.inventory()] == ["gpu-1"]
        scaling = Autoscaling(max_replicas=3)
        assert bridge.apply(desired(1, mig_profile="1g.10gb", autoscaling=scaling)).state == "ready"
        assert bridge.apply(desired(2, gpus=1)).state == "ready"  # update: patch, no create; the HPA is deleted
    api.controller = "never"  # a failed rollout also lists the pods to say why
    with ClusterBridge(fast_settings(api.kubeconfig, rollout_deadline_s=0.3)) as bridge:
        assert bridge.apply(desired(3, gpus=2)).state == "failed"
    refused = [r for r in api.requests if r.code >= 400 and not (r.verb == "delete" and r.code == 404)]
    assert not refused, refused  # (deleting an HPA that is not there is a 404, not a refusal)
    used = api.calls()
    declared = {(c.verb, c.resource, c.group) for c in API_CALLS}
    assert used <= declared, used - declared
    assert used == declared, f"declared but never called: {declared - used}"

"""deploy/ rendered by the real kubectl (kustomize) and validated with kubernetes-validate --strict, and every
workload the agent renders validated the same way, against the oldest and newest Kubernetes that K3s supports.

What the manifests must do, each asserted on the rendered YAML: start the agent in cluster mode (parsed by the
real `edgefleet` CLI, so a test fails if the arguments stop doing that), probe it where it answers, and grant
exactly the API calls the code makes (agent/k3s/calls.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest

from agent.cli import run_cmd
from agent.health import HealthServer
from agent.k3s import render_workload
from fleet.messages import Autoscaling
from tests.agent.k3s.conftest import MODEL, desired
from tests.agent.k3s.manifests import (
    AGENT,
    OVERLAYS,
    VERSIONS,
    agent_container,
    cluster_settings,
    declared_rules,
    find,
    granted_rules,
    kubectl,
    render,
    run_command,
    shipped,
    validate,
)
from tests.k8s.schemas import NEWEST, OLDEST

WORKLOADS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {"gpus": 1},
    "two-gpus": {"gpus": 2, "replicas": 2},
    "mig": {"mig_profile": "1g.10gb", "replicas": 7},
    "replicas": {"replicas": 3},
    "none": {"replicas": 0},
    "hpa": {"autoscaling": Autoscaling(min_replicas=2, max_replicas=6, cpu_percent=70)},
    "hpa-mig": {"mig_profile": "2g.20gb", "autoscaling": Autoscaling(max_replicas=3)},
}


def test_overlays_exist_and_schemas_are_shipped() -> None:
    assert OVERLAYS == ["cpu", "gpu", "mig"]
    assert (OLDEST, NEWEST) == ("1.35.0", "1.37.0"), "K3s' support moved: update docs/k3s.md with the versions"
    assert shipped(OLDEST) and shipped(NEWEST)
    client = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=True).stdout
    version = re.search(r"Client Version: v1\.(\d+)", client)
    assert version is not None and version.group(1) == NEWEST.split(".")[1], client


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_strictly(overlay: str, version: str) -> None:
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} <= kinds
    assert {"ConfigMap", "PersistentVolumeClaim", "Deployment"} <= kinds
    for obj in objects:
        validate(obj, version)


def test_strict_validation_catches_what_it_should() -> None:
    """The validator is not a rubber stamp: an unknown field and a wrong type both fail."""
    deployment = find(render("cpu"), "Deployment", AGENT)
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown, NEWEST)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong, OLDEST)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_starts_in_cluster_mode(overlay: str) -> None:
    objects = render(overlay)
    container = agent_container(objects)
    assert container["command"] == ["edgefleet"]
    command, params = run_command(container["args"])
    runs = (command.callback.__module__, command.callback.__name__)  # typer wraps the function it was given
    assert runs == (run_cmd.__module__, run_cmd.__name__), f"the agent pod runs {runs}, not `edgefleet agent run`"
    assert params["cluster"] is True, "deploy/ must start cluster mode (--cluster)"
    assert params["headless"] is False and params["api_port"] is None  # the serving pods serve, not this one
    pod = find(objects, "Deployment", AGENT)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secret = next(v for v in pod["volumes"] if v["name"] == "device")["secret"]["secretName"]
    assert secret == "edgefleet-device"
    assert params["bundle"] == Path(mounts["device"]) / "bundle.json"
    assert find(objects, "Deployment", AGENT)["spec"]["replicas"] == 1  # one MQTT session, one store writer


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_reach_the_agents_health_server(overlay: str) -> None:
    container = agent_container(render(overlay))
    _, params = run_command(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert params["health_host"] == "0.0.0.0"  # kubelet probes the pod's IP
    assert ports["health"] == params["health_port"]
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        assert probe["port"] == "health"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    # the paths are the health server's own: live answers 200, not ready answers 503 with the reason
    server = HealthServer("127.0.0.1", 0, live=lambda: None, ready=lambda: "not connected to the broker")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + probes["livenessProbe"]["path"], timeout=5).status_code == 200
        r = httpx.get(base + probes["readinessProbe"]["path"], timeout=5)
        assert r.status_code == 503 and "broker" in r.text
    finally:
        server.stop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_role_grants_exactly_the_calls_the_code_makes(overlay: str) -> None:
    objects = render(overlay)
    deployment = find(objects, "Deployment", AGENT)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = deployment["metadata"]["namespace"]
    find(objects, "ServiceAccount", account)
    granted = granted_rules(objects, account, namespace)
    declared = declared_rules(namespace)
    assert granted - declared == set(), "granted but never called: least privilege"
    assert declared - granted == set(), "called but not granted: the agent would get 403"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agent_pod_meets_pod_security_restricted_and_has_bounded_resources(overlay: str) -> None:
    objects = render(overlay)
    namespace = find(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = find(objects, "Deployment", AGENT)["spec"]["template"]["spec"]
    container = agent_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not any("hostPath" in v for v in pod["volumes"])
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_the_agent_renders_validates_strictly(overlay: str, workload: str, version: str) -> None:
    """With the settings each overlay gives the agent, for CPU, GPU, MIG, replicas and autoscaling."""
    settings = cluster_settings(overlay)
    rendered = render_workload(desired(1, **WORKLOADS[workload]), MODEL, settings)
    for obj in rendered.objects():
        validate(obj, version)
    pod = rendered.deployment["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    if workload.startswith(("gpu", "two-gpus")):
        assert pod["runtimeClassName"] == "nvidia" and "nvidia.com/gpu" in limits
    if "mig" in workload:
        profile = WORKLOADS[workload]["mig_profile"]
        assert limits[f"nvidia.com/mig-{profile}"] == "1"
    assert (rendered.autoscaler is not None) == workload.startswith("hpa")

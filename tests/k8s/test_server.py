"""The Kubernetes API test server itself, driven by the real (sync) lightkube client over TLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kubernetes_validate
import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.core.client import FieldSelector, LabelSelector
from lightkube.core.resource import NamespacedResource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Node
from lightkube.types import PatchType

from tests.k8s.schemas import NEWEST
from tests.k8s.server import ApiServer
from tests.k8s.store import StoreError
from tests.support.mqtt import wait_for

R = TypeVar("R", bound=NamespacedResource)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    s = ApiServer(tmp_path, controller="off").start()
    s.add_namespace("ns")
    yield s
    s.stop()


@pytest.fixture
def client(server: ApiServer) -> Iterator[Client]:
    c = Client(KubeConfig.from_file(server.kubeconfig), field_manager="test", trust_env=False)
    yield c
    c.close()


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": data}


def deploy(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }


def apply(
    client: Client, res: type[R], obj: dict[str, Any], *, field_manager: str | None = None, force: bool = False
) -> R:
    name = obj["metadata"]["name"]
    return client.patch(
        res, name, obj, namespace="ns", patch_type=PatchType.APPLY, field_manager=field_manager, force=force
    )


def meta(obj: Deployment | ConfigMap) -> ObjectMeta:
    """An object's metadata: the server always sets it (lightkube's models make it optional)."""
    assert obj.metadata is not None
    return obj.metadata


def test_apply_creates_then_keeps_uid_and_advances_generation(client: Client) -> None:
    first = apply(client, Deployment, deploy(1))
    again = apply(client, Deployment, deploy(1))  # a no-op: nothing changes, not even resourceVersion
    second = apply(client, Deployment, deploy(2))
    assert meta(first).generation == 1 and meta(second).generation == 2
    assert meta(first).uid == meta(second).uid
    assert meta(again).resourceVersion == meta(first).resourceVersion
    assert int(meta(second).resourceVersion or "") > int(meta(first).resourceVersion or "")


def test_fields_dropped_from_the_applied_config_are_removed(client: Client) -> None:
    apply(client, ConfigMap, cm("c", a="1", b="2"))
    got = apply(client, ConfigMap, cm("c", a="1"))
    assert got.data == {"a": "1"}


def test_label_and_field_selectors(server: ApiServer, client: Client) -> None:
    server.put_node("a", labels={"gpu": "yes", "zone": "x"})
    server.put_node("b", labels={"gpu": "no"})
    server.put_node("c", labels={"zone": "y"})

    def names(labels: LabelSelector | None = None, fields: FieldSelector | None = None) -> list[str | None]:
        return [n.metadata.name if n.metadata else None for n in client.list(Node, labels=labels, fields=fields)]

    assert names(labels={"gpu": "yes"}) == ["a"]
    assert names(labels={"gpu": None}) == ["a", "b"]  # exists
    assert names(labels={"zone": ("x", "y")}) == ["a", "c"]  # in
    assert names(fields={"metadata.name": "b"}) == ["b"]
    with pytest.raises(ApiError) as info:
        names(fields={"spec.unschedulable": "true"})
    assert info.value.status.code == 400 and "not supported" in str(info.value.status.message)


def test_watch_from_a_resource_version(server: ApiServer, client: Client) -> None:
    server.put_node("a")
    version = server.put_node("b")["metadata"]["resourceVersion"]
    server.put_node("a", ready=False)
    server.store.delete(("", "nodes", "", "b"))
    server.max_watch_s = 0.2
    events = []
    for kind, node in client.watch(Node, resource_version=version, server_timeout=1):
        events.append((kind, node.metadata.name if node.metadata else None))
        if len(events) == 2:
            break
    assert events == [("MODIFIED", "a"), ("DELETED", "b")]


def test_errors_are_status_objects(server: ApiServer, client: Client) -> None:
    with pytest.raises(ApiError) as info:
        client.get(ConfigMap, "missing", namespace="ns")
    assert (info.value.status.code, info.value.status.reason) == (404, "NotFound")
    with pytest.raises(ApiError) as info:
        client.patch(
            ConfigMap, "x", {**cm("x"), "metadata": {"name": "x"}}, namespace="absent", patch_type=PatchType.APPLY
        )
    assert info.value.status.code == 404
    with pytest.raises(ApiError) as info:  # the body names another namespace than the URL
        apply(client, ConfigMap, {**cm("x"), "metadata": {"name": "x", "namespace": "absent"}})
    assert info.value.status.code == 400


def test_conflicts_between_field_managers(server: ApiServer, client: Client) -> None:
    apply(client, ConfigMap, cm("c", a="1"))
    with pytest.raises(ApiError) as info:
        apply(client, ConfigMap, cm("c", a="2"), field_manager="other")
    assert info.value.status.code == 409 and ".data.a" in str(info.value.status.message)
    got = apply(client, ConfigMap, cm("c", a="2"), field_manager="other", force=True)
    assert got.data == {"a": "2"}
    with pytest.raises(StoreError):
        server.store.delete(("", "configmaps", "ns", "nope"))


def test_deployment_controller_marks_the_rollout_ready(server: ApiServer, client: Client) -> None:
    server.controller = "ready"
    created = apply(client, Deployment, deploy(3))
    for kind, obj in client.watch(
        Deployment,
        namespace="ns",
        resource_version=meta(created).resourceVersion,
        server_timeout=5,
    ):
        assert kind == "MODIFIED"
        assert obj.status is not None and obj.status.readyReplicas == 3 and obj.status.observedGeneration == 1
        break


def test_deleting_a_deployment_deletes_its_pods(server: ApiServer, client: Client) -> None:
    """Kubernetes' garbage collector deletes the dependents named by ownerReferences (the pods, through their
    ReplicaSet); pods of another Deployment stay."""
    server.controller = "ready"
    for name in ("d", "e"):
        labelled = deploy(2)
        labelled["metadata"]["name"] = name
        labelled["spec"]["selector"]["matchLabels"] = {"app": name}
        labelled["spec"]["template"]["metadata"] = {"labels": {"app": name}}
        apply(client, Deployment, labelled)
    wait_for(lambda: len(server.pods("ns", app="d")) == 2 and len(server.pods("ns", app="e")) == 2, timeout=10)
    owner = server.get("apps", "deployments", "ns", "d")
    assert owner is not None
    for pod in server.pods("ns", app="d"):
        assert [r["uid"] for r in pod["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]

    client.delete(Deployment, "d", namespace="ns")
    assert server.pods("ns", app="d") == []
    assert len(server.pods("ns", app="e")) == 2
    server.store.delete(("apps", "deployments", "ns", "e"))  # as `kubectl delete` in a test does
    assert server.pods("ns", app="e") == []


# --- what the server accepts is what a real Kubernetes' schemas accept --------------------------------------


def test_a_wrong_typed_field_is_refused_as_a_real_apiserver_does(server: ApiServer, client: Client) -> None:
    """SSA cannot type the patch: 500 with the typed-patch message (kubernetes/kubernetes#139253), nothing stored."""
    bad = deploy(1)
    bad["spec"]["replicas"] = "one"
    with pytest.raises(ApiError) as info:
        apply(client, Deployment, bad)
    status = info.value.status
    assert status.code == 500
    assert status.message == (
        "failed to create typed patch object (ns/d; apps/v1, Kind=Deployment): "
        ".spec.replicas: expected numeric (int or float), got string"
    )
    assert server.get("apps", "deployments", "ns", "d") is None
    unknown = deploy(1)
    unknown["spec"]["replica"] = 1
    with pytest.raises(ApiError) as info:
        apply(client, Deployment, unknown)
    assert info.value.status.code == 500 and ".spec.replica: field not declared in schema" in str(
        info.value.status.message
    )


def test_a_missing_required_field_is_422_invalid_with_causes(server: ApiServer, client: Client) -> None:
    bad = deploy(1)
    del bad["spec"]["selector"]
    bad["spec"]["template"]["spec"]["containers"][0].pop("name")
    with pytest.raises(ApiError) as info:
        apply(client, Deployment, bad)
    status = info.value.status
    assert (status.code, status.reason) == (422, "Invalid")
    assert status.message is not None and status.message.startswith('Deployment.apps "d" is invalid: [')
    assert status.details is not None and (status.details.name, status.details.kind) == ("d", "Deployment")
    causes = {(c.field, c.reason, c.message) for c in status.details.causes or []}
    assert causes == {
        ("spec.selector", "FieldValueRequired", "Required value"),
        ("spec.template.spec.containers[0].name", "FieldValueRequired", "Required value"),
    }
    assert server.get("apps", "deployments", "ns", "d") is None


def test_a_refused_update_leaves_the_object_and_its_owners_as_they_were(server: ApiServer, client: Client) -> None:
    first = apply(client, Deployment, deploy(1))
    bad = deploy(2)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    with pytest.raises(ApiError):
        apply(client, Deployment, bad)
    stored = server.get("apps", "deployments", "ns", "d")
    assert stored is not None and stored["metadata"]["resourceVersion"] == meta(first).resourceVersion
    assert apply(client, Deployment, deploy(3)).spec.replicas == 3


def test_an_undecodable_body_is_400_bad_request(tmp_path: Path) -> None:
    s = ApiServer(tmp_path / "token", controller="off", token="t0k3n").start()
    s.add_namespace("ns")
    try:
        url = f"{s.url}/api/v1/namespaces/ns/configmaps/c?fieldManager=test"
        headers = {"Authorization": "Bearer t0k3n", "Content-Type": "application/apply-patch+yaml"}
        with httpx.Client(verify=ssl.create_default_context(cafile=str(s.ca_file))) as http:
            for body in (b"{not: [yaml", b"- a list\n- not an object\n"):
                r = http.patch(url, content=body, headers=headers)
                assert r.status_code == 400, r.text
                assert r.json()["reason"] == "BadRequest" and r.json()["message"].startswith("error decoding YAML")
    finally:
        s.stop()


CASES: list[tuple[str, dict[str, Any]]] = [
    ("valid", deploy(2)),
    (
        "int-or-string port name",
        {**deploy(1), "spec": {**deploy(1)["spec"], "strategy": {"rollingUpdate": {"maxSurge": "25%"}}}},
    ),
    ("string replicas", {**deploy(1), "spec": {**deploy(1)["spec"], "replicas": "2"}}),
    ("unknown field", {**deploy(1), "spek": {}}),
    ("no template", {**deploy(1), "spec": {"selector": {"matchLabels": {"a": "b"}}}}),
    ("configmap int value", cm("c", a="1") | {"data": {"a": 1}}),
    ("configmap", cm("c", a="1")),
]


@pytest.mark.parametrize(("name", "obj"), CASES, ids=[c[0] for c in CASES])
def test_accepts_exactly_what_the_schemas_accept(client: Client, name: str, obj: dict[str, Any]) -> None:
    resource = Deployment if obj["kind"] == "Deployment" else ConfigMap
    try:
        kubernetes_validate.validate(obj, NEWEST, strict=True)
        valid = True
    except kubernetes_validate.ValidationError:
        valid = False
    try:
        apply(client, resource, obj)
        accepted = True
    except ApiError as e:
        assert e.status.code in (422, 500), e.status
        accepted = False
    assert accepted == valid, f"{name}: server accepted={accepted}, kubernetes-validate --strict valid={valid}"

"""API errors are reported with a reason and retried where sensible; none takes the agent down."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.k3s import (
    ApiCallError,
    ClusterBridge,
    ClusterConfigError,
    ClusterError,
    ClusterSettings,
    WorkloadError,
    connection,
)
from agent.k3s.render import MODEL_LABEL
from fleet.messages import RuntimeOptions
from tests.agent.k3s.conftest import MODEL, NAMESPACE, all_rules_but, desired, fast_settings, with_slot
from tests.k8s.certs import make_pki
from tests.k8s.server import ApiServer

NAME = "edgefleet-inference-resnet"  # the workload of model MODEL


def test_forbidden_by_rbac_is_permanent_and_names_the_permission(api: ApiServer, bridge: ClusterBridge) -> None:
    api.allow(all_rules_but(("create", "deployments")))
    with pytest.raises(ApiCallError) as info:
        bridge.apply(desired(1), MODEL)
    e = info.value
    assert (e.code, e.status, e.permanent) == ("forbidden", 403, True)
    assert 'cannot create resource "deployments"' in e.message and "deploy/base/rbac.yaml" in e.message
    assert [r.code for r in api.requests if r.resource == "deployments" and r.verb != "get"] == [403]  # not retried
    api.allow(all_rules_but(("list", "nodes")))
    with pytest.raises(ApiCallError, match="at the cluster scope"):
        bridge.inventory()
    api.rules = None
    assert bridge.apply(desired(2), MODEL).state == "ready"


def test_conflict_with_another_field_manager(api: ApiServer) -> None:
    with ClusterBridge(fast_settings(api.kubeconfig)) as bridge:
        bridge.apply(desired(1, replicas=1), MODEL)
    # someone scales the Deployment with kubectl (another field manager owns spec.replicas now)
    body = api.get("apps", "deployments", NAMESPACE, NAME)
    assert body is not None
    api.store.apply(
        api.store_kind("deployments"),
        ("apps", "deployments", NAMESPACE, NAME),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME}, "spec": {"replicas": 5}},
        "kubectl",
        force=True,
    )
    with ClusterBridge(fast_settings(api.kubeconfig, force_conflicts=False)) as bridge:
        with pytest.raises(ApiCallError) as info:
            bridge.apply(desired(2, replicas=2), MODEL)
        assert (info.value.code, info.value.status, info.value.permanent) == ("conflict", 409, True)
        assert ".spec.replicas" in info.value.message and "FORCE_CONFLICTS" in info.value.message
    with ClusterBridge(fast_settings(api.kubeconfig, force_conflicts=True)) as bridge:
        assert bridge.apply(desired(3, replicas=2), MODEL).replicas == 2


def test_injected_409_is_not_retried(api: ApiServer, bridge: ClusterBridge) -> None:
    api.fail(409, verb="patch", resource="configmaps", reason="Conflict", message="Operation cannot be fulfilled")
    with pytest.raises(ApiCallError, match="Operation cannot be fulfilled") as info:
        bridge.apply(desired(1), MODEL)
    assert info.value.code == "conflict"
    assert len([r for r in api.requests if r.resource == "configmaps" and r.verb == "patch"]) == 1


@pytest.mark.parametrize("code", [500, 503, 429, 504])
def test_temporary_server_errors_are_retried(api: ApiServer, bridge: ClusterBridge, code: int) -> None:
    api.fail(code, verb="patch", resource="deployments", times=2)
    assert bridge.apply(desired(1), MODEL).state == "ready"
    assert [r.code for r in api.requests if r.verb == "patch" and r.resource == "deployments"] == [code, code, 201]


def test_429_waits_as_long_as_the_server_says(
    api: ApiServer, bridge: ClusterBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """API Priority and Fairness rejects with 429 and Retry-After: our own (faster) backoff would hammer it."""
    api.fail(429, verb="patch", resource="deployments", reason="TooManyRequests", retry_after=1)
    with caplog.at_level("WARNING", logger="agent.k3s.connection"):
        assert bridge.apply(desired(1), MODEL).state == "ready"
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1 and "retrying in 1.00s (the server's Retry-After)" in retries[0]
    assert [r.code for r in api.requests if r.verb == "patch" and r.resource == "deployments"] == [429, 201]


@pytest.mark.parametrize(("code", "verb"), [(429, "watch"), (503, "watch"), (429, "list")])
def test_the_watches_wait_as_long_as_the_server_says(
    api: ApiServer, bridge: ClusterBridge, caplog: pytest.LogCaptureFixture, code: int, verb: str
) -> None:
    """A watch (or its list) refused with Retry-After resumes when the server said, not at our faster pace: the
    rollout watch of an apply and the node inventory watch alike."""
    api.fail(code, verb=verb, resource="nodes", reason="TooManyRequests", retry_after=1)
    api.put_node("n1")
    api.controller_delay_s = 0.3  # the rollout is still in progress when the watch starts
    with caplog.at_level("WARNING", logger="agent.k3s"):
        if verb == "watch":  # (the rollout watch lists nothing)
            api.fail(code, verb=verb, resource="deployments", reason="TooManyRequests", retry_after=1)
            assert bridge.apply(desired(1), MODEL).state == "ready"
        first, second = threading.Event(), threading.Event()
        bridge.watch_inventory(lambda nodes: (second if len(nodes) == 2 else first).set())
        assert first.wait(10)
        api.put_node("n2")  # seen once the watch, refused first, is resumed
        assert second.wait(10)
    waits = [r.getMessage() for r in caplog.records if " in 1.00s (the server's Retry-After)" in r.getMessage()]
    rollout = [m for m in waits if m.startswith("rollout watch:")]
    nodes = [m for m in waits if m.startswith("node inventory watch:") or "list nodes" in m]
    assert len(nodes) == 1, [r.getMessage() for r in caplog.records]
    assert len(rollout) == (1 if verb == "watch" else 0)


@pytest.mark.parametrize(
    ("header", "delay"), [("1", 1.0), ("0", 0.0), ("86400", 60.0), ("-5", None),
                          ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("nan", None), (None, None)]
)  # fmt: skip
def test_retry_after_is_bounded_and_garbage_falls_back_to_our_backoff(header: str | None, delay: float | None) -> None:
    assert connection.retry_after(header) == delay


def test_persistent_500_gives_up_with_a_temporary_error(api: ApiServer, bridge: ClusterBridge) -> None:
    api.fail(500, verb="list", resource="nodes", times=100, message="etcdserver: request timed out")
    with pytest.raises(ApiCallError) as info:
        bridge.inventory()
    e = info.value
    assert (e.code, e.status, e.permanent) == ("server_error", 500, False)
    assert "etcdserver: request timed out" in e.message and "after 3 tries" in e.message
    assert len(api.requests) == 3


def test_error_without_a_json_status_is_still_classified(api: ApiServer, bridge: ClusterBridge) -> None:
    # a proxy in front of the API answers plain text: lightkube raises its HTTP error, not ApiError
    api.fail(502, verb="list", resource="nodes", times=1, content_type="text/html", message="<h1>Bad Gateway</h1>")
    assert bridge.inventory() == []
    api.fail(403, verb="list", resource="nodes", times=1, content_type="text/plain", message="denied by proxy")
    with pytest.raises(ApiCallError, match="denied by proxy") as info:
        bridge.inventory()
    assert info.value.code == "forbidden"


def test_garbage_body_is_reported_not_raised_raw(api: ApiServer, bridge: ClusterBridge) -> None:
    api.fail(200, verb="list", resource="nodes", times=10, content_type="application/json", message="")
    api.faults[-1].content_type = "application/octet-stream"
    api.faults[-1].message = "\x00not json{"
    with pytest.raises(ApiCallError) as info:
        bridge.inventory()
    assert info.value.code == "bad_response"


def test_missing_namespace_is_permanent(api: ApiServer) -> None:
    with (
        ClusterBridge(fast_settings(api.kubeconfig, namespace="nowhere")) as bridge,
        pytest.raises(ApiCallError, match='namespaces "nowhere" not found') as info,
    ):
        bridge.apply(desired(1), MODEL)
    assert info.value.code == "not_found" and info.value.permanent


def test_bad_desired_state_applies_nothing(api: ApiServer, bridge: ClusterBridge) -> None:
    with pytest.raises(WorkloadError):
        forged = RuntimeOptions.model_construct(mig_profile="huge", gpus=0)  # past the wire contract's own check
        bridge.apply(with_slot(desired(1), runtime=forged), MODEL)
    assert api.requests == []


def test_connection_refused_is_temporary(tmp_path: Path, api: ApiServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = yaml.safe_load(api.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(config))
    with ClusterBridge(fast_settings(path)) as bridge:
        with pytest.raises(ApiCallError) as info:
            bridge.inventory()
        assert (info.value.code, info.value.permanent) == ("unreachable", False)
        assert "after 3 tries" in info.value.message
        with pytest.raises(ApiCallError, match="unreachable"):
            bridge.apply(desired(1), MODEL)


def test_untrusted_server_certificate(tmp_path: Path, api: ApiServer) -> None:
    config = yaml.safe_load(api.kubeconfig.read_text())
    other_ca = make_pki(tmp_path / "other-pki").ca_pem  # the server's certificate is not signed by this CA
    config["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(other_ca).decode()
    path = tmp_path / "wrong-ca.yaml"
    path.write_text(yaml.safe_dump(config))
    with (
        ClusterBridge(fast_settings(path, retry_attempts=1)) as bridge,
        pytest.raises(ApiCallError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
    ):
        bridge.inventory()


@pytest.mark.parametrize(
    "content",
    ["", "not: [yaml", "clusters: []\ncontexts: []\ncurrent-context: nope\n", "just a string"],
)
def test_bad_kubeconfig_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ClusterConfigError):
        ClusterBridge(fast_settings(path))


def test_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="no usable Kubernetes configuration"):
        ClusterBridge(fast_settings(tmp_path / "absent.yaml"))


def test_no_configuration_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT_DIR", tmp_path / "no-account")
    with pytest.raises(ClusterConfigError):
        ClusterBridge(ClusterSettings())


def test_kubeconfig_from_environment(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT_DIR", api.directory / "no-account")
    with ClusterBridge(fast_settings(None)) as bridge:
        assert bridge.inventory() == []


def test_closed_bridge_refuses_calls(bridge: ClusterBridge) -> None:
    bridge.close()
    bridge.close()
    with pytest.raises(ClusterError, match="closed"):
        bridge.inventory()
    with pytest.raises(ClusterError, match="closed"):
        bridge.watch_inventory(lambda nodes: None)


def test_garbage_in_the_rollout_watch_is_survived(api: ApiServer, bridge: ClusterBridge) -> None:
    api.controller_delay_s = 0.2
    # a 200 whose body is not a watch event: lightkube fails to decode it, the watch resumes
    api.fail(200, verb="watch", resource="deployments", times=2, reason="", message="not an event")
    assert bridge.apply(desired(1), MODEL).state == "ready"
    assert [r.code for r in api.requests if r.verb == "watch"][:2] == [200, 200]


def test_huge_error_messages_are_cut(api: ApiServer, bridge: ClusterBridge) -> None:
    api.fail(422, verb="patch", resource="configmaps", reason="Invalid", message="x" * 100_000)
    with pytest.raises(ApiCallError) as info:
        bridge.apply(desired(1), MODEL)
    assert info.value.code == "invalid" and len(info.value.message) <= 1500


def test_malformed_node_is_an_error_not_a_crash(api: ApiServer, bridge: ClusterBridge) -> None:
    api.store.put(api.store_kind("nodes"), {"metadata": {"name": "odd", "labels": ["not", "a", "map"]}})
    with pytest.raises(ApiCallError) as info:
        bridge.inventory()
    assert info.value.code == "bad_response"
    api.store.delete(("", "nodes", "", "odd"))
    assert bridge.inventory() == []


def test_inventory_is_capped_to_what_a_birth_message_carries(api: ApiServer, bridge: ClusterBridge) -> None:
    kind = api.store_kind("nodes")
    for i in range(1030):
        api.store.put(kind, {"metadata": {"name": f"n{i:04d}"}})
    nodes = bridge.inventory()
    assert len(nodes) == 1024 and nodes[-1].name == "n1023"


@pytest.fixture
def token_api(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "k8s-sa", token="sa-token").start()
    server.add_namespace(NAMESPACE)
    yield server
    server.stop()


def service_account(tmp_path: Path, server: ApiServer, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "namespace").write_text(NAMESPACE)
    (account / "ca.crt").write_bytes(server.ca_file.read_bytes())
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))


def test_in_cluster_service_account(tmp_path: Path, token_api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    service_account(tmp_path, token_api, "sa-token", monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "not-used.yaml"))
    token_api.put_node("n1")
    with ClusterBridge(fast_settings(None)) as bridge:
        assert [n.name for n in bridge.inventory()] == ["n1"]
        assert bridge.apply(desired(1), MODEL).state == "ready"


def test_a_revoked_token_is_unauthorized(tmp_path: Path, token_api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    service_account(tmp_path, token_api, "stale-token", monkeypatch)
    with ClusterBridge(fast_settings(None)) as bridge, pytest.raises(ApiCallError) as info:
        bridge.inventory()
    assert (info.value.code, info.value.status, info.value.permanent) == ("unauthorized", 401, True)


def test_objects_of_our_names_that_someone_else_made_are_neither_overwritten_nor_deleted(
    api: ApiServer, bridge: ClusterBridge
) -> None:
    # someone's own Deployment happens to carry the name of our workload (`kubectl create deployment ...`)
    theirs = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": NAMESPACE},
              "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "theirs"}},
                       "template": {"metadata": {"labels": {"app": "theirs"}},
                                    "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}  # fmt: skip
    key = ("apps", "deployments", NAMESPACE, NAME)
    api.store.apply(api.store_kind("deployments"), key, theirs, "kubectl-create", force=True)
    before = api.get(*key)
    assert before is not None
    with pytest.raises(ApiCallError) as info:
        bridge.apply(desired(1), MODEL)
    assert (info.value.code, info.value.status, info.value.permanent) == ("not_ours", 409, True)
    assert f"Deployment {NAMESPACE}/{NAME} exists but was not applied by edgefleet-agent" in info.value.message
    assert "kubectl-create" in info.value.message
    with pytest.raises(ApiCallError, match="not ours") as info:
        bridge.remove(MODEL)  # the model is undeployed: their Deployment stays
    assert api.get(*key) == before
    assert not [r for r in api.requests if r.resource == "deployments" and r.verb in ("patch", "delete")]

    api.store.delete(key)  # the operator removes theirs: ours goes in, and a label changed by hand is taken back
    assert bridge.apply(desired(2), MODEL).state == "ready"
    label = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "labels": {MODEL_LABEL: "x"}}}
    api.store.apply(api.store_kind("deployments"), key, label, "kubectl-label", force=True)
    assert bridge.apply(desired(3), MODEL).state == "ready"
    ours = api.get(*key)
    assert ours is not None and ours["metadata"]["labels"][MODEL_LABEL] == MODEL

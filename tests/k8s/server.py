"""A Kubernetes API test server reached by the real lightkube client and the real kubectl over TLS on loopback.

kubectl finds what it needs here: the version, API discovery (/api, /apis, /api/v1, /apis/<group>/<version>) and
enough OpenAPI v3 for it to leave validation to this server, so `kubectl apply -k deploy/overlays/<name>`
(server-side, or client-side: a create, POST), `kubectl get` and `kubectl delete` work. Not served: updates by
PUT or by a JSON, merge or strategic-merge patch (a client-side apply that changes an existing object).

It validates what it is asked to apply against a real Kubernetes' OpenAPI schemas and refuses it as a real
apiserver does (tests/k8s/schemas.py), creates on server-side apply, keeps uid/resourceVersion/generation,
honours label and field selectors, streams watches from a resourceVersion (410 Gone after `compact()`), answers
errors as Status objects, records every request as an RBAC verb, can enforce RBAC rules (a set given, or for a
service account's token what the Roles and bindings it stores grant), inject faults, hold requests (a hanging
server) and act as a Deployment controller; deleting an object deletes its dependents
(ownerReferences), as Kubernetes' garbage collector does. In the "ready" mode that controller also creates the
Deployment's pods, running and ready, with loopback pod IPs 127.0.0.2, 127.0.0.3, ... (Linux routes all of 127/8
to lo), so a test can serve each "pod" on its IP (cluster mode scrapes the pods' /metrics there).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.k8s.certs import make_pki, write_kubeconfig
from tests.k8s.controller import Controller, deployment_status
from tests.k8s.schemas import NEWEST, check_apply
from tests.k8s.selectors import SelectorError, field_selector, label_selector
from tests.k8s.store import BY_PATH, KINDS, Key, Kind, Store, StoreError

APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Recorded:
    verb: str
    resource: str
    group: str
    namespace: str
    name: str
    code: int


@dataclass
class Fault:
    verb: str | None
    resource: str | None
    code: int
    times: int
    reason: str = "InternalError"
    message: str = "injected failure"
    content_type: str = "application/json"
    retry_after: int | None = None  # the Retry-After header (seconds) the API server sends with a 429 or 503


@dataclass
class Hold:
    """The next `times` matching requests hang until `released` is set (a slow or stuck API server: API Priority
    and Fairness queueing, an etcd stall); `entered` is set when one arrives."""

    verb: str | None
    resource: str | None
    times: int
    entered: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Account:
    """A service account, as a request's bearer token names it."""

    namespace: str
    name: str


@dataclass(frozen=True)
class Rule:
    verb: str
    resource: str
    group: str
    namespace: str | None  # None: cluster-wide (a ClusterRole)


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Response:
    body = json.dumps(status_body(code, reason, message, details))
    return Response(body, status_code=code, media_type="application/json")


@dataclass
class _Route:
    kind: Kind
    namespace: str
    name: str


class ApiServer:
    """The server; `start()` runs it in a thread, `kubeconfig` is the K3s-style file the client reads."""

    def __init__(
        self,
        directory: Path,
        controller: Controller = "ready",
        controller_delay_s: float = 0.05,
        token: str | None = None,
    ) -> None:
        """`token`: authenticate by this bearer token (a service account) instead of client certificates."""
        self.directory = directory
        self.token = token
        self.store = Store()
        self.controller: Controller = controller
        self.controller_delay_s = controller_delay_s
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self.rules: set[Rule] | None = None  # None: everything allowed (like system:masters)
        # bearer tokens of service accounts: a request with one is that account's, allowed what the Roles and
        # ClusterRoles stored here grant it through their bindings at that moment (as kube-apiserver's RBAC)
        self.accounts: dict[str, Account] = {}
        self.max_watch_s = 30.0
        # objects are checked against this Kubernetes version's OpenAPI schemas (None: not checked)
        self.kubernetes_version: str | None = NEWEST
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self.port = 0
        self.kubeconfig = directory / "k3s.yaml"
        route = Route("/{path:path}", self._handle, methods=["GET", "PATCH", "POST", "PUT", "DELETE"])
        self.app = Starlette(routes=[route])

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ApiServer:
        pki = make_pki(self.directory / "pki")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key),
            ssl_ca_certs=str(pki.ca_file),
            ssl_cert_reqs=ssl.CERT_NONE if self.token else ssl.CERT_REQUIRED,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)
        write_kubeconfig(self.kubeconfig, self.url, pki)
        self.ca_file = pki.ca_file
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- helpers for tests -------------------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        with self.store.lock:
            self.store.namespaces.add(name)
        self.store.put(BY_PATH[("", "v1", "namespaces")], {"metadata": {"name": name}})

    def put_node(
        self,
        name: str,
        *,
        ready: bool = True,
        labels: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        node = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110", **(allocatable or {})},
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", **(allocatable or {})},
                "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}],
            },
        }
        return self.store.put(BY_PATH[("", "v1", "nodes")], node)

    def store_kind(self, plural: str) -> Kind:
        return next(k for k in BY_PATH.values() if k.plural == plural)

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get((group, plural, namespace, name))

    def fail(
        self, code: int, *, verb: str | None = None, resource: str | None = None, times: int = 1, **kw: Any
    ) -> None:
        """Answer the next `times` matching requests with `code` (a Status, or `content_type` text)."""
        self.faults.append(Fault(verb, resource, code, times, **kw))

    def hold(self, *, verb: str | None = None, resource: str | None = None, times: int = 1) -> Hold:
        """Make the next `times` matching requests hang until the returned hold is released (or the server stops)."""
        held = Hold(verb, resource, times)
        self.holds.append(held)
        return held

    def calls(self) -> set[tuple[str, str, str]]:
        """Every (verb, resource, group) the clients used, as RBAC verbs (an apply that created: also create)."""
        return {(r.verb, r.resource, r.group) for r in self.requests}

    def allow(self, rules: set[Rule]) -> None:
        self.rules = rules

    def kubeconfig_as(self, namespace: str, name: str) -> Path:
        """A kubeconfig whose requests are the service account `namespace`/`name`'s (a bearer token, beside the
        client certificate this server asks every client for)."""
        token = secrets.token_hex(16)
        self.accounts[token] = Account(namespace, name)
        path = self.directory / f"as-{namespace}-{name}.yaml"
        doc = yaml.safe_load(self.kubeconfig.read_text())
        doc["users"][0]["user"]["token"] = token
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    # --- request handling --------------------------------------------------------------------------

    def _route(self, path: str) -> _Route | None:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None or len(rest) > 2 or (kind.namespaced and not namespace and len(rest) == 2):
            return None
        return _Route(kind, namespace, rest[1] if len(rest) == 2 else "")

    def _discovery(self, path: str) -> dict[str, Any] | None:
        """What kubectl reads before it sends a request: the version, API discovery (the legacy, unaggregated form:
        kubectl falls back to it) and OpenAPI v3, whose PATCH operations declare `fieldValidation`, so kubectl
        leaves validation to this server (which validates strictly) instead of downloading OpenAPI v2 schemas."""
        path = path.rstrip("/")
        served = sorted({(k.group, k.version) for k in KINDS})
        if path == "/version":
            major, minor = (self.kubernetes_version or NEWEST).split(".")[:2]
            return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0+k3s1", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, v in served if g
            ]  # fmt: skip
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if path == "/openapi/v3":
            return {
                "paths": {_api_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_api_path(g, v)}"} for g, v in served}
            }
        for group, version in served:
            kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
            if path == f"/{_api_path(group, version)}":
                resources = [
                    {"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced, "kind": k.kind,
                     "verbs": list(SERVED_VERBS)}
                    for k in kinds
                ]  # fmt: skip
                api_version = f"{group}/{version}" if group else version
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": api_version,
                    "resources": resources,
                }
            if path == f"/openapi/v3/{_api_path(group, version)}":
                return _openapi(group, version, kinds)
        return None

    def _allowed(self, verb: str, route: _Route, account: Account | None) -> bool:
        if account is not None:
            return self._rbac_allows(account, verb, route)
        if self.rules is None:
            return True
        for rule in self.rules:
            if (rule.verb, rule.resource, rule.group) == (verb, route.kind.plural, route.kind.group) and (
                rule.namespace is None or rule.namespace == route.namespace
            ):
                return True
        return False

    def _rbac_allows(self, account: Account, verb: str, route: _Route) -> bool:
        """RBAC as kube-apiserver evaluates it: a RoleBinding of `account` grants its Role's (or ClusterRole's)
        rules in the binding's namespace, a ClusterRoleBinding grants its ClusterRole's everywhere."""
        subject = {"kind": "ServiceAccount", "name": account.name, "namespace": account.namespace}
        group = "rbac.authorization.k8s.io"
        bindings, _ = self.store.list(self.store_kind("rolebindings"), None)
        cluster_bindings, _ = self.store.list(self.store_kind("clusterrolebindings"), None)
        for binding in bindings + cluster_bindings:
            if subject not in (binding.get("subjects") or []):
                continue
            ref, scope = binding["roleRef"], binding["metadata"].get("namespace", "")
            if scope and scope != route.namespace:
                continue
            role_scope = scope if ref["kind"] == "Role" else ""
            role = self.store.get(
                (group, "roles" if ref["kind"] == "Role" else "clusterroles", role_scope, ref["name"])
            )
            for rule in (role or {}).get("rules") or []:
                if (
                    _matches(rule.get("verbs"), verb)
                    and _matches(rule.get("apiGroups"), route.kind.group)
                    and _matches(rule.get("resources"), route.kind.plural)
                    and (not rule.get("resourceNames") or route.name in rule["resourceNames"])
                ):
                    return True
        return False

    def _forbidden(self, verb: str, route: _Route, account: Account | None) -> Response:
        scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        account = account or Account("edgefleet", "edgefleet-agent")  # (rules set by `allow`: the agent's)
        user = f"system:serviceaccount:{account.namespace}:{account.name}"
        message = (
            f'{route.kind.plural}{"." + route.kind.group if route.kind.group else ""} "{route.name}" is forbidden: '
            f'User "{user}" cannot {verb} resource "{route.kind.plural}" in API group "{route.kind.group}" {scope}'
        )
        return _error(403, "Forbidden", message, {"name": route.name, "kind": route.kind.plural})

    async def _handle(self, request: Request) -> Response:
        self._loop = asyncio.get_running_loop()
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Unauthorized")
        if request.method == "GET" and (found := self._discovery(request.url.path)) is not None:
            return _json(found)  # (non-resource URLs: every authenticated user may read them, none is recorded)
        route = self._route(request.url.path)
        if route is None:
            return _error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")
        params = request.query_params
        watching = params.get("watch") in ("true", "1")
        verb = {
            "GET": ("watch" if watching else "list") if not route.name else "get",
            "PATCH": "patch",
            "POST": "create",
            "PUT": "update",
            "DELETE": "delete",
        }[request.method]
        account = self.accounts.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        response = await self._answer(request, route, verb, account)
        self.requests.append(
            Recorded(verb, route.kind.plural, route.kind.group, route.namespace, route.name, response.status_code)
        )
        if verb == "patch" and response.status_code == 201:
            self.requests.append(
                Recorded("create", route.kind.plural, route.kind.group, route.namespace, route.name, 201)
            )
        return response

    async def _answer(self, request: Request, route: _Route, verb: str, account: Account | None) -> Response:
        for held in self.holds:
            if held.times > 0 and held.verb in (None, verb) and held.resource in (None, route.kind.plural):
                held.times -= 1
                held.entered.set()
                while not held.released.is_set() and not self._stopping:
                    await asyncio.sleep(0.01)
                break
        for fault in self.faults:
            if fault.times > 0 and fault.verb in (None, verb) and fault.resource in (None, route.kind.plural):
                fault.times -= 1
                if fault.content_type != "application/json":
                    return Response(fault.message, status_code=fault.code, media_type=fault.content_type)
                if fault.retry_after is not None:  # as API Priority and Fairness does when it rejects a request
                    details = {"retryAfterSeconds": fault.retry_after}
                    response = _error(fault.code, fault.reason, fault.message, details)
                    response.headers["Retry-After"] = str(fault.retry_after)
                    return response
                return _error(fault.code, fault.reason, fault.message)
        if not self._allowed(verb, route, account):
            return self._forbidden(verb, route, account)
        try:
            if verb == "get":
                obj = self.store.get((route.kind.group, route.kind.plural, route.namespace, route.name))
                if obj is None:
                    return _error(404, "NotFound", f'{route.kind.plural} "{route.name}" not found')
                return _json(obj)
            if verb in ("list", "watch"):
                labels = label_selector(request.query_params.get("labelSelector"))
                fields = field_selector(request.query_params.get("fieldSelector"))
                if verb == "watch":
                    return self._watch(request, route, labels, fields)
                return self._list(route, labels, fields)
            if verb == "patch":
                return await self._patch(request, route, account)
            if verb == "create" and not route.name:
                return await self._create(request, route)
            if verb == "delete":
                self.store.delete((route.kind.group, route.kind.plural, route.namespace, route.name))
                return _json(status_body(200, "", "deleted") | {"status": "Success"})
            return _error(405, "MethodNotAllowed", f"{verb} is not supported by this test server")
        except SelectorError as e:
            return _error(400, "BadRequest", str(e))
        except StoreError as e:
            return _error(e.code, e.reason, e.message, e.details)

    def _list(self, route: _Route, labels: Any, fields: Any) -> Response:
        items, rv = self.store.list(route.kind, route.namespace if route.kind.namespaced and route.namespace else None)
        items = [i for i in items if labels(i) and fields(i)]
        return _json(
            {
                "kind": f"{route.kind.kind}List",
                "apiVersion": route.kind.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        )

    def _watch(self, request: Request, route: _Route, labels: Any, fields: Any) -> Response:
        since_text = request.query_params.get("resourceVersion") or ""
        timeout = min(float(request.query_params.get("timeoutSeconds") or self.max_watch_s), self.max_watch_s)
        namespace = route.namespace if route.kind.namespaced else ""

        def relevant(key: Key, obj: dict[str, Any]) -> bool:
            return (
                key[:2] == (route.kind.group, route.kind.plural)
                and (not namespace or key[2] == namespace)
                and labels(obj)
                and fields(obj)
            )

        async def stream() -> Any:
            if since_text and since_text != "0":
                since = int(since_text)
                if since < self.store.compacted:
                    gone = status_body(410, "Expired", f"too old resource version: {since} ({self.store.compacted})")
                    yield json.dumps({"type": "ERROR", "object": gone}) + "\n"
                    return
                with self.store.lock:
                    pos = next((i for i, e in enumerate(self.store.events) if e.rv > since), len(self.store.events))
            else:
                with self.store.lock:
                    pos = len(self.store.events)
                    current = [(k, o) for k, o in sorted(self.store.objects.items()) if relevant(k, o)]
                for _, obj in current:
                    yield json.dumps({"type": "ADDED", "object": obj}) + "\n"
            end = time.monotonic() + timeout
            while not self._stopping and time.monotonic() < end:
                with self.store.lock:
                    fresh = self.store.events[pos:]
                    pos = len(self.store.events)
                for event in fresh:
                    if relevant(event.key, event.obj):
                        yield json.dumps({"type": event.type, "object": event.obj}) + "\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(stream(), media_type="application/json")

    async def _patch(self, request: Request, route: _Route, account: Account | None) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != APPLY:
            return _error(415, "UnsupportedMediaType", f"only server-side apply is served here, not {content_type}")
        manager = request.query_params.get("fieldManager")
        if not manager:
            return _error(400, "BadRequest", "PATCH, application/apply-patch+yaml: fieldManager is required")
        try:
            body = yaml.safe_load(await request.body())
        except yaml.YAMLError as e:
            return _error(400, "BadRequest", f"error decoding YAML: {e}")
        if not isinstance(body, dict):
            return _error(
                400, "BadRequest", f"error decoding YAML: cannot unmarshal {type(body).__name__} into an object"
            )
        if body.get("apiVersion") != route.kind.api_version or body.get("kind") != route.kind.kind:
            return _error(400, "BadRequest", f"apiVersion/kind must be {route.kind.api_version}/{route.kind.kind}")
        meta = body.get("metadata") or {}
        if meta.get("name") != route.name or meta.get("namespace", route.namespace) != route.namespace:
            return _error(400, "BadRequest", "the name (and namespace) of the object does not match the URL")
        key = (route.kind.group, route.kind.plural, route.namespace, route.name)
        force = request.query_params.get("force") == "true"
        existed = self.store.get(key) is not None
        if not existed and not self._allowed("create", route, account):
            return self._forbidden("create", route, account)
        return self._store(route, key, body, manager, force)

    async def _create(self, request: Request, route: _Route) -> Response:
        """POST to a collection (what `kubectl apply` without --server-side sends for an object that is not there):
        stored as if applied by its field manager (kubectl-client-side-apply), 409 when the name is taken."""
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return _error(400, "BadRequest", f"error decoding JSON: {e}")
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            return _error(400, "BadRequest", "the body must be an object with metadata")
        if body.get("apiVersion") != route.kind.api_version or body.get("kind") != route.kind.kind:
            return _error(400, "BadRequest", f"apiVersion/kind must be {route.kind.api_version}/{route.kind.kind}")
        name, namespace = body["metadata"].get("name"), body["metadata"].get("namespace", route.namespace)
        if not isinstance(name, str) or not name:
            return _error(422, "Invalid", f"{route.kind.kind} is invalid: metadata.name: Required value")
        if namespace != route.namespace:
            return _error(400, "BadRequest", "the namespace of the object does not match the URL")
        key = (route.kind.group, route.kind.plural, route.namespace, name)
        if self.store.get(key) is not None:
            qualified = f"{route.kind.plural}.{route.kind.group}" if route.kind.group else route.kind.plural
            details = {"name": name, "group": route.kind.group, "kind": route.kind.plural}
            return _error(409, "AlreadyExists", f'{qualified} "{name}" already exists', details)
        manager = request.query_params.get("fieldManager") or "unknown"
        return self._store(_Route(route.kind, route.namespace, name), key, body, manager, False)

    def _store(self, route: _Route, key: Key, body: dict[str, Any], manager: str, force: bool) -> Response:
        def check(merged: dict[str, Any]) -> None:
            if self.kubernetes_version is None:
                return
            refusal = check_apply(body, merged, route.kind.group, route.name, route.namespace, self.kubernetes_version)
            if refusal is not None:
                raise StoreError(refusal.code, refusal.reason, refusal.message, refusal.details)

        obj, created, spec_changed = self.store.apply(route.kind, key, body, manager, force, check)
        if route.kind.kind == "Deployment" and spec_changed and self.controller != "off":
            assert self._loop is not None
            self._loop.call_later(self.controller_delay_s, self._reconcile, key)
        return _json(obj, 201 if created else 200)

    def _reconcile(self, key: Key) -> None:
        """The Deployment controller: report the rollout of the current generation as the mode says."""
        obj = self.store.get(key)
        if obj is None or self.controller == "off":
            return
        if self.controller == "ready":
            self._run_pods(obj)
        self.store.set_status(key, deployment_status(obj, self.controller))

    def pods(self, namespace: str, **labels: str) -> list[dict[str, Any]]:
        """The pods in `namespace` whose labels include `labels`, by name."""
        items, _ = self.store.list(self.store_kind("pods"), namespace)
        return [p for p in items if labels.items() <= (p["metadata"].get("labels") or {}).items()]

    def _run_pods(self, deployment: dict[str, Any]) -> None:
        """Pods of the current template, running and ready, `spec.replicas` of them; others are deleted (their
        IPs freed). A template change replaces every pod at once (no surge: the test needs no rolling update)."""
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        template = spec.get("template") or {}
        if not (spec.get("selector") or {}).get("matchLabels") or not (template.get("metadata") or {}).get("labels"):
            return  # not a Deployment our code renders (tests of the server itself): status only
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        selector = spec["selector"]["matchLabels"]
        kind = self.store_kind("pods")
        mine = [p for p in self.pods(meta["namespace"], **selector) if p["metadata"]["name"].startswith(meta["name"])]
        keep = [p for p in mine if p["metadata"]["labels"].get("pod-template-hash") == digest]
        replicas = int(spec.get("replicas", 1))
        for pod in [p for p in mine if p not in keep[:replicas]]:
            self.store.delete(("", "pods", meta["namespace"], pod["metadata"]["name"]))
        # owned by the Deployment itself (a real one owns a ReplicaSet that owns them): deleting the Deployment
        # deletes them (the store's garbage collection)
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        for _ in range(len(keep), replicas):
            ip = self._free_pod_ip()
            name = f"{meta['name']}-{digest}-{ip.rsplit('.', 1)[1]}"
            self.store.put(
                kind,
                {
                    "metadata": {
                        "name": name,
                        "namespace": meta["namespace"],
                        "labels": {**template["metadata"]["labels"], "pod-template-hash": digest},
                        "ownerReferences": [owner],
                    },
                    "spec": template["spec"],
                    "status": {
                        "phase": "Running",
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )

    def _free_pod_ip(self) -> str:
        """The lowest loopback pod IP no pod holds (a deleted pod's IP is free again)."""
        items, _ = self.store.list(self.store_kind("pods"), None)
        used = {(p.get("status") or {}).get("podIP") for p in items}
        address = ipaddress.IPv4Address("127.0.0.2")
        while str(address) in used:
            address += 1
        return str(address)


def _matches(allowed: list[str] | None, value: str) -> bool:
    return allowed is not None and ("*" in allowed or value in allowed)


SERVED_VERBS = ("create", "get", "list", "watch", "patch", "delete")  # patch: server-side apply only


def _api_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _openapi(group: str, version: str, kinds: list[Kind]) -> dict[str, Any]:
    """The OpenAPI v3 document of one group/version, as much as kubectl reads: each kind's PATCH operation, tagged
    with its group/version/kind and taking the `fieldValidation` query parameter (no schemas: not needed)."""
    paths = {}
    for kind in kinds:
        scope = "/namespaces/{namespace}" if kind.namespaced else ""
        operation = {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind.kind},
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                for name in ("dryRun", "fieldManager", "fieldValidation", "force")
            ],
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"/{_api_path(group, version)}{scope}/{kind.plural}/{{name}}"] = {"patch": operation}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1"}, "paths": paths}


def _json(obj: Any, code: int = 200) -> Response:
    return Response(json.dumps(obj), status_code=code, media_type="application/json")


__all__ = ["Account", "ApiServer", "Fault", "Hold", "Recorded", "Rule"]

"""The test API server's object store: server-side apply with field managers, resourceVersion, generation,
and an event log that watches read from. Thread-safe (tests seed nodes from their own thread)."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str, str]  # group, plural, namespace ("" for cluster-scoped), name
Path = tuple[str, ...]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "configmaps", "ConfigMap", True),
    Kind("", "v1", "services", "Service", True),
    Kind("", "v1", "pods", "Pod", True),
    Kind("apps", "v1", "deployments", "Deployment", True),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    # what deploy/ installs besides (`kubectl apply -k deploy/overlays/<name> --server-side`)
    Kind("", "v1", "serviceaccounts", "ServiceAccount", True),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
]
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}


class StoreError(Exception):
    """Answered as a Kubernetes Status with `code` and `reason`."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}


@dataclass
class Event:
    rv: int
    type: str
    key: Key
    obj: dict[str, Any]


def _leaves(value: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Flatten a document into leaf paths; lists are atomic (as SSA treats lists without merge keys)."""
    if isinstance(value, dict):  # an empty map owns nothing (and must not overwrite what is there)
        out: dict[Path, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, (*prefix, k)))
        return out
    return {prefix: value}


def _set(doc: dict[str, Any], path: Path, value: Any) -> None:
    for part in path[:-1]:
        nxt = doc.get(part)
        if not isinstance(nxt, dict):
            nxt = doc[part] = {}
        doc = nxt
    doc[path[-1]] = copy.deepcopy(value)


def _delete(doc: dict[str, Any], path: Path) -> None:
    parents = [doc]
    for part in path[:-1]:
        doc = doc.get(part)  # type: ignore[assignment]
        if not isinstance(doc, dict):
            return
        parents.append(doc)
    doc.pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # prune parents left empty
        if not parents[depth]:
            parents[depth - 1].pop(path[depth - 1], None)


class Store:
    """Objects by key, a global resourceVersion counter and the event log of every change."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.objects: dict[Key, dict[str, Any]] = {}
        self.owners: dict[Key, dict[str, dict[Path, Any]]] = {}  # field manager -> owned leaves
        self.events: list[Event] = []
        self.compacted = 0  # watches from a resourceVersion at or below this get 410 Gone
        self.namespaces: set[str] = {"default", "kube-system"}
        self.terminating: set[str] = set()  # namespaces deleted while they hold objects

    def _bump(self, etype: str, key: Key, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append(Event(self.rv, etype, key, copy.deepcopy(obj)))

    def get(self, key: Key) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: Kind, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self.objects.items())
                if (g, p) == (kind.group, kind.plural) and (namespace is None or ns == namespace)
            ]
            return items, self.rv

    def put(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a test fixture would (no field management), emitting an event."""
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            key = (kind.group, kind.plural, meta.get("namespace", "") if kind.namespaced else "", meta["name"])
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            old = self.objects.get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            self.objects[key] = obj
            self._bump("MODIFIED" if old else "ADDED", key, obj)
            return copy.deepcopy(obj)

    def delete(self, key: Key) -> None:
        """Delete one object, then its dependents as Kubernetes' garbage collector does (background propagation):
        every object of its namespace whose `metadata.ownerReferences` name its uid, and theirs in turn."""
        with self.lock:
            obj = self.objects.get(key)
            if obj is None:
                raise StoreError(404, "NotFound", f'{key[1]} "{key[3]}" not found')
            if key[:2] == ("", "namespaces") and any(k[2] == key[3] for k in self.objects):
                self._terminate(key, obj)
                return
            self.objects.pop(key)
            self.owners.pop(key, None)
            self._bump("DELETED", key, obj)
            if key[:2] == ("", "namespaces"):
                self.namespaces.discard(key[3])
            uid = obj["metadata"].get("uid")
            dependents = [
                k
                for k, o in self.objects.items()
                if k[2] == key[2] and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            ]
            for dependent in dependents:
                if dependent in self.objects:
                    self.delete(dependent)
            namespace = ("", "namespaces", "", key[2])
            if (
                key[2] in self.terminating
                and namespace in self.objects
                and not any(k[2] == key[2] for k in self.objects)
            ):
                self.terminating.discard(key[2])
                self.delete(namespace)  # its last object is gone: so is the namespace

    def _terminate(self, key: Key, obj: dict[str, Any]) -> None:
        """A namespace that holds objects is Terminating until they are deleted: a real namespace controller deletes
        them itself; this store leaves that to the client (`kubectl delete -k` deletes every object it applied).
        Nothing new can be created in it meanwhile."""
        if key[3] in self.terminating:
            return
        self.terminating.add(key[3])
        obj["metadata"]["deletionTimestamp"] = _now()
        obj["status"] = {"phase": "Terminating"}
        self._bump("MODIFIED", key, obj)

    def set_status(self, key: Key, status: dict[str, Any]) -> dict[str, Any] | None:
        """Replace an object's status (what a controller does); None when the object is gone."""
        with self.lock:
            obj = self.objects.get(key)
            if obj is None:
                return None
            if obj.get("status") == status:
                return copy.deepcopy(obj)
            obj["status"] = copy.deepcopy(status)
            self._bump("MODIFIED", key, obj)
            return copy.deepcopy(obj)

    def apply(
        self,
        kind: Kind,
        key: Key,
        body: dict[str, Any],
        manager: str,
        force: bool,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, Any], bool, bool]:
        """Server-side apply `body` as `manager`. Returns (object, created, spec changed).

        `check(merged)` sees the object as it would be stored and may refuse it by raising StoreError; nothing
        changes then (the schema validation of the server).

        Raises:
            StoreError: 409 Conflict when another manager owns a field with a different value and not `force`;
                404 when the namespace does not exist; what `check` raises.
        """
        with self.lock:
            saved = copy.deepcopy(self.owners.get(key))
            try:
                return self._apply(kind, key, body, manager, force, check)
            except StoreError:
                if saved is None:
                    self.owners.pop(key, None)
                else:
                    self.owners[key] = saved
                raise

    def _apply(
        self,
        kind: Kind,
        key: Key,
        body: dict[str, Any],
        manager: str,
        force: bool,
        check: Callable[[dict[str, Any]], None] | None,
    ) -> tuple[dict[str, Any], bool, bool]:
        if kind.namespaced and key[2] not in self.namespaces:
            raise StoreError(
                404, "NotFound", f'namespaces "{key[2]}" not found', {"name": key[2], "kind": "namespaces"}
            )
        if kind.namespaced and key[2] in self.terminating and key not in self.objects:
            raise StoreError(
                403,
                "Forbidden",
                f'{kind.plural} "{key[3]}" is forbidden: unable to create new content in namespace {key[2]} '
                "because it is being terminated",
                {"name": key[3], "kind": kind.plural},
            )
        applied = copy.deepcopy(body)
        applied.pop("status", None)
        meta = applied.get("metadata", {})
        for auto in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ):
            meta.pop(auto, None)
        new_leaves = {p: v for p, v in _leaves(applied).items() if p not in (("apiVersion",), ("kind",))}
        old = self.objects.get(key)
        owners = self.owners.setdefault(key, {})
        conflicts = [
            (other, ".".join(path))
            for other, leaves in owners.items()
            if other != manager
            for path, value in new_leaves.items()
            if path in leaves and leaves[path] != value
        ]
        if conflicts and not force:
            details = [
                {"type": "FieldManagerConflict", "message": f'conflict with "{m}"', "field": f".{f}"}
                for m, f in conflicts
            ]
            fields = ", ".join(f".{f} (owned by {m!r})" for m, f in conflicts)
            raise StoreError(
                409, "Conflict", f"Apply failed with {len(conflicts)} conflicts: {fields}", {"causes": details}
            )
        for other, _ in conflicts:
            for path in [p for p in owners[other] if p in new_leaves]:
                owners[other].pop(path)
        obj = copy.deepcopy(old) if old else {"metadata": {}}
        owned_before = owners.get(manager, {})
        others = {p for m, leaves in owners.items() if m != manager for p in leaves}
        for path in owned_before:
            if path not in new_leaves and path not in others:
                _delete(obj, path)
        for path, value in new_leaves.items():
            _set(obj, path, value)
        owners[manager] = new_leaves
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        m = obj.setdefault("metadata", {})
        m["name"] = key[3]
        if kind.namespaced:
            m["namespace"] = key[2]
        m["managedFields"] = [
            {"manager": name, "operation": "Apply", "apiVersion": kind.api_version, "fieldsType": "FieldsV1"}
            for name in sorted(owners)
        ]
        created = old is None
        if created:
            m["uid"] = str(uuid.uuid4())
            m["creationTimestamp"] = _now()
            if "spec" in obj:
                m["generation"] = 1
        spec_changed = created or (old or {}).get("spec") != obj.get("spec")
        if old is not None and spec_changed and "spec" in obj:  # (old is None: created)
            m["generation"] = int(old["metadata"].get("generation", 0)) + 1
        if check is not None:
            check(obj)
        if old is not None and _without_rv(old) == _without_rv(obj):
            return copy.deepcopy(old), False, False  # a no-op apply changes nothing, not even resourceVersion
        self.objects[key] = obj
        if created and key[:2] == ("", "namespaces"):
            self.namespaces.add(key[3])
        self._bump("ADDED" if created else "MODIFIED", key, obj)
        return copy.deepcopy(obj), created, spec_changed


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].pop("resourceVersion", None)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

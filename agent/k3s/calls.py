"""Every Kubernetes API call cluster mode makes, declared once.

The Role and ClusterRole in `deploy/` must grant exactly these (a test parses the manifests and compares),
and the tests record every request the code sends to the test API server and check it against this list.
Verbs are RBAC verbs: a server-side apply is a `patch`, and one that creates the object also needs `create`.
"""

from __future__ import annotations

from typing import NamedTuple


class ApiCall(NamedTuple):
    """One RBAC permission: `verb` on `resource` of API `group` ("" is the core group)."""

    verb: str
    resource: str
    group: str
    cluster_scoped: bool = False


API_CALLS: tuple[ApiCall, ...] = (
    # inventory: nodes are cluster-scoped, so these come from a ClusterRole
    ApiCall("list", "nodes", "", cluster_scoped=True),
    ApiCall("watch", "nodes", "", cluster_scoped=True),
    # the serving workload, by server-side apply (patch; create the first time); each object is read first:
    # one of that name that we did not apply is refused, never overwritten or deleted; each is also read back
    # periodically (a workload with an object deleted by someone is applied again)
    ApiCall("get", "configmaps", ""),
    ApiCall("get", "services", ""),
    ApiCall("get", "deployments", "apps"),
    ApiCall("get", "horizontalpodautoscalers", "autoscaling"),
    ApiCall("create", "configmaps", ""),
    ApiCall("patch", "configmaps", ""),
    ApiCall("create", "services", ""),
    ApiCall("patch", "services", ""),
    ApiCall("create", "deployments", "apps"),
    ApiCall("patch", "deployments", "apps"),
    ApiCall("create", "horizontalpodautoscalers", "autoscaling"),
    ApiCall("patch", "horizontalpodautoscalers", "autoscaling"),
    # a model no longer desired: its workload is deleted; autoscaling turned off in a later desired state:
    # the HPA we applied is removed (404 when there is none)
    ApiCall("delete", "configmaps", ""),
    ApiCall("delete", "services", ""),
    ApiCall("delete", "deployments", "apps"),
    ApiCall("delete", "horizontalpodautoscalers", "autoscaling"),
    # rollout: watch the Deployment until ready or our deadline; on failure, say why from its pods
    ApiCall("watch", "deployments", "apps"),
    ApiCall("list", "pods", ""),
)

"""Typed errors of cluster mode. Each carries a stable `code` (reported to the hub) and whether a retry can help.

They are `agent.errors.AgentError`s (`message`, `code`, `permanent`), so the control side reports them like
its own. Permanent errors (RBAC denies a call, the API refuses an object) need a person or a new desired
state; temporary ones (the API server unreachable, 5xx, 429) were already retried here and may pass later.
"""

from __future__ import annotations

from agent.errors import ClusterError

__all__ = ["ApiCallError", "ClusterConfigError", "ClusterError", "WorkloadError"]


class ClusterConfigError(ClusterError, ValueError):
    """No usable Kubernetes configuration (service account, KUBECONFIG or explicit path), or a bad setting."""

    code = "cluster_config"


class WorkloadError(ClusterError, ValueError):
    """The desired state cannot be turned into a workload (a bad MIG profile, a too large descriptor)."""

    code = "invalid_workload"


class ApiCallError(ClusterError):
    """The Kubernetes API refused a call or could not be reached; `status` is the HTTP status (0: no answer),
    `retry_after` the seconds the server asked us to wait before trying again (its Retry-After; None: none)."""

    code = "cluster_api"

    def __init__(
        self, message: str, *, code: str, permanent: bool, status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code, permanent=permanent)
        self.status = status
        self.retry_after = retry_after

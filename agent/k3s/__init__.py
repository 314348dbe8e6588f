"""Cluster mode on K3s: node inventory and server-side apply of the serving workload (the only lightkube user).

Public API: `ClusterSettings` (env `EDGEFLEET_K3S_*`), `ClusterBridge(settings)` implementing
`agent.ports.ClusterPort`, `render_workload(desired, model, settings)` (pure; one workload per model),
`API_CALLS` (what the code may call) and the errors. `agent.k3s.cli.app` is the `edgefleet k3s` command group.
"""

from typing import TYPE_CHECKING, Any

from agent.k3s.calls import API_CALLS, ApiCall
from agent.k3s.errors import ApiCallError, ClusterConfigError, ClusterError, WorkloadError
from agent.k3s.render import Workload, render_workload, template_hash
from agent.k3s.settings import ClusterSettings

if TYPE_CHECKING:
    from agent.k3s.bridge import ClusterBridge


def __getattr__(name: str) -> Any:
    """Import the bridge (and lightkube, ~150 ms) only when it is used, so `edgefleet --help` stays fast."""
    if name == "ClusterBridge":
        from agent.k3s.bridge import ClusterBridge  # noqa: PLC0415

        return ClusterBridge
    raise AttributeError(f"module 'agent.k3s' has no attribute {name!r}")


__all__ = [
    "API_CALLS",
    "ApiCall",
    "ApiCallError",
    "ClusterBridge",
    "ClusterConfigError",
    "ClusterError",
    "ClusterSettings",
    "Workload",
    "WorkloadError",
    "render_workload",
    "template_hash",
]

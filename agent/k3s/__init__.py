"""Cluster mode on K3s: node inventory and server-side apply of the serving workload (the only lightkube user).

Public API: `ClusterSettings` (env `EDGEFLEET_K3S_*`), `ClusterBridge(settings)` implementing
`agent.ports.ClusterPort`, `render_workload(desired, settings)` (pure), `API_CALLS` (what the code may call)
and the errors. `agent.k3s.cli.app` is the `edgefleet k3s` command group.
"""

from agent.k3s.bridge import ClusterBridge
from agent.k3s.calls import API_CALLS, ApiCall
from agent.k3s.errors import ApiCallError, ClusterConfigError, ClusterError, WorkloadError
from agent.k3s.render import Workload, render_workload, template_hash
from agent.k3s.settings import ClusterSettings

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

"""The seam between the agent's control side (download, activation, telemetry) and its serving side.

The control side owns *when* a model becomes active; the serving side owns *how* requests reach it. They
meet only through `ServingPort`, so each is tested without the other and single-device mode (one process)
and cluster mode (`edgefleet agent serve` in pods) wire the same two halves differently. Every serving mode
implements the port with the same core, `agent.serving.ModelSlot` (HTTP API or headless).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fleet.histogram import Histogram
from fleet.messages import AppliedModel, ClusterWorkload, DesiredState, NodeInfo, RuntimeOptions, ShadowStats

if TYPE_CHECKING:  # the engine module imports onnxruntime; the control side needs only the type
    from models.descriptor import ModelDescriptor
    from models.engine import Engine


@dataclass(frozen=True)
class ServingWindow:
    """What the serving side saw since the previous window (the control side turns it into telemetry)."""

    requests: int
    errors: int
    latency: Histogram
    queue_depth: int
    shadow: ShadowStats | None = None


class ServingPort(Protocol):
    """Implemented by the serving side; called by the control side."""

    def activate(
        self, engine: Engine, model: AppliedModel, descriptor: ModelDescriptor, runtime: RuntimeOptions | None = None
    ) -> None:
        """Make `engine` (loaded, warmed up, golden-checked) the active model, described by `descriptor`.

        `runtime` carries the batching and queue limits of the desired state (None: the serving defaults).

        Requests in flight finish on the old engine; new requests go to the new one. The old engine is
        closed by the serving side once its last request has finished.
        """

    def set_shadow(self, engine: Engine | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside the active model on `sample_rate` of requests (None: stop shadowing)."""

    def deactivate(self) -> None:
        """Serve nothing (the desired state names no model); requests get 503."""

    def take_window(self) -> ServingWindow:
        """Counters since the last call, then reset them."""


class ClusterPort(Protocol):
    """Implemented by `agent.k3s` (cluster mode); called by the control side from its own thread.

    Every method blocks and returns a result or raises `agent.errors.ClusterError` (with a code and a
    reason); none may take the agent down. Without Kubernetes the agent has no ClusterPort at all.
    """

    def inventory(self) -> list[NodeInfo]:
        """The cluster's nodes with allocatable GPU and MIG resources and readiness (for the birth message)."""

    def watch_inventory(self, on_change: Callable[[list[NodeInfo]], None]) -> None:
        """Call `on_change(nodes)` (from the port's own thread) whenever the node inventory changes."""

    def apply(self, desired: DesiredState) -> ClusterWorkload:
        """Server-side apply the serving workload for `desired` and wait until ready or our own deadline."""

    def close(self) -> None:
        """Release the client and its event loop."""

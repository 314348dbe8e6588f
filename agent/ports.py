"""The seams of the agent's control side (download, activation, telemetry).

The control side owns *when* a model becomes active; the serving side owns *how* requests reach it. They
meet only through `ServingPort`, so each is tested without the other and single-device mode (one process)
and cluster mode (`edgefleet agent serve` in pods) wire the same two halves differently. Every serving mode
implements the port with the same core, `agent.serving.ModelRepository` (one `ModelSlot` per model name;
HTTP API or headless). Every call names its model: a device serves several, each swapped on its own.

The reconciler reaches loading and serving through `ActivationPort`: the agent's is
`agent.activation.EngineActivation` (onnxruntime engines handed to a `ServingPort`); the fleet simulator
(the `sim` package) implements it without loading anything, so it runs the agent's own reconciler and download.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.errors import AgentError
from fleet.histogram import Histogram
from fleet.messages import (
    AppliedModel,
    ClusterWorkload,
    DesiredState,
    ModelRef,
    NodeInfo,
    RuntimeOptions,
    ShadowStats,
)

if TYPE_CHECKING:  # the engine module imports onnxruntime; the control side needs only the type
    from models.descriptor import ModelDescriptor
    from models.engine import Engine


@dataclass(frozen=True)
class ServedVersions:
    """What the control side made one model serve: its active version and its shadow candidate (None: none)."""

    active: str
    shadow: str | None = None


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
        """Make `engine` (loaded, warmed up, golden-checked) the active version of model `model.name`.

        `runtime` carries the batching and queue limits of the model's slot (None: the serving defaults).

        Requests in flight finish on the old engine of that model; new requests go to the new one. The old
        engine is closed by the serving side once its last request has finished. Other models are untouched.
        """

    def set_shadow(self, name: str, engine: Engine | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside model `name`'s active version on `sample_rate` of its requests (None: stop)."""

    def deactivate(self, name: str) -> None:
        """Stop serving model `name` (its requests get 404); in-flight ones finish. Others are untouched."""

    def take_windows(self) -> dict[str, ServingWindow]:
        """Counters of every model since the last call, by model name, then reset them."""


@dataclass
class Restart:
    """What serves again of one model after a (re)start, from the store's pointers, and what went wrong on the way."""

    active: AppliedModel | None = None
    runtime: RuntimeOptions | None = None
    previous: AppliedModel | None = None
    size: int = 0  # bytes of the active version's blob (the memory budget's input)
    errors: list[AgentError] = field(default_factory=list)


class ActivationPort(Protocol):
    """Implemented by whatever loads models and serves them; called by the reconciler (control thread).

    Every call concerns one model (`ref.name` or `name`) and leaves the device's other models untouched. A
    version that must not serve raises `agent.errors.ActivationError` (its code names the failed step) and
    leaves what serves untouched.
    """

    def restore(self, name: str) -> Restart:
        """Serve model `name`'s stored active version again (or its previous one when the active one fails)."""

    def activate(self, path: Path, ref: ModelRef, runtime: RuntimeOptions) -> AppliedModel:
        """Load the verified blob at `path` as `ref`, check it, then make it the version of `ref.name` that serves."""

    def set_shadow(self, path: Path, ref: ModelRef, runtime: RuntimeOptions, sample_rate: float) -> AppliedModel:
        """Load the blob at `path` as the shadow candidate `ref`, run beside `ref.name` on `sample_rate`."""

    def clear_shadow(self, name: str) -> None:
        """Stop shadowing model `name`."""

    def deactivate(self, name: str) -> None:
        """Stop serving model `name` (the desired state no longer names it)."""


@dataclass(frozen=True)
class WorkloadNow:
    """One model's serving workload as the cluster has it now (see `ClusterPort.check`)."""

    rollout: ClusterWorkload | None  # its Deployment's rollout; None when the Deployment is gone
    missing: tuple[str, ...] = ()  # each object of the workload that is gone, as "<Kind> <namespace>/<name>"


@dataclass(frozen=True)
class ClusterCheck:
    """What one periodic round of `ClusterPort.check` found and did, per model; a failure is the error (an
    `agent.errors.ClusterError` with its code and reason) in place of the result."""

    desired_version: int  # the desired state the round worked for
    workloads: dict[str, WorkloadNow | AgentError] = field(default_factory=dict)  # read back
    applied: dict[str, ClusterWorkload | AgentError] = field(default_factory=dict)  # applied again
    removed: dict[str, AgentError | None] = field(default_factory=dict)  # removed again (None: done)


class ClusterPort(Protocol):
    """Implemented by `agent.k3s` (cluster mode); called by the control side from its own thread.

    Every method but `check` blocks and returns a result or raises `agent.errors.ClusterError` (with a code and
    a reason); none may take the agent down. Without Kubernetes the agent has no ClusterPort at all.
    """

    def inventory(self) -> list[NodeInfo]:
        """The cluster's nodes with allocatable GPU and MIG resources and readiness (for the birth message)."""

    def watch_inventory(self, on_change: Callable[[list[NodeInfo]], None]) -> None:
        """Call `on_change(nodes)` (from the port's own thread) whenever the node inventory changes."""

    def apply(self, desired: DesiredState, name: str) -> ClusterWorkload:
        """Server-side apply the serving workload of model `name` of `desired` (one Deployment per model) and
        wait until it is ready or our own deadline."""

    def check(
        self, desired: DesiredState, *, read: Sequence[str], apply: Sequence[str], remove: Sequence[str]
    ) -> Future[ClusterCheck]:
        """Start the periodic round in the port's own thread and return at once (the control thread stays free
        for a new desired state while the API server is slow): read back the workloads of models `read` of
        `desired` (each one's rollout and every object of it that is gone), apply those of `apply` again (as
        `apply` does), remove those of `remove` again. The future never raises; `apply` and `remove` cancel a
        round still in progress first (it is then cancelled)."""

    def remove(self, name: str) -> None:
        """Delete the serving workload of model `name` (no longer desired); nothing to delete is not an error."""

    def serving_windows(self, models: Mapping[str, ServedVersions]) -> dict[str, ServingWindow]:
        """What the serving pods of each model in `models` served since the previous call, of its active version
        only (cluster-mode telemetry: a pod still serving another version adds nothing), with what its shadow
        candidate did when one runs.

        Bounded by the port's own timeouts and never raises: a model whose pods cannot be listed is left out, a
        pod that does not answer is not counted this time (its next answer covers both windows).
        """

    def close(self) -> None:
        """Release the client and its event loop."""

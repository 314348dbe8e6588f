"""What the reconciler knows about each model of the device, and how it reports it.

A device serves several models; each goes through download, activation, shadow and rollback on its own,
so each has its own phase, error, versions and the desired-state version its work was last settled for.
`ModelState` holds that, `ModelState.status` turns it into the wire's `ModelStatus`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.messages import (
    AppliedModel,
    ClusterWorkload,
    DesiredModel,
    DownloadProgress,
    ErrorInfo,
    ModelStatus,
    Phase,
    RuntimeOptions,
)


@dataclass
class ModelState:
    """One model's state on the device (mutable; the reconciler's control thread is its only writer)."""

    name: str
    phase: Phase = Phase.IDLE
    error: ErrorInfo | None = None
    active: AppliedModel | None = None
    runtime: RuntimeOptions | None = None  # the runtime options `active` runs with
    size: int = 0  # file bytes of `active` (memory budget)
    previous: AppliedModel | None = None
    shadow: AppliedModel | None = None
    shadow_size: int = 0
    shadow_rate: float = 0.0  # the share of requests the shadow runs on (a new rate reloads it)
    cluster: ClusterWorkload | None = None
    # cluster mode: why its workload is not as desired (not applied, an object missing, not removed); the
    # periodic round applies it again (or removes it again, once no longer desired) until this is cleared
    cluster_error: ErrorInfo | None = None
    settled: int | None = None  # desired version whose work for this model is done (or failed for good)
    failed: tuple[str, RuntimeOptions] | None = None  # (sha256, runtime) whose activation failed for good
    removed_at: float | None = None  # no longer desired: idle, kept as previous

    def serves(self, slot: DesiredModel) -> bool:
        """True when the active version is the slot's model with the slot's runtime options."""
        a, ref = self.active, slot.model
        return (
            a is not None
            and a.sha256 == ref.blob.sha256
            and (a.name, a.version) == (ref.name, ref.version)
            and self.runtime == slot.runtime
        )

    def failed_before(self, slot: DesiredModel) -> bool:
        """True when exactly this version with these runtime options already failed to activate."""
        return self.failed == (slot.model.blob.sha256, slot.runtime)

    def status(self, download: DownloadProgress | None) -> ModelStatus:
        """This model as reported (`download`: the transfer in progress, when it is one of this model's blobs)."""
        return ModelStatus(
            name=self.name, phase=self.phase, active=self.active, previous=self.previous, shadow=self.shadow,
            download=download, error=self.reported_error(), cluster=self.cluster,
        )  # fmt: skip

    def reported_error(self) -> ErrorInfo | None:
        """The latest of the model's error and its cluster error (each kept until its own cause is cleared)."""
        errors = [e for e in (self.error, self.cluster_error) if e is not None]
        return max(errors, key=lambda e: e.at) if errors else None

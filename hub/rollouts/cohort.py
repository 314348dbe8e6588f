"""What the controller sees of each device (`DeviceView`), what it wants it to run (`Target`), and the derived
per-device state inside a rollout (pending, shadowing, updating, active, failed, offline, ...).

Transport-free: the engine builds `DeviceView`s from the store; tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.rollouts.model import DeviceEntry, Rollout, RolloutState, Wave, WavePhase

Ref = tuple[str, str]  # (model name, version)


@dataclass(frozen=True)
class DeviceView:
    """One device as the hub knows it: labels, reachability, its stored desired state, its last report."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = True
    desired_version: int | None = None
    desired_rollout: str | None = None
    desired_model: Ref | None = None
    desired_shadow: Ref | None = None
    desired_runtime: dict[str, Any] = field(default_factory=dict)
    accepted: int | None = None
    phase: str | None = None
    active: Ref | None = None
    shadow: Ref | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def caught_up(self) -> bool:
        """The device has accepted its stored desired state (its reports are about it)."""
        return self.desired_version is not None and self.accepted is not None and self.accepted >= self.desired_version


@dataclass(frozen=True)
class Target:
    """The desired state the rollout wants a device to have."""

    device_id: str
    model: Ref | None
    shadow: Ref | None = None
    shadow_rate: float | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    step: str = ""

    def published(self, view: DeviceView | None, rollout_id: str) -> bool:
        """True when the device's stored desired state already is this target (from this rollout).

        A target without the model (a rollback of a device that had none) is there when the stored state has
        no slot for the model: a removed slot names no rollout, so asking for this rollout's id would sign the
        removal again at every tick and never end the rollback.
        """
        if view is None:
            return False
        if self.model is None and self.shadow is None:
            return view.desired_model is None and view.desired_shadow is None
        slot = (view.desired_rollout, view.desired_model, view.desired_shadow)
        return slot == (rollout_id, self.model, self.shadow)


# Download errors the agent retries by itself (`permanent` false on the wire) but that only a person ends: the
# disk is too small for the version, or it turned read-only. A device stalled on one counts as failed at once,
# so a canary whose disk is full fails the canary with the reason instead of waiting out `offline_timeout_s`;
# any other download error (a network blip, a chunk refused) keeps it updating, its error shown.
NEEDS_PERSON = frozenset({"insufficient_disk", "disk_read_only"})


def device_error(r: Rollout, view: DeviceView | None) -> str | None:
    """`code: message` of the error a device reports for the rollout's model while it works on a desired state
    of this rollout (None: no error, or the error is about an earlier desired state)."""
    if view is None or view.error_code is None or not view.caught_up or view.desired_rollout != r.id:
        return None
    message = " ".join((view.error_message or "").split())
    return f"{view.error_code}: {message[:300]}" if message else view.error_code


def candidate(r: Rollout) -> Ref:
    """The version the rollout brings."""
    return (r.spec.model, r.spec.version)


def previous(entry: DeviceEntry) -> Ref | None:
    """What the device's desired state named before the rollout (None: no model)."""
    if entry.prev_model is None or entry.prev_version is None:
        return None
    return (entry.prev_model, entry.prev_version)


def in_shadow(wave: Wave) -> bool:
    """The wave runs (or failed while running) the candidate as a shadow."""
    return wave.phase.shadow or (
        wave.phase is WavePhase.FAILED and wave.failed_in is not None and wave.failed_in.shadow
    )


def target_for(r: Rollout, device_id: str) -> Target | None:
    """The target of one device now (None: the rollout leaves it alone)."""
    entry = r.devices.get(device_id)
    if entry is None or entry.left_at is not None or not r.state.active:
        return None
    wave = r.waves[entry.wave]
    if wave.phase is WavePhase.PENDING:
        return None
    prev = previous(entry)
    if r.state is RolloutState.ROLLING_BACK:
        return Target(device_id, prev, runtime=entry.prev_runtime, step=f"{r.id}/rollback")
    if in_shadow(wave):
        if prev is None:
            return None  # nothing to compare with: it sits the shadow phase out
        if wave.phase is WavePhase.FAILED:
            return Target(device_id, prev, runtime=entry.prev_runtime, step=f"{r.id}/w{wave.index}/shadow-stop")
        return Target(
            device_id, prev, shadow=candidate(r), shadow_rate=r.spec.shadow_rate, runtime=entry.prev_runtime,
            step=f"{r.id}/w{wave.index}/shadow",
        )  # fmt: skip
    return Target(device_id, candidate(r), runtime=candidate_runtime(r, entry), step=f"{r.id}/w{wave.index}/activate")


def candidate_runtime(r: Rollout, entry: DeviceEntry) -> dict[str, Any]:
    """The runtime options the candidate runs with on a device: the rollout's, else the device's own."""
    return r.spec.runtime.model_dump(mode="json") if r.spec.runtime is not None else entry.prev_runtime


def targets(r: Rollout) -> list[Target]:
    """Every device's target now, in device order."""
    return [t for d in sorted(r.devices) if (t := target_for(r, d)) is not None]


def classify(r: Rollout, device_id: str, view: DeviceView | None) -> str:
    """The device's state within the rollout.

    One of: left, pending, no_baseline, offline, updating, shadowing, active, failed, rolled_back.
    """
    entry = r.devices[device_id]
    if entry.left_at is not None or view is None:
        return "left"
    wave = r.waves[entry.wave]
    if wave.phase is WavePhase.PENDING:
        return "pending"
    target = target_for(r, device_id)
    rolling = r.state in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK)
    if target is None and not rolling:
        if in_shadow(wave) and previous(entry) is None:
            return "no_baseline"
        target = Target(device_id, candidate(r))
    if not view.online:
        return "offline"
    if rolling:
        prev = previous(entry)
        back = view.caught_up and view.desired_model == prev and (prev is None or view.desired_rollout == r.id)
        if back and (prev is None or view.active == prev):
            return "rolled_back"
        # took the rollback's desired state and failed to apply it (it serves what it ran): failed, its error shown
        return "failed" if back and view.phase == "failed" else "updating"
    assert target is not None
    if not target.published(view, r.id) or not view.caught_up:
        return "updating"
    if wave.phase is WavePhase.FAILED and target.shadow is None and in_shadow(wave):
        return "rolled_back" if view.shadow is None else "updating"  # the shadow was withdrawn
    if view.phase == "downloading" and view.error_code in NEEDS_PERSON:
        return "failed"  # stalled until a person frees or repairs the disk (see NEEDS_PERSON)
    if target.shadow is not None:
        if view.shadow == target.shadow:
            return "shadowing"
        if view.phase == "failed" or (view.error_code or "").startswith("shadow_"):
            return "failed"
        return "updating"
    if view.phase == "failed":
        return "failed"
    if target.model is not None and view.active == target.model and view.phase == "active":
        return "active"
    return "updating"

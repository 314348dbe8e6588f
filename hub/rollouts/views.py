"""Rollouts as typed views for the API, the dashboard and the CLI: a summary per rollout, and a status with
each wave's device counts per state and its gate results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pydantic import Field

from hub.rollouts.cohort import DeviceView, classify, device_error
from hub.rollouts.model import GateResult, Rollout, RolloutSpec, RolloutState, WavePhase
from hub.views.schemas import View

DEVICE_STATES = (
    "pending", "updating", "shadowing", "active", "failed", "offline", "no_baseline", "rolled_back", "left",
)  # fmt: skip


class DeviceCounts(View):
    """Devices per state within a rollout (see `cohort.classify`)."""

    pending: int = 0
    updating: int = 0
    shadowing: int = 0
    active: int = 0
    failed: int = 0
    offline: int = 0
    no_baseline: int = 0
    rolled_back: int = 0
    left: int = 0

    @classmethod
    def of(cls, states: Counter[str]) -> DeviceCounts:
        return cls.model_validate({s: states.get(s, 0) for s in DEVICE_STATES})


class RolloutSummary(View):
    """One line's worth: id, model, state, progress."""

    id: str
    model: str
    version: str
    selector: str
    state: RolloutState
    reason: str | None = Field(description="why it paused, rolled back or was aborted (a gate failure stays)")
    note: str | None = Field(default=None, description="the operator's note with the last command")
    wave: int = Field(description="index of the wave in progress (0-based; people see it as wave + 1)")
    wave_count: int
    wave_phase: WavePhase | None = Field(description="phase of the wave in progress")
    devices: int = Field(description="devices in the rollout (not counting those that left)")
    created_at: float
    created_by: str
    updated_at: float


class WaveStatus(View):
    """One wave: its phase, timestamps, device counts per state and gate results."""

    index: int = Field(description="0-based; people see it as index + 1")
    size: str = Field(description="as given: a count or a percentage, cumulative (this wave and the ones before)")
    phase: WavePhase
    devices: int = Field(description="devices in this wave (its own, not the ones before)")
    cumulative: int = Field(description="devices in this wave and the waves before it (what `size` stands for)")
    counts: DeviceCounts
    started_at: float | None
    shadow_started_at: float | None
    settled_at: float | None
    bake_until: float | None
    finished_at: float | None
    failed_in: WavePhase | None
    set_aside: list[str]
    gates: list[GateResult]
    device_states: dict[str, str] | None = Field(default=None, description="device -> state; only with devices=true")
    device_errors: dict[str, str] | None = Field(
        default=None,
        description="device -> the error it reports for this rollout's desired state (`code: message`), for devices "
        "that report one; only with devices=true",
    )


class RolloutStatus(RolloutSummary):
    """The full status: the spec and every wave."""

    spec: RolloutSpec
    seq: int = Field(description="transitions so far")
    totals: DeviceCounts
    waves: list[WaveStatus]
    changed_devices: int = Field(
        description="devices whose desired state the rollout has set (a rollback re-signs them)"
    )
    rollback_to: dict[str, int] = Field(
        description="what a rollback gives those devices back: MODEL:VERSION (or 'no model') -> devices"
    )


def summary_view(r: Rollout) -> RolloutSummary:
    """A rollout's summary (what the engine indexes)."""
    current = r.waves[r.current] if r.current < len(r.waves) else None
    return RolloutSummary(
        id=r.id, model=r.spec.model, version=r.spec.version, selector=r.spec.selector, state=r.state,
        reason=r.reason, note=r.note, wave=r.current, wave_count=len(r.waves),
        wave_phase=current.phase if current else None, devices=sum(1 for e in r.devices.values() if e.left_at is None),
        created_at=r.created_at, created_by=r.created_by, updated_at=r.updated_at,
    )  # fmt: skip


def status_view(r: Rollout, fleet: Mapping[str, DeviceView], *, devices: bool = False) -> RolloutStatus:
    """The full status: spec, each wave with its phase, timestamps, device counts per state and gate results."""
    states = {d: classify(r, d, fleet.get(d)) for d in r.devices}
    errors = {d: e for d in r.devices if (e := device_error(r, fleet.get(d))) is not None} if devices else {}
    waves: list[WaveStatus] = []
    for w in r.waves:
        members = r.members(w.index, include_left=True)
        waves.append(
            WaveStatus(
                index=w.index,
                size=w.size,
                phase=w.phase,
                devices=len(members),
                cumulative=len(members) + (waves[-1].cumulative if waves else 0),
                counts=DeviceCounts.of(Counter(states[d] for d in members)),
                started_at=w.started_at,
                shadow_started_at=w.shadow_started_at,
                settled_at=w.settled_at,
                bake_until=w.bake_until,
                finished_at=w.finished_at,
                failed_in=w.failed_in,
                set_aside=w.set_aside,
                gates=w.gates,
                device_states={d: states[d] for d in members} if devices else None,
                device_errors={d: errors[d] for d in members if d in errors} if devices else None,
            )
        )
    changed = [d for d, e in r.devices.items() if e.left_at is None and r.waves[e.wave].phase is not WavePhase.PENDING]
    back = Counter(
        f"{r.devices[d].prev_model}:{r.devices[d].prev_version}" if r.devices[d].prev_model else "no model"
        for d in changed
    )
    return RolloutStatus(
        **dict(summary_view(r)), spec=r.spec, seq=r.seq, totals=DeviceCounts.of(Counter(states.values())),
        waves=waves, changed_devices=len(changed), rollback_to=dict(back.most_common()),
    )  # fmt: skip

"""The rollout record: what was asked (`RolloutSpec`), where it stands (`Rollout`, `Wave`), what gates measured.

Every model here is frozen and JSON-serialisable: the controller returns a new record for each transition and
the engine stores it whole (one document per rollout), so a restarted hub continues from the stored record.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet.messages import ModelName, RuntimeOptions, SemVer
from hub.rollouts.waves import parse_waves


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RolloutState(StrEnum):
    """Where a rollout stands. RUNNING, PAUSED and ROLLING_BACK are active: they own their devices."""

    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def active(self) -> bool:
        return self in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.ROLLING_BACK)


class WavePhase(StrEnum):
    """The phases of one wave, in order; `failed` ends a wave whose gate failed."""

    PENDING = "pending"
    SHADOW_LOADING = "shadow_loading"
    SHADOW_BAKING = "shadow_baking"
    ACTIVATING = "activating"
    BAKING = "baking"
    PASSED = "passed"
    FAILED = "failed"

    @property
    def shadow(self) -> bool:
        return self in (WavePhase.SHADOW_LOADING, WavePhase.SHADOW_BAKING)


OnFailure = Literal["pause", "rollback"]


class GateSpec(_Frozen):
    """Thresholds a wave must meet after its bake time. None disables a gate."""

    max_activation_failures: int = Field(
        default=0, ge=0, description="devices of a wave that may fail to activate (or load the shadow)"
    )
    max_error_rate: float | None = Field(
        default=0.01, ge=0, le=1, description="errors / requests of the wave's devices on the candidate"
    )
    max_p95_regression: float | None = Field(
        default=0.2, ge=0, le=100, description="(p95 wave - p95 control) / p95 control; 0.2 allows 20 % slower"
    )
    min_agreement: float = Field(
        default=0.98, ge=0, le=1, description="shadow gate: agreements / samples of candidate vs current model"
    )
    min_requests: int = Field(
        default=20, ge=1, description="fewer requests (or shadow samples) than this: the gate records no_data"
    )


class RolloutSpec(_Frozen):
    """What an operator asks for (`edgefleet rollout start`)."""

    model: ModelName
    version: SemVer
    selector: str = Field(min_length=1, max_length=4096, description="label selector of the target devices")
    waves: list[str] = Field(
        default_factory=lambda: ["1", "10%", "50%", "100%"],
        min_length=1,
        max_length=32,
        description="cumulative wave sizes: a device count or a percentage; the last must be 100%",
    )
    bake_s: float = Field(default=300.0, ge=0, le=7 * 86400, description="bake time of each wave, seconds")
    gates: GateSpec = Field(default_factory=GateSpec, description="gate thresholds")
    shadow_rate: float | None = Field(
        default=None, gt=0, le=1, description="run the candidate as a shadow on this fraction of requests first"
    )
    on_failure: OnFailure = Field(default="pause", description="what a failed gate does: pause or rollback")
    offline_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="a wave waits at most this long for its devices to update; then offline ones are set aside",
    )
    runtime: RuntimeOptions | None = Field(
        default=None,
        description="runtime options the candidate runs with (GPUs, MIG slice, replicas, autoscaling); "
        "None: each device keeps its current ones. A rollback restores each device's previous options",
    )

    @field_validator("waves")
    @classmethod
    def _check_waves(cls, v: list[str]) -> list[str]:
        parse_waves(v)  # raises ValueError with the reason
        return v


class GateResult(_Frozen):
    """One gate evaluation with its numbers."""

    name: str = Field(description="activation, availability, error_rate, p95_latency or shadow_agreement")
    phase: Literal["shadow", "activation"] = Field(description="which phase of the wave it judged")
    status: Literal["pass", "fail", "no_data"] = Field(description="no_data counts as passing")
    value: float | None = Field(default=None, description="the measured value compared with the threshold")
    threshold: float | None = Field(default=None, description="the configured limit")
    measured: dict[str, Any] = Field(default_factory=dict, description="the numbers behind the value")
    detail: str = Field(default="", description="one line for people")
    since: float | None = Field(default=None, description="start of the telemetry window judged")
    until: float | None = Field(default=None, description="end of the telemetry window judged")
    at: float = Field(description="when it was evaluated")

    @property
    def passed(self) -> bool:
        return self.status != "fail"


class Wave(_Frozen):
    """One wave: its phase, timestamps and gate results. Membership lives in `Rollout.devices`."""

    index: int = Field(ge=0)
    size: str = Field(description="as given: a count or a percentage")
    phase: WavePhase = WavePhase.PENDING
    started_at: float | None = Field(default=None, description="when the current phase's desired states went out")
    settled_at: float | None = Field(default=None, description="when the devices had updated (bake start)")
    bake_until: float | None = Field(default=None, description="end of the bake")
    shadow_started_at: float | None = None
    finished_at: float | None = None
    failed_in: WavePhase | None = Field(default=None, description="the phase whose gate failed")
    set_aside: list[str] = Field(default_factory=list, description="devices offline when the wave settled")
    gates: list[GateResult] = Field(default_factory=list)


class DeviceEntry(_Frozen):
    """A device of the rollout: its wave and what it ran before (the rollback target)."""

    wave: int = Field(ge=0)
    prev_model: str | None = Field(default=None, description="model name of its desired state before the rollout")
    prev_version: str | None = Field(default=None, description="version of its desired state before the rollout")
    prev_runtime: dict[str, Any] = Field(default_factory=dict, description="its runtime options before")
    joined_at: float
    left_at: float | None = Field(default=None, description="set while it no longer matches the selector")


class Rollout(_Frozen):
    """The whole persisted state of one rollout."""

    id: str = Field(pattern=r"^r-[0-9a-f]{4,32}$")
    spec: RolloutSpec
    state: RolloutState = RolloutState.RUNNING
    reason: str | None = Field(
        default=None, description="why it paused, rolled back or was aborted (a gate failure is kept after a command)"
    )
    note: str | None = Field(default=None, description="the operator's note with the last command")
    created_at: float
    created_by: str
    updated_at: float
    seq: int = Field(default=0, ge=0, description="transitions so far (each one persisted)")
    current: int = Field(default=0, ge=0, description="index of the wave in progress")
    waves: list[Wave]
    devices: dict[str, DeviceEntry]

    @model_validator(mode="after")
    def _check(self) -> Rollout:
        if any(e.wave >= len(self.waves) for e in self.devices.values()):
            raise ValueError("a device is assigned to a wave that does not exist")
        return self

    def members(self, wave: int, *, include_left: bool = False) -> list[str]:
        """Device ids of `wave`, sorted."""
        return sorted(d for d, e in self.devices.items() if e.wave == wave and (include_left or e.left_at is None))

"""What the hub shows of its records: typed, frozen pydantic views. The REST API declares them as its response
models (so /openapi.json describes every answer) and the dashboard renders the same objects.

Built from store records only here, by the functions at the bottom, so the API and the dashboard never read
store records (or their JSON) themselves.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.messages import Capabilities, DesiredState, Phase, ReportedState, SignedEnvelope
from hub.credentials import Role
from hub.devices import DeviceState
from hub.store import IngestStats
from hub.telemetry import TelemetrySummary
from hub.transfer import TransferStats


class View(BaseModel):
    """Base of every view: frozen, and extra fields refused (a view says exactly what it holds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- devices -------------------------------------------------------------------------------------------
class DeviceSummary(View):
    """A device in a listing: what it runs, what it should run, its derived state."""

    id: str = Field(description="device id")
    labels: dict[str, str] = Field(description="its labels")
    state: DeviceState = Field(description="derived: online, offline, updating, failed or degraded")
    status: str | None = Field(description="its last status message (online/offline); null before its first birth")
    last_seen: float | None = Field(description="when the hub last heard from it, Unix seconds")
    enrolled_at: float = Field(description="Unix seconds")
    desired_version: int | None = Field(description="the counter of its signed desired state (not a model version)")
    desired_models: list[str] = Field(description="MODEL:VERSION of each model it should run")
    active_models: list[str] = Field(description="MODEL:VERSION of each model it reports running")
    phase: Phase | None = Field(description="its reported phase")


class DeviceDetail(DeviceSummary):
    """One device with its capabilities, reported state and signed desired body."""

    capabilities: Capabilities | None = Field(description="from its last birth message")
    reported: ReportedState | None = Field(description="its last reported state")
    reported_at: float | None = Field(description="when that report arrived, Unix seconds")
    session: str | None = Field(description="random id of the agent run that sent the birth")
    telemetry_at: float | None = Field(description="when its last telemetry window arrived")
    last_requests: int | None = Field(description="requests in its last telemetry window")
    last_errors: int | None = Field(description="errors in its last telemetry window")
    desired: DesiredState | None = Field(description="the body of its signed desired state")


class DeviceEnrolled(View):
    """The answer to an enrolment or a rekey: the device and its bootstrap bundle (the only time that password is
    shown)."""

    device: DeviceSummary
    bundle: dict[str, Any] = Field(description="the DeviceBundle JSON to hand to the agent")


class DevicesEnrolled(View):
    """The answer to a batch enrolment: the devices enrolled and their bootstrap bundles, in the order asked."""

    devices: list[str] = Field(description="the ids enrolled")
    bundles: list[dict[str, Any]] = Field(description="one DeviceBundle JSON per device, in the same order")


class DeviceRevoked(View):
    """The answer to a revocation."""

    device_id: str
    revoked: bool
    changed: bool = Field(description="false when it was already revoked")


class DesiredSlotView(View):
    """One model slot of a desired state."""

    model: str = Field(description="model name")
    model_version: str
    sha256: str = Field(description="blob of the model version")
    rollout_id: str | None = Field(description="the rollout that set this slot")
    shadow_version: str | None = Field(description="the shadow candidate's version, if one runs beside it")


class DesiredView(View):
    """A device's signed desired state, without the document."""

    device_id: str
    version: int = Field(description="per-device counter, increasing with every signed state")
    issued_at: float
    expires_at: float
    models: list[DesiredSlotView] = Field(description="the models it should serve (empty: serve nothing)")


class SignedDesired(DesiredView):
    """A desired state with its signed envelope as published."""

    envelope: SignedEnvelope


class DesiredAnswer(View):
    """A device's desired state; null when none was ever signed for it."""

    desired: SignedDesired | None


class Deployment(View):
    """What a deployment (or an undeploy) did: each targeted device with the counter of its new signed state."""

    model: str
    version: str | None = Field(description="the version deployed (null: the model was removed)")
    devices: dict[str, int] = Field(description="device id -> desired-state counter (not a model version)")
    in_rollouts: dict[str, int] = Field(
        default_factory=dict,
        description="with force: rollout id -> targeted devices inside that active rollout (it will sign its own "
        "target for them again at its next step unless it is aborted)",
    )


# -- models --------------------------------------------------------------------------------------------
class ModelVersionView(View):
    """A registered model version and its blob."""

    name: str
    version: str
    task: str
    sha256: str
    size: int = Field(description="bytes")
    chunk_size: int = Field(description="bytes per transfer chunk")
    chunks: int = Field(description="number of transfer chunks")
    created_at: float
    created_by: str


class ModelPushed(ModelVersionView):
    """The answer to an upload: 201 when stored now, 200 when these exact bytes were already stored."""

    created: bool
    restored: bool = Field(
        default=False,
        description="the version existed, but the hub's copy of its bytes was missing (set aside as corrupt, or "
        "lost with a disk): this upload put it back",
    )


class ModelVersionDetail(ModelVersionView):
    """One model version with its description and the devices whose desired state names it."""

    descriptor: dict[str, Any] = Field(description="the model description it was pushed with")
    wanted_by: list[str] = Field(description="devices whose desired state names it (as model or shadow)")


# -- events and tokens ---------------------------------------------------------------------------------
class EventView(View):
    """One audit-log entry."""

    id: int
    ts: float
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


class TokenView(View):
    """An API token (never its secret)."""

    id: int
    name: str
    role: Role
    created_at: float
    revoked: bool


class TokenCreated(View):
    """A new token: the secret is shown this once."""

    name: str
    role: Role
    token: str


# -- telemetry -----------------------------------------------------------------------------------------
class TelemetryMinute(TelemetrySummary):
    """One minute of telemetry: its summary, and the deepest queue a window of it saw."""

    minute: float = Field(description="start of the minute, Unix seconds")
    queue_depth_max: int = Field(description="largest request queue depth reported in the minute")


class SeqView(View):
    """Sequence numbers of a device's stored windows: gaps are windows lost or still spooled on the device."""

    first: int | None
    last: int | None
    count: int
    missing: int
    spool_dropped: int


class WindowView(View):
    """One raw telemetry window as stored."""

    seq: int
    start: float
    end: float
    received_at: float
    model: str | None
    model_version: str | None
    requests: int
    errors: int
    latency_sum_ms: float
    latency_counts: list[int]
    queue_depth: int
    spool_dropped: int
    spool_pending: int


class DeviceTelemetry(View):
    """A device's telemetry per minute (and its raw windows, newest first, when asked for)."""

    device_id: str
    summary: TelemetrySummary
    seq: SeqView
    series: list[TelemetryMinute]
    windows: list[WindowView] | None = Field(default=None, description="only with raw=true")


class ModelTelemetry(View):
    """A model version's telemetry per minute, over every device."""

    model: str
    version: str
    summary: TelemetrySummary
    series: list[TelemetryMinute]


class FleetTelemetry(View):
    """Fleet-wide telemetry per minute."""

    summary: TelemetrySummary
    series: list[TelemetryMinute]


# -- operations ----------------------------------------------------------------------------------------
class IngestCounters(View):
    """Messages accepted and refused (by kind and reason), the store's writer and the chunk server."""

    accepted: dict[str, int] = Field(description="kind -> messages accepted")
    rejected: dict[str, int] = Field(description="kind/reason -> messages refused")
    clamped: dict[str, int] = Field(
        default_factory=dict,
        description="kind -> statuses and reports taken with device timestamps more than CLOCK_SKEW_S (300 s) "
        "ahead of the hub's clock set back to that bound (a device clock ahead)",
    )
    store: IngestStats = Field(description="what the store's writer(s) did since the hub started")
    transfer: TransferStats = Field(description="what the chunk server did since the hub started")


class Health(View):
    """Liveness: the API answers; whether the hub's MQTT link is connected."""

    status: str = Field(description="always ok when the API answers")
    mqtt_connected: bool
    broker_url: str


class SecurityStatus(View):
    """What the hub enforces."""

    broker_acl: bool = Field(description="the local broker enforces per-device accounts and ACLs")
    tls: bool
    revoked_devices: list[str]
    telemetry_rate_limited: dict[str, int] = Field(description="device -> telemetry windows refused by the limit")
    cors_origins: list[str]

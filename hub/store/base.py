"""The store interface: plain records and the `Store` protocol. No SQL here.

A server-database backend (for several hub replicas) implements `Store`; nothing outside `hub/store`
changes. Writes go through one writer; reads never wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleet.histogram import N_BUCKETS
from fleet.messages import Capabilities, DesiredState, DeviceStatus, ReportedState, SignedEnvelope


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version and its content-addressed blob."""

    name: str
    version: str
    task: str
    sha256: str
    size: int
    descriptor: dict[str, Any]
    manifest: dict[str, Any]
    created_at: float
    created_by: str


@dataclass(frozen=True)
class Device:
    """An enrolled device and what the hub last heard from it."""

    id: str
    labels: dict[str, str]
    password_hash: str
    enrolled_at: float
    enrolled_by: str
    status: str | None = None
    status_at: float | None = None
    session: str | None = None
    capabilities: Capabilities | None = None  # from its last birth
    last_seen: float | None = None
    reported: ReportedState | None = None
    reported_at: float | None = None
    telemetry_at: float | None = None
    last_requests: int | None = None
    last_errors: int | None = None
    desired_counter: int = 0


@dataclass(frozen=True)
class DesiredSlot:
    """What one model slot of a stored desired state names (columns of its own: listed without the body)."""

    model_name: str
    model_version: str
    sha256: str
    shadow_name: str | None = None
    shadow_version: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    rollout_id: str | None = None


@dataclass(frozen=True)
class Desired:
    """The signed desired state of one device and its model slots: `envelope` is the JSON published (and
    republished) as it is."""

    device_id: str
    version: int
    slots: tuple[DesiredSlot, ...]
    envelope: str  # a SignedEnvelope whose body is the DesiredState; empty in `list_desired_heads`
    issued_at: float
    expires_at: float

    def slot(self, name: str) -> DesiredSlot | None:
        """The slot of model `name` (None: the state does not name it)."""
        return next((s for s in self.slots if s.model_name == name), None)

    def state(self) -> DesiredState:
        """The signed body (parsed on each call: listings use the columns above instead)."""
        return DesiredState.model_validate(SignedEnvelope.model_validate_json(self.envelope).body)


@dataclass(frozen=True)
class DesiredSummary:
    """What a stored desired state names, without its signed body (cheap to list for every device)."""

    device_id: str
    version: int
    slots: tuple[DesiredSlot, ...]

    def slot(self, name: str) -> DesiredSlot | None:
        """The slot of model `name` (None: the state does not name it)."""
        return next((s for s in self.slots if s.model_name == name), None)


@dataclass(frozen=True)
class Event:
    """One audit-log entry: who did what to which subject."""

    id: int
    ts: float
    actor: str
    action: str
    subject: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Token:
    """An API token (its secret is never stored, only a hash)."""

    id: int
    name: str
    role: str
    created_at: float
    revoked: bool


@dataclass(frozen=True)
class TelemetryPoint:
    """Telemetry summed over one minute (and over devices, when a query spans several)."""

    minute: float
    windows: int
    requests: int
    errors: int
    latency_sum_ms: float
    latency_counts: tuple[int, ...]
    queue_depth_max: int


@dataclass(frozen=True)
class StoredWindow:
    """One raw telemetry window as stored."""

    device_id: str
    seq: int
    start: float
    end: float
    received_at: float
    model: str | None
    model_version: str | None
    requests: int
    errors: int
    latency_sum_ms: float
    latency_counts: tuple[int, ...]
    queue_depth: int
    spool_dropped: int
    spool_pending: int
    provider: str | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    gpus: tuple[dict[str, Any], ...] = ()
    shadow: dict[str, Any] | None = None


@dataclass(frozen=True)
class SeqStats:
    """Sequence numbers of a device's stored windows: gaps are windows lost or not yet sent (spooled)."""

    first: int | None
    last: int | None
    count: int
    missing: int
    spool_dropped: int


@dataclass(frozen=True)
class DeviceTelemetryRead:
    """A device's per-minute series, sequence numbers and (when asked for) raw windows, read in one snapshot."""

    series: list[TelemetryPoint]
    seq: SeqStats
    windows: list[StoredWindow] | None


@dataclass(frozen=True)
class TelemetryTotals:
    """Raw windows of a set of devices over a time range, summed per model version and shadow candidate."""

    model_version: str | None
    shadow_version: str | None
    devices: int
    windows: int
    requests: int
    errors: int
    latency_sum_ms: float
    latency_counts: tuple[int, ...]
    shadow_samples: int = 0
    shadow_agreements: int = 0
    shadow_delta_ms_sum: float = 0.0  # candidate-minus-active latency, ms, times samples (summed)
    shadow_incomparable: int = 0  # sampled rows the candidate could not take (not compared)
    shadow_timed_samples: int = 0  # samples of the windows that carry a latency difference (its weight)


@dataclass(frozen=True)
class Fence:
    """A leader lease as held: a write fenced by it commits only while `token` is still the lease's token and the
    lease has not expired (checked in the write's own transaction, on the database's clock)."""

    lease: str
    token: int


@dataclass(frozen=True)
class IngestStats:
    """What the writer did with ingested messages since the store opened."""

    telemetry_persisted: int = 0
    telemetry_duplicates: int = 0
    status_applied: int = 0
    reported_applied: int = 0
    stale_ignored: int = 0
    dropped_queue_full: int = 0
    write_errors: int = 0
    rows_refused: int = 0  # messages a writer could not write (out of range for the database): refused, counted
    # What the telemetry writer decided (hub.ingest merges these into its accepted/rejected counts):
    telemetry_accepted: int = 0  # decoded and checked, handed to the SQL
    telemetry_malformed: int = 0
    telemetry_unknown_content: int = 0  # fields or values this hub does not know (a newer agent's)
    telemetry_unsupported_schema: int = 0  # another schema version
    telemetry_foreign: int = 0  # the payload names another device than its topic
    telemetry_clock_ahead: int = 0  # timestamps further ahead of the hub's clock than fleet.limits.CLOCK_SKEW_S
    telemetry_lost: int = 0  # sent to a telemetry writer that died before committing them
    database_waits: int = 0  # tries of an ingest batch (telemetry, status, reported) that found the database away
    writer_restarts: int = 0
    journal_errors: int = 0  # telemetry windows the journal could not take (disk full): in memory only until stored


EMPTY_COUNTS = (0,) * N_BUCKETS


class Store(Protocol):
    """Everything the hub keeps. Methods raise hub.errors (NotFound, Conflict) for domain refusals."""

    def close(self) -> None: ...

    # meta and tokens
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def add_token(self, name: str, role: str, hashed: str, ts: float) -> int: ...
    def token_by_hash(self, hashed: str) -> Token | None: ...
    def list_tokens(self) -> list[Token]: ...
    def revoke_token(self, token_id: int) -> bool: ...  # never the last active admin token (one atomic write)

    # events
    def add_event(self, ts: float, actor: str, action: str, subject: str, details: dict[str, Any]) -> None: ...
    def list_events(
        self,
        *,
        since: float | None,
        until: float | None,
        subject: str | None,
        action: str | tuple[str, ...] | None,  # a tuple: any of these actions
        limit: int,
    ) -> list[Event]: ...

    # registry
    def add_model_version(self, mv: ModelVersion, content: Path | None = None) -> ModelVersion: ...
    # `content`: the blob's file; the store keeps its bytes too where `shares_blobs` (replicas on several hosts)
    def get_model_version(self, name: str, version: str) -> ModelVersion | None: ...
    def list_model_versions(self, name: str | None = None) -> list[ModelVersion]: ...
    def delete_model_version(self, name: str, version: str) -> bool: ...
    def blob_manifest(self, sha256: str) -> dict[str, Any] | None: ...
    @property
    def shares_blobs(self) -> bool: ...
    def copy_blob(self, sha256: str, out: Callable[[bytes], object]) -> bool: ...
    def unshared_blobs(self) -> list[str]: ...
    def share_blob(self, sha256: str, content: Path) -> bool: ...
    def forget_blob_copy(self, sha256: str) -> None: ...

    # devices and desired states
    def add_device(self, device: Device) -> None: ...
    def add_devices(self, devices: list[Device]) -> None: ...  # one transaction: all or none
    def get_device(self, device_id: str) -> Device | None: ...
    def list_devices(self) -> list[Device]: ...
    def set_labels(self, device_id: str, labels: dict[str, str]) -> Device: ...
    def set_password_hash(self, device_id: str, password_hash: str) -> Device: ...
    def allocate_desired_versions(self, device_ids: list[str]) -> dict[str, int]: ...
    def put_desired(self, states: list[Desired], *, fence: Fence | None = None) -> None: ...
    def get_desired(self, device_id: str) -> Desired | None: ...
    def list_desired(self) -> list[Desired]: ...
    def list_desired_summaries(self) -> list[DesiredSummary]: ...
    def list_desired_heads(self) -> list[Desired]: ...
    def devices_wanting(self, name: str, version: str) -> list[str]: ...
    def devices_told(self, sha256: str, *, since: float) -> list[str]: ...
    def wanted_versions(self) -> dict[str, dict[str, int]]: ...

    # ingestion (asynchronous, batched by the writer)
    def enqueue_status(self, msg: DeviceStatus, received_at: float) -> bool: ...
    def enqueue_reported(self, msg: ReportedState, received_at: float) -> bool: ...
    def submit_telemetry(self, device_id: str, payload: bytes, received_at: float) -> int | None: ...
    def on_telemetry_committed(self, callback: Callable[[int], None]) -> None: ...
    def flush(self, timeout: float = 30.0) -> None: ...
    def ingest_stats(self) -> IngestStats: ...
    @property
    def queue_depth(self) -> int: ...  # messages waiting for the writer(s)

    # telemetry queries and retention
    def telemetry_windows(
        self, device_id: str, *, since: float | None, until: float | None, limit: int
    ) -> list[StoredWindow]: ...
    def telemetry_series(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[TelemetryPoint]: ...
    def telemetry_seq(self, device_id: str, *, since: float | None, until: float | None) -> SeqStats: ...
    def device_telemetry(
        self, device_id: str, *, since: float | None, until: float | None, limit: int | None
    ) -> DeviceTelemetryRead: ...
    def telemetry_totals(
        self, device_ids: Sequence[str], *, since: float, until: float, model: str | None = None
    ) -> list[TelemetryTotals]: ...
    def sweep(self, *, raw_before: float, rollup_before: float, raw_max_rows: int) -> int: ...

    # documents: small JSON records of other hub parts (rollouts, dashboard settings), by collection and key
    def put_doc(self, collection: str, key: str, doc: dict[str, Any]) -> None: ...
    def get_doc(self, collection: str, key: str) -> dict[str, Any] | None: ...
    def list_docs(self, collection: str) -> list[tuple[str, dict[str, Any]]]: ...
    def delete_doc(self, collection: str, key: str) -> bool: ...
    def get_doc_rev(self, collection: str, key: str) -> tuple[dict[str, Any], int] | None: ...
    def doc_revs(self, collection: str) -> dict[str, int]: ...
    def put_docs(
        self,
        docs: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        events: Sequence[tuple[float, str, str, str, dict[str, Any]]] = (),
        expect: dict[tuple[str, str], int | None] | None = None,
        fence: Fence | None = None,
    ) -> dict[tuple[str, str], int]: ...

    # replica coordination: the leader lease (fencing tokens on the database's clock), replicas' presence
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None: ...
    def release_lease(self, name: str, holder: str) -> bool: ...
    def lease_holder(self, name: str) -> tuple[str, int, bool] | None: ...
    def expired_leases(self, prefix: str) -> list[tuple[str, str]]: ...
    def forget_lease(self, name: str, holder: str) -> bool: ...

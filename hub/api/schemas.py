"""Request bodies of the REST API (pydantic v2, frozen, extra fields refused) and JSON views of records."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.bundle import MAX_ENROL_BATCH as MAX_BATCH
from fleet.messages import RuntimeOptions
from hub.devices import DeviceState
from hub.store import Desired, Device, Event, ModelVersion, StoredWindow
from hub.telemetry import Summary


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceCreate(_Body):
    id: str = Field(description="device id: 1-63 chars of a-z 0-9 . _ -")
    labels: dict[str, str] = Field(default_factory=dict, description="labels, e.g. {'site': 'berlin'}")


class DeviceBatchCreate(_Body):
    devices: list[DeviceCreate] = Field(
        min_length=1, max_length=MAX_BATCH, description="devices to enrol in one transaction: all of them or none"
    )


class LabelPatch(_Body):
    set: dict[str, str] = Field(default_factory=dict, description="labels to add or change")
    remove: list[str] = Field(default_factory=list, max_length=64, description="label keys to remove")


class DeployRequest(_Body):
    model: str = Field(description="model name")
    version: str = Field(description="model version")
    selector: str = Field(description="label selector, e.g. site=berlin,tier!=canary")
    runtime: RuntimeOptions | None = Field(default=None, description="runtime options (default: CPU)")


class TokenCreate(_Body):
    name: str = Field(min_length=1, max_length=64, description="who or what uses the token")
    role: str = Field(description="viewer, operator or admin")


def model_view(mv: ModelVersion, *, detail: bool = False, wanted_by: list[str] | None = None) -> dict[str, Any]:
    """A model version as JSON (the descriptor and chunk list only in detail)."""
    out: dict[str, Any] = {
        "name": mv.name, "version": mv.version, "task": mv.task, "sha256": mv.sha256, "size": mv.size,
        "chunk_size": mv.manifest.get("chunk_size"), "chunks": len(mv.manifest.get("chunks", [])),
        "created_at": mv.created_at, "created_by": mv.created_by,
    }  # fmt: skip
    if detail:
        out["descriptor"] = mv.descriptor
        out["wanted_by"] = wanted_by or []
    return out


def device_view(d: Device, state: DeviceState, desired: Desired | None, *, detail: bool = False) -> dict[str, Any]:
    """A device as JSON (capabilities and reported state only in detail; never the password hash)."""
    reported = d.reported or {}
    active = reported.get("active") or {}
    out: dict[str, Any] = {
        "id": d.id, "labels": d.labels, "state": state.value, "status": d.status, "last_seen": d.last_seen,
        "enrolled_at": d.enrolled_at, "desired_version": desired.version if desired else None,
        "desired_model": f"{desired.model_name}:{desired.model_version}" if desired and desired.model_name else None,
        "active_model": f"{active['name']}:{active['version']}" if active else None,
        "phase": reported.get("phase"),
    }  # fmt: skip
    if detail:
        out.update(
            capabilities=d.capabilities, reported=d.reported, reported_at=d.reported_at, session=d.session,
            telemetry_at=d.telemetry_at, last_requests=d.last_requests, last_errors=d.last_errors,
            desired=desired.body if desired else None,
        )  # fmt: skip
    return out


def desired_view(s: Desired) -> dict[str, Any]:
    """A desired state as JSON."""
    return {
        "device_id": s.device_id, "version": s.version, "model": s.model_name, "model_version": s.model_version,
        "sha256": s.sha256, "issued_at": s.issued_at, "expires_at": s.expires_at, "rollout_id": s.rollout_id,
    }  # fmt: skip


def event_view(e: Event) -> dict[str, Any]:
    """An audit-log entry as JSON."""
    return {"id": e.id, "ts": e.ts, "actor": e.actor, "action": e.action, "subject": e.subject, "details": e.details}


def window_view(w: StoredWindow) -> dict[str, Any]:
    """A raw telemetry window as JSON."""
    return {
        "seq": w.seq, "start": w.start, "end": w.end, "received_at": w.received_at, "model": w.model,
        "model_version": w.model_version, "requests": w.requests, "errors": w.errors,
        "latency_sum_ms": w.latency_sum_ms, "latency_counts": list(w.latency_counts), "queue_depth": w.queue_depth,
        "spool_dropped": w.spool_dropped, "spool_pending": w.spool_pending,
    }  # fmt: skip


def summary_view(s: Summary) -> dict[str, Any]:
    """A telemetry summary as JSON."""
    return {
        "windows": s.windows, "requests": s.requests, "errors": s.errors, "error_rate": s.error_rate,
        "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms,
    }  # fmt: skip

"""Wire messages for tests: those of a device that serves one model (for tests written before devices served
several), and a newer hub's signed desired state.

Schema 2 reports and telemetry carry a list of models; these build the one-model case from the fields a
single-model test names, so such tests keep their meaning with the new wire construction.
"""

from __future__ import annotations

import base64
from typing import Any

from fleet.histogram import Histogram
from fleet.messages import (
    AppliedModel,
    ClusterWorkload,
    DownloadProgress,
    ErrorInfo,
    ModelStatus,
    ModelWindow,
    Phase,
    ReportedState,
    ShadowStats,
    SignedEnvelope,
    TelemetryWindow,
)
from fleet.signing import HubSigningKey, canonical_json


def one_model_report(
    device_id: str,
    *,
    seq: int,
    ts: float,
    phase: Phase | str,
    model: str | None = None,
    desired_version: int | None = None,
    active: AppliedModel | None = None,
    previous: AppliedModel | None = None,
    shadow: AppliedModel | None = None,
    download: DownloadProgress | None = None,
    error: ErrorInfo | None = None,
    cluster: ClusterWorkload | None = None,
) -> ReportedState:
    """A reported state naming one model `model` (default: the active or previous version's name) with the given
    phase and versions."""
    name = model or (active or previous or shadow or AppliedModel(name="m", version="0.0.0", sha256="0" * 64)).name
    status = ModelStatus(
        name=name, phase=Phase(phase), active=active, previous=previous, shadow=shadow, download=download,
        error=error, cluster=cluster,
    )  # fmt: skip
    return ReportedState(device_id=device_id, seq=seq, ts=ts, desired_version=desired_version, models=[status])


def one_model_window(
    device_id: str,
    *,
    seq: int,
    start: float,
    end: float,
    model: str | None = None,
    model_version: str | None = None,
    provider: str | None = None,
    requests: int = 0,
    errors: int = 0,
    latency: Histogram | None = None,
    queue_depth: int = 0,
    shadow: ShadowStats | None = None,
    construct: bool = False,
    **device: Any,
) -> TelemetryWindow:
    """A telemetry window with one model's share and the device-level `device` fields (cpu_percent,
    memory_bytes, gpus, spool_*). Without `model`: no model share, unless requests or errors are given (they
    belong to a model: `m` 1.0.0 then). `construct`: skip validation (bulk seeding)."""
    if model is None and (requests or errors or latency is not None or shadow is not None):
        model, model_version = "m", model_version or "1.0.0"
    fields: dict[str, Any] = {
        "name": model, "version": model_version, "provider": provider, "requests": requests, "errors": errors,
        "latency": latency if latency is not None else Histogram(), "queue_depth": queue_depth, "shadow": shadow,
    }  # fmt: skip
    if construct:
        models = [ModelWindow.model_construct(**fields)] if model else []
        return TelemetryWindow.model_construct(
            device_id=device_id, seq=seq, start=start, end=end, models=models,
            **{"cpu_percent": None, "memory_bytes": None, "gpus": [], "spool_dropped": 0, "spool_capacity": None,
               "spool_pending": 0, **device},
        )  # fmt: skip
    models = [ModelWindow(**fields)] if model else []
    return TelemetryWindow(device_id=device_id, seq=seq, start=start, end=end, models=models, **device)


def flat_report(reported: ReportedState | dict[str, Any] | None) -> dict[str, Any]:
    """A stored reported state (JSON) of a device serving one model, flattened as schema 1 laid it out: the
    device's fields, its phase, and its one model's active, previous, shadow, download, error and cluster (the
    device-level error, a refused desired state, when there is one)."""
    if not reported:
        return {}
    if isinstance(reported, ReportedState):
        reported = reported.model_dump(mode="json")
    state = ReportedState.model_validate(reported)
    if len(state.models) > 1:
        raise AssertionError(f"{state.device_id} reports {len(state.models)} models; read them by name")
    out = reported | {"phase": state.phase.value}
    out.pop("models", None)
    model = reported["models"][0] if reported.get("models") else {}
    for key in ("active", "previous", "shadow", "download", "cluster"):
        out[key] = model.get(key)
    out["error"] = reported.get("error") or model.get("error")
    return out


def future_envelope(key: HubSigningKey, body: dict[str, Any]) -> SignedEnvelope:
    """`body` signed by `key` as it is: a desired state as a newer hub would send it, with fields or values this
    build does not know (`HubSigningKey.sign` takes this build's messages only)."""
    sig = key._key.sign(canonical_json(body))
    return SignedEnvelope(key_id=key.public.key_id, body=body, sig=base64.urlsafe_b64encode(sig).rstrip(b"=").decode())

"""One device's detail page: capabilities, each model's desired against reported state, history and events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.messages import AppliedModel, Capabilities, DesiredModel, DesiredState, ModelRef, ModelStatus, ReportedState
from hub.dashboard.views import gpu_summary, provider_name
from hub.views import DeviceInfo
from hub.views.schemas import EventView

if TYPE_CHECKING:
    from hub.services import HubServices


@dataclass(frozen=True)
class Comparison:
    """One line of desired against reported: what the hub asked for, what the device says, whether they agree."""

    what: str
    desired: str | None
    reported: str | None
    ok: bool | None  # None: nothing to compare


@dataclass(frozen=True)
class ModelDetail:
    """One model of the device: what the hub asks, what the device reports, line by line."""

    name: str
    phase: str | None
    comparison: list[Comparison]
    status: ModelStatus | None  # the model's reported status (active, previous, download, error, cluster)
    rollout_id: str | None
    download_pct: int | None


@dataclass(frozen=True)
class HistoryModel:
    """One model's part of a phase change: its phase, what it runs, the transfer's size, its error."""

    name: str
    phase: str | None
    model: str | None  # `name:version` it runs after the change
    provider: str | None
    bytes_total: int | None
    error: str | None  # `code: message`


@dataclass(frozen=True)
class HistoryEntry:
    """A phase change of the device, with the models whose part changed (every model on the first one)."""

    ts: float
    phase: str
    models: list[HistoryModel]
    error: str | None  # the device's own error (not one model's)


@dataclass(frozen=True)
class DeviceDetail:
    """Everything the device page shows."""

    info: DeviceInfo
    phase: str | None
    desired: DesiredState | None
    capabilities: Capabilities | None
    reported: ReportedState | None
    models: list[ModelDetail]
    gpu: str | None
    history: list[HistoryEntry]  # newest first
    events: list[EventView]

    @property
    def state(self) -> str:
        return self.info.state.value


def _model(ref: ModelRef | AppliedModel | None) -> str | None:
    return f"{ref.name}:{ref.version}" if ref else None


def _short(sha: str | None) -> str | None:
    return sha[:12] if sha else None


def _cmp(what: str, desired: str | None, reported: str | None) -> Comparison:
    ok = None if desired is None and reported is None else desired == reported
    return Comparison(what, desired, reported, ok)


def compare(slot: DesiredModel | None, status: ModelStatus | None) -> list[Comparison]:
    """One model's desired slot against its reported status, line by line."""
    want = slot.model if slot else None
    active = status.active if status else None
    providers = slot.runtime.providers if slot else []
    shadow = slot.shadow if slot else None
    out = [
        _cmp("version", _model(want), _model(active)),
        _cmp("blob", _short(want.blob.sha256 if want else None), _short(active.sha256 if active else None)),
    ]
    if providers or active:
        wanted = " > ".join(provider_name(p) or p for p in providers) or None
        got = provider_name(active.provider if active else None)
        ok = None if not providers or not got else got == provider_name(providers[0])
        out.append(Comparison("provider", wanted, got, ok))
    if shadow or (status and status.shadow):
        running = status.shadow if status else None
        out.append(_cmp("shadow", _model(shadow.model if shadow else None), _model(running)))
    return out


def model_details(desired: DesiredState | None, reported: ReportedState | None) -> list[ModelDetail]:
    """Every model the hub asks for or the device reports, in the desired state's order, then the others."""
    slots = {s.name: s for s in desired.models} if desired else {}
    statuses = {m.name: m for m in reported.models} if reported else {}
    out = []
    for name in [*slots, *(n for n in statuses if n not in slots)]:
        slot, status = slots.get(name), statuses.get(name)
        download = status.download if status else None
        pct = int(100 * download.have_chunks / download.total_chunks) if download and download.total_chunks else None
        out.append(
            ModelDetail(
                name=name,
                phase=status.phase.value if status else None,
                comparison=compare(slot, status),
                status=status,
                rollout_id=slot.rollout_id if slot else None,
                download_pct=pct,
            )
        )
    return out


def _error_text(error: Any) -> str | None:
    if not isinstance(error, dict):
        return None
    return f"{error.get('code', 'error')}: {error.get('message', '')}"


def _history_model(name: str, entry: dict[str, Any]) -> HistoryModel:
    total = entry.get("bytes_total")
    return HistoryModel(
        name=name, phase=entry.get("phase"), model=entry.get("model"), provider=provider_name(entry.get("provider")),
        bytes_total=total if isinstance(total, int) else None, error=_error_text(entry.get("error")),
    )  # fmt: skip


def history(events: list[EventView]) -> list[HistoryEntry]:
    """The `device.phase` events (newest first) as the timeline: each change names the models whose part of
    the report changed since the change before it. Events written before devices reported several models
    carry one model's fields at the top level."""
    out: list[HistoryEntry] = []
    before: dict[str, Any] = {}
    for e in sorted(events, key=lambda e: (e.ts, e.id)):
        d = e.details
        models = d.get("models")
        if isinstance(models, dict):
            changed = [_history_model(n, m) for n, m in models.items() if isinstance(m, dict) and before.get(n) != m]
            before = models
            error = _error_text(d.get("error"))
        else:  # one model, its fields beside the phase
            model = d.get("model")
            name = model.partition(":")[0] if isinstance(model, str) else ""
            changed = [_history_model(name, d)] if name or d.get("bytes_total") or d.get("error") else []
            error = None
        out.append(HistoryEntry(ts=e.ts, phase=str(d.get("to")), models=changed, error=error))
    return out[::-1]


def device_detail(hub: HubServices, device_id: str, now: float | None = None) -> DeviceDetail:
    """The device page's data; NotFound for unknown ids."""
    info = hub.views.device(device_id, now=time.time() if now is None else now)
    d, reported = info.device, info.device.reported
    desired = info.desired.state() if info.desired else None
    events = hub.views.events(subject=f"device/{device_id}", limit=200)
    return DeviceDetail(
        info=info, phase=reported.phase.value if reported else None, desired=desired, capabilities=d.capabilities,
        reported=reported, models=model_details(desired, reported), gpu=gpu_summary(d.capabilities),
        history=history([e for e in events if e.action == "device.phase"]),
        events=[e for e in events if e.action != "device.phase"],
    )  # fmt: skip

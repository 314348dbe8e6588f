"""One device's detail page: capabilities, each model's desired against reported state, history and events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hub.dashboard.views import gpu_summary, provider_name
from hub.devices import derive_state, reported_phase
from hub.store import Desired, Device, Event

if TYPE_CHECKING:
    from hub.runtime import Hub


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
    status: dict[str, Any]  # the model's reported status (active, previous, download, error, cluster)
    rollout_id: str | None
    download_pct: int | None


@dataclass(frozen=True)
class DeviceDetail:
    """Everything the device page shows."""

    device: Device
    state: str
    phase: str | None
    desired: Desired | None
    capabilities: dict[str, Any]
    reported: dict[str, Any]
    models: list[ModelDetail]
    gpu: str | None
    history: list[Event]
    events: list[Event]


def _model(ref: dict[str, Any] | None) -> str | None:
    return f"{ref['name']}:{ref['version']}" if ref else None


def _short(sha: str | None) -> str | None:
    return sha[:12] if sha else None


def _cmp(what: str, desired: str | None, reported: str | None) -> Comparison:
    ok = None if desired is None and reported is None else desired == reported
    return Comparison(what, desired, reported, ok)


def compare(slot: dict[str, Any], status: dict[str, Any]) -> list[Comparison]:
    """One model's desired slot against its reported status, line by line."""
    want = slot.get("model") or None
    active = status.get("active") or None
    want_sha = (want or {}).get("blob", {}).get("sha256")
    providers = (slot.get("runtime") or {}).get("providers") or []
    shadow = slot.get("shadow") or None
    out = [
        _cmp("version", _model(want), _model(active)),
        _cmp("blob", _short(want_sha), _short((active or {}).get("sha256"))),
    ]
    if providers or active:
        wanted = " > ".join(provider_name(p) or p for p in providers) or None
        got = provider_name((active or {}).get("provider"))
        ok = None if not providers or not got else got == provider_name(providers[0])
        out.append(Comparison("provider", wanted, got, ok))
    if shadow or status.get("shadow"):
        out.append(_cmp("shadow", _model(shadow.get("model") if shadow else None), _model(status.get("shadow"))))
    return out


def model_details(desired: Desired | None, reported: dict[str, Any]) -> list[ModelDetail]:
    """Every model the hub asks for or the device reports, in the desired state's order, then the others."""
    slots = {s["model"]["name"]: s for s in (desired.body.get("models") or []) if desired} if desired else {}
    statuses = {m["name"]: m for m in reported.get("models") or [] if isinstance(m, dict) and "name" in m}
    out = []
    for name in [*slots, *(n for n in statuses if n not in slots)]:
        slot, status = slots.get(name, {}), statuses.get(name, {})
        download = status.get("download") or None
        pct = None
        if download and download.get("total_chunks"):
            pct = int(100 * download.get("have_chunks", 0) / download["total_chunks"])
        out.append(
            ModelDetail(
                name=name,
                phase=status.get("phase"),
                comparison=compare(slot, status),
                status=status,
                rollout_id=slot.get("rollout_id"),
                download_pct=pct,
            )
        )
    return out


def device_detail(hub: Hub, device_id: str, now: float | None = None) -> DeviceDetail:
    """The device page's data; NotFound for unknown ids."""
    now = time.time() if now is None else now
    d = hub.devices.get(device_id)
    desired = hub.store.get_desired(device_id)
    state = derive_state(d, desired, now=now, settings=hub.settings.devices)
    reported = d.reported or {}
    events = hub.store.list_events(since=None, until=None, subject=f"device/{device_id}", action=None, limit=200)
    return DeviceDetail(
        device=d, state=state.value, phase=reported_phase(reported), desired=desired,
        capabilities=d.capabilities or {}, reported=reported, models=model_details(desired, reported),
        gpu=gpu_summary(d.capabilities), history=[e for e in events if e.action == "device.phase"],
        events=[e for e in events if e.action != "device.phase"],
    )  # fmt: skip

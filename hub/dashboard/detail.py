"""One device's detail page: capabilities, desired against reported state, history and events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hub.dashboard.views import gpu_summary, provider_name
from hub.devices import derive_state
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
class DeviceDetail:
    """Everything the device page shows."""

    device: Device
    state: str
    desired: Desired | None
    capabilities: dict[str, Any]
    reported: dict[str, Any]
    comparison: list[Comparison]
    gpu: str | None
    history: list[Event]
    events: list[Event]
    download_pct: int | None


def _model(ref: dict[str, Any] | None) -> str | None:
    return f"{ref['name']}:{ref['version']}" if ref else None


def _short(sha: str | None) -> str | None:
    return sha[:12] if sha else None


def _cmp(what: str, desired: str | None, reported: str | None) -> Comparison:
    ok = None if desired is None and reported is None else desired == reported
    return Comparison(what, desired, reported, ok)


def compare(desired: Desired | None, reported: dict[str, Any]) -> list[Comparison]:
    """Desired against reported, line by line."""
    body = desired.body if desired else {}
    want = body.get("model") or None
    active = reported.get("active") or None
    want_sha = (want or {}).get("blob", {}).get("sha256")
    runtime = body.get("runtime") or {}
    providers = runtime.get("providers") or []
    shadow = body.get("shadow") or None
    accepted = reported.get("desired_version")
    out = [
        _cmp("model", _model(want), _model(active)),
        _cmp("blob", _short(want_sha), _short((active or {}).get("sha256"))),
        _cmp("desired version", str(desired.version) if desired else None, None if accepted is None else str(accepted)),
    ]
    if providers or active:
        wanted = " > ".join(provider_name(p) or p for p in providers) or None
        got = provider_name((active or {}).get("provider"))
        ok = None if not providers or not got else got == provider_name(providers[0])
        out.append(Comparison("provider", wanted, got, ok))
    if shadow or reported.get("shadow"):
        out.append(_cmp("shadow", _model(shadow.get("model") if shadow else None), _model(reported.get("shadow"))))
    return out


def device_detail(hub: Hub, device_id: str, now: float | None = None) -> DeviceDetail:
    """The device page's data; NotFound for unknown ids."""
    now = time.time() if now is None else now
    d = hub.devices.get(device_id)
    desired = hub.store.get_desired(device_id)
    state = derive_state(d, desired, now=now, settings=hub.settings.devices)
    reported = d.reported or {}
    events = hub.store.list_events(since=None, until=None, subject=f"device/{device_id}", action=None, limit=200)
    download = reported.get("download") or None
    pct = None
    if download and download.get("total_chunks"):
        pct = int(100 * download.get("have_chunks", 0) / download["total_chunks"])
    return DeviceDetail(
        device=d, state=state.value, desired=desired, capabilities=d.capabilities or {}, reported=reported,
        comparison=compare(desired, reported), gpu=gpu_summary(d.capabilities),
        history=[e for e in events if e.action == "device.phase"],
        events=[e for e in events if e.action != "device.phase"], download_pct=pct,
    )  # fmt: skip

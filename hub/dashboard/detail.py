"""One device's detail page: capabilities, desired against reported state, history and events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.messages import AppliedModel, Capabilities, DesiredState, ModelRef, ReportedState
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
class DeviceDetail:
    """Everything the device page shows."""

    info: DeviceInfo
    desired: DesiredState | None
    capabilities: Capabilities | None
    reported: ReportedState | None
    comparison: list[Comparison]
    gpu: str | None
    history: list[EventView]
    events: list[EventView]
    download_pct: int | None

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


def compare(desired: DesiredState | None, reported: ReportedState | None) -> list[Comparison]:
    """Desired against reported, line by line."""
    want = desired.model if desired else None
    active = reported.active if reported else None
    providers = desired.runtime.providers if desired else []
    shadow = desired.shadow if desired else None
    accepted = reported.desired_version if reported else None
    out = [
        _cmp("model", _model(want), _model(active)),
        _cmp("blob", _short(want.blob.sha256 if want else None), _short(active.sha256 if active else None)),
        _cmp("desired version", str(desired.version) if desired else None, None if accepted is None else str(accepted)),
    ]
    if providers or active:
        wanted = " > ".join(provider_name(p) or p for p in providers) or None
        got = provider_name(active.provider if active else None)
        ok = None if not providers or not got else got == provider_name(providers[0])
        out.append(Comparison("provider", wanted, got, ok))
    if shadow or (reported and reported.shadow):
        running = reported.shadow if reported else None
        out.append(_cmp("shadow", _model(shadow.model if shadow else None), _model(running)))
    return out


def device_detail(hub: HubServices, device_id: str, now: float | None = None) -> DeviceDetail:
    """The device page's data; NotFound for unknown ids."""
    info = hub.views.device(device_id, now=time.time() if now is None else now)
    d, reported = info.device, info.device.reported
    desired = info.desired.state() if info.desired else None
    events = hub.views.events(subject=f"device/{device_id}", limit=200)
    download = reported.download if reported else None
    pct = int(100 * download.have_chunks / download.total_chunks) if download and download.total_chunks else None
    return DeviceDetail(
        info=info, desired=desired, capabilities=d.capabilities, reported=reported,
        comparison=compare(desired, reported), gpu=gpu_summary(d.capabilities),
        history=[e for e in events if e.action == "device.phase"],
        events=[e for e in events if e.action != "device.phase"], download_pct=pct,
    )  # fmt: skip

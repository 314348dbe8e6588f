"""The hub's read side: devices, desired states, events, tokens and telemetry as typed views.

`FleetViews` is the one way the REST API and the dashboard read what the hub stores: it goes through the
`Store` interface (never SQL), parses nothing itself (the store's records already carry fleet's types) and
hands out views (`hub.views.schemas`) or `DeviceInfo`, a device with its desired state and derived state.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from fleet.messages import AppliedModel, SignedEnvelope
from hub.credentials import Role
from hub.devices import DeviceState, derive_state
from hub.errors import NotFound
from hub.ingest import IngestCounts
from hub.selectors import parse_selector
from hub.settings import DeviceSettings
from hub.store import Desired, Device, Event, IngestStats, ModelVersion, Store, StoredWindow, TelemetryPoint
from hub.telemetry import summarise
from hub.transfer import TransferStats
from hub.views.schemas import (
    DesiredAnswer,
    DesiredSlotView,
    DesiredView,
    DeviceDetail,
    DeviceSummary,
    DeviceTelemetry,
    EventView,
    IngestCounters,
    ModelVersionDetail,
    ModelVersionView,
    SeqView,
    SignedDesired,
    TelemetryMinute,
    TokenView,
    WindowView,
)


def ref_text(name: str | None, version: str | None) -> str | None:
    """`MODEL:VERSION`, or None without a model."""
    return f"{name}:{version}" if name and version else None


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the pages see it: its record (typed capabilities and report), desired head, derived state."""

    device: Device
    desired: Desired | None
    state: DeviceState

    @property
    def active(self) -> list[AppliedModel]:
        """The version of each model it reports running, in its order."""
        rep = self.device.reported
        return [m.active for m in rep.models if m.active is not None] if rep else []

    @property
    def active_refs(self) -> list[str]:
        """`MODEL:VERSION` of each model it reports running."""
        return [f"{a.name}:{a.version}" for a in self.active]

    @property
    def desired_refs(self) -> list[str]:
        """`MODEL:VERSION` of each model slot of its desired state."""
        return [f"{s.model_name}:{s.model_version}" for s in self.desired.slots] if self.desired else []


@dataclass(frozen=True)
class UtilizationPoint:
    """CPU and GPU utilisation of one telemetry window (charts)."""

    end: float
    cpu_percent: float | None
    gpus: dict[int, float] = field(default_factory=dict)  # NVML index -> util %


def minute_of(p: TelemetryPoint) -> TelemetryMinute:
    return TelemetryMinute(minute=p.minute, queue_depth_max=p.queue_depth_max, **dict(summarise([p])))


def model_version_view(mv: ModelVersion) -> ModelVersionView:
    return ModelVersionView(
        name=mv.name, version=mv.version, task=mv.task, sha256=mv.sha256, size=mv.size,
        chunk_size=int(mv.manifest["chunk_size"]), chunks=len(mv.manifest["chunks"]), created_at=mv.created_at,
        created_by=mv.created_by,
    )  # fmt: skip


def event_view(e: Event) -> EventView:
    return EventView(id=e.id, ts=e.ts, actor=e.actor, action=e.action, subject=e.subject, details=e.details)


def _desired_view(s: Desired) -> DesiredView:
    return DesiredView(
        device_id=s.device_id, version=s.version, issued_at=s.issued_at, expires_at=s.expires_at,
        models=[
            DesiredSlotView(model=m.model_name, model_version=m.model_version, sha256=m.sha256,
                            rollout_id=m.rollout_id, shadow_version=m.shadow_version)
            for m in s.slots
        ],
    )  # fmt: skip


def _window_view(w: StoredWindow) -> WindowView:
    return WindowView(
        seq=w.seq, start=w.start, end=w.end, received_at=w.received_at, model=w.model, model_version=w.model_version,
        requests=w.requests, errors=w.errors, latency_sum_ms=w.latency_sum_ms, latency_counts=list(w.latency_counts),
        queue_depth=w.queue_depth, spool_dropped=w.spool_dropped, spool_pending=w.spool_pending,
    )  # fmt: skip


def _gpu_util(w: StoredWindow) -> dict[int, float]:
    return {int(g.get("index", 0)): float(g.get("util_percent", 0.0)) for g in w.gpus}


def device_summary(info: DeviceInfo) -> DeviceSummary:
    d, rep = info.device, info.device.reported
    return DeviceSummary(
        id=d.id, labels=d.labels, state=info.state, status=d.status, last_seen=d.last_seen, enrolled_at=d.enrolled_at,
        desired_version=info.desired.version if info.desired else None, desired_models=info.desired_refs,
        active_models=info.active_refs, phase=rep.phase if rep else None,
    )  # fmt: skip


class Fingerprint(NamedTuple):
    """What the fleet looks like, cheaply: two fingerprints differ when anything the pages show changed."""

    data: tuple[object, ...]  # ingestion counters, the newest event, the desired states' count and newest version
    tick: int  # the time in state ticks: derived states change with time alone (silent devices go offline)


class FleetViews:
    """Reads for the REST API and the dashboard, over the store interface."""

    def __init__(self, store: Store, settings: DeviceSettings) -> None:
        self.store = store
        self.settings = settings

    # -- devices --------------------------------------------------------------------------------------
    def _info(self, d: Device, desired: Desired | None, now: float) -> DeviceInfo:
        return DeviceInfo(d, desired, derive_state(d, desired, now=now, settings=self.settings))

    def device(self, device_id: str, *, now: float | None = None) -> DeviceInfo:
        """One device with its (whole) desired state; NotFound when it is not enrolled."""
        d = self.store.get_device(device_id)
        if d is None:
            raise NotFound(f"device {device_id} is not enrolled")
        return self._info(d, self.store.get_desired(device_id), time.time() if now is None else now)

    def devices(self, selector: str | None = None, *, now: float | None = None) -> list[DeviceInfo]:
        """Every device (or those matching a label selector; InvalidSelector names a bad position), by id."""
        sel = parse_selector(selector) if selector else None
        now = time.time() if now is None else now
        heads = {s.device_id: s for s in self.store.list_desired_heads()}
        return [
            self._info(d, heads.get(d.id), now)
            for d in self.store.list_devices()
            if sel is None or sel.matches(d.labels)
        ]

    def device_summaries(self, selector: str | None = None) -> list[DeviceSummary]:
        return [device_summary(i) for i in self.devices(selector)]

    def device_summary(self, device_id: str) -> DeviceSummary:
        return device_summary(self.device(device_id))

    def device_detail(self, device_id: str) -> DeviceDetail:
        """One device with capabilities, reported state and its signed desired body."""
        info = self.device(device_id)
        d = info.device
        return DeviceDetail(
            **dict(device_summary(info)), capabilities=d.capabilities, reported=d.reported, reported_at=d.reported_at,
            session=d.session, telemetry_at=d.telemetry_at, last_requests=d.last_requests,
            last_errors=d.last_errors, desired=info.desired.state() if info.desired else None,
        )  # fmt: skip

    def state_counts(self) -> dict[DeviceState, int]:
        """Enrolled devices by derived state (states without devices left out)."""
        return dict(Counter(i.state for i in self.devices()))

    # -- desired states -------------------------------------------------------------------------------
    def desired(self, device_id: str) -> DesiredAnswer:
        """A device's desired state with its signed envelope; NotFound for unknown devices."""
        info = self.device(device_id)
        s = info.desired
        if s is None:
            return DesiredAnswer(desired=None)
        envelope = SignedEnvelope.model_validate_json(s.envelope)
        return DesiredAnswer(desired=SignedDesired(**dict(_desired_view(s)), envelope=envelope))

    def deployments(self) -> list[DesiredView]:
        """The desired state of every device that has one, by device id."""
        return [_desired_view(s) for s in self.store.list_desired_heads()]

    # -- models ---------------------------------------------------------------------------------------
    def model_detail(self, mv: ModelVersion) -> ModelVersionDetail:
        """A registered version with its description and the devices that want it."""
        wanted = self.store.devices_wanting(mv.name, mv.version)
        return ModelVersionDetail(**dict(model_version_view(mv)), descriptor=mv.descriptor, wanted_by=wanted)

    # -- events and tokens ----------------------------------------------------------------------------
    def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        subject: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[EventView]:
        """Audit-log entries, newest first."""
        found = self.store.list_events(since=since, until=until, subject=subject, action=action, limit=limit)
        return [event_view(e) for e in found]

    def recent_events(self, actions: Iterable[str], limit: int) -> list[EventView]:
        """The newest `limit` events of any of `actions`, newest first."""
        found = self.store.list_events(since=None, until=None, subject=None, action=tuple(actions), limit=limit)
        return [event_view(e) for e in found]

    def tokens(self) -> list[TokenView]:
        return [
            TokenView(id=t.id, name=t.name, role=Role(t.role), created_at=t.created_at, revoked=t.revoked)
            for t in self.store.list_tokens()
        ]

    # -- telemetry ------------------------------------------------------------------------------------
    def device_telemetry(
        self, device_id: str, *, since: float | None, until: float | None, limit: int | None
    ) -> DeviceTelemetry:
        """A device's series, its summary and its sequence numbers, and (`limit` given) its raw windows, newest
        first: all read in one snapshot of the store (a window committed meanwhile is in all of them or none)."""
        t = self.store.device_telemetry(device_id, since=since, until=until, limit=limit)
        s = t.seq
        return DeviceTelemetry(
            device_id=device_id, summary=summarise(t.series),
            seq=SeqView(first=s.first, last=s.last, count=s.count, missing=s.missing, spool_dropped=s.spool_dropped),
            series=[minute_of(p) for p in t.series],
            windows=None if t.windows is None else [_window_view(w) for w in t.windows],
        )  # fmt: skip

    def utilization(self, device_id: str, *, since: float, limit: int) -> list[UtilizationPoint]:
        """CPU and GPU utilisation per window, oldest first."""
        found = self.store.telemetry_windows(device_id, since=since, until=None, limit=limit)
        return [UtilizationPoint(w.end, w.cpu_percent, _gpu_util(w)) for w in reversed(found)]

    # -- operations -----------------------------------------------------------------------------------
    def store_counters(self) -> IngestStats:
        return self.store.ingest_stats()

    def queue_depth(self) -> int:
        """Messages waiting for the store's writer(s)."""
        return self.store.queue_depth

    def ingest_counters(self, counts: IngestCounts, transfer: TransferStats) -> IngestCounters:
        """The ingestor's and chunk server's counters (passed in) with the store writer's."""
        return IngestCounters(
            accepted=counts.accepted, rejected={f"{k}/{reason}": n for (k, reason), n in counts.rejected.items()},
            clamped=counts.clamped, store=self.store_counters(), transfer=transfer,
        )  # fmt: skip

    def fingerprint(self, tick_s: float) -> Fingerprint:
        """Something that changes whenever anything the pages show changes (`data`), and every `tick_s` seconds
        (`tick`), since states change with time alone: silent devices go offline."""
        st = self.store.ingest_stats()
        last = self.store.list_events(since=None, until=None, subject=None, action=None, limit=1)
        desired = self.store.list_desired_heads()
        data = (
            st.telemetry_persisted, st.status_applied, st.reported_applied, last[0].id if last else 0,
            len(desired), max((d.version for d in desired), default=0),
        )  # fmt: skip
        return Fingerprint(data, int(time.time() // tick_s))

"""What the dashboard pages show, assembled from the hub's services. No HTTP and no HTML here."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.messages import Capabilities
from hub.dashboard.rollouts import ActiveRollout, active_rollouts
from hub.devices import DeviceState
from hub.errors import InvalidInput
from hub.registry import version_key
from hub.selectors import parse_selector
from hub.telemetry import TelemetrySummary, summarise
from hub.views import DeviceInfo, model_version_view
from hub.views.schemas import EventView, ModelVersionView

if TYPE_CHECKING:
    from hub.services import HubServices

TIMES = "\u00d7"
STATES = tuple(s.value for s in DeviceState)
SORT_KEYS = ("id", "state", "model", "desired", "provider", "gpu", "last_seen")
_PROVIDER_NAMES = {
    "CPUExecutionProvider": "CPU",
    "CUDAExecutionProvider": "CUDA",
    "TensorrtExecutionProvider": "TensorRT",
    "OpenVINOExecutionProvider": "OpenVINO",
    "ROCMExecutionProvider": "ROCm",
    "CoreMLExecutionProvider": "CoreML",
}
_STATE_ORDER = {"failed": 0, "degraded": 1, "updating": 2, "offline": 3, "online": 4}


def provider_name(provider: str | None) -> str | None:
    """`CUDAExecutionProvider` -> `CUDA` (unknown names are kept, minus the suffix)."""
    if not provider:
        return None
    return _PROVIDER_NAMES.get(provider, provider.removesuffix("ExecutionProvider"))


@dataclass(frozen=True)
class DeviceRow:
    """One line of the device table."""

    id: str
    state: str
    labels: dict[str, str]
    running: tuple[str, ...]  # `name:version` of every model it reports active
    wanted: tuple[str, ...]  # `name:version` of every model its desired state names
    phase: str | None
    provider: str | None
    providers: list[str]
    gpu: str | None
    last_seen: float | None
    why: str | None  # what is wrong: the error it reports, or the error rate that makes it degraded

    @property
    def model(self) -> str | None:
        """The models it runs, for display (`det:1.0.0, cls:2.0.0`)."""
        return ", ".join(self.running) or None

    @property
    def desired(self) -> str | None:
        """The models it should run, for display."""
        return ", ".join(self.wanted) or None


def gpu_summary(capabilities: Capabilities | None) -> str | None:
    """`2x NVIDIA A100 (MIG)` (with a multiplication sign) from a birth's capabilities; None without GPUs."""
    gpus = capabilities.gpus if capabilities else []
    if not gpus:
        return None
    names = Counter(g.name.removeprefix("NVIDIA ") for g in gpus)
    parts = [f"{n}{TIMES} {name}" if n > 1 else name for name, n in names.items()]
    mig = any(g.mig_mode for g in gpus)
    return ", ".join(parts) + (" (MIG)" if mig else "")


def device_row(info: DeviceInfo) -> DeviceRow:
    """A device as a table row."""
    d, reported = info.device, info.device.reported
    providers = [provider_name(p) or p for p in (d.capabilities.providers if d.capabilities else [])]
    statuses = reported.models if reported else []
    errors = [reported.error if reported else None, *(m.error for m in statuses)]
    error = next((e for e in errors if e is not None), None)
    running = [provider_name(a.provider) for a in info.active]
    why = f"{error.code}: {error.message}" if error else None
    requests, failed = d.last_requests or 0, d.last_errors or 0
    if why is None and info.state is DeviceState.DEGRADED and requests:  # degraded by its error rate alone
        why = f"error rate {100 * failed / requests:.3g}% in its last window ({failed} of {requests} requests)"
    return DeviceRow(
        id=d.id, state=info.state.value, labels=d.labels,
        running=tuple(info.active_refs), wanted=tuple(info.desired_refs),
        phase=reported.phase.value if reported else None, provider=", ".join(sorted({p for p in running if p})) or None,
        providers=providers, gpu=gpu_summary(d.capabilities), last_seen=d.last_seen,
        why=why,
    )  # fmt: skip


def fleet_rows(hub: HubServices, now: float | None = None) -> list[DeviceRow]:
    """Every device as a row, with its derived state."""
    return [device_row(info) for info in hub.views.devices(now=now)]


@dataclass(frozen=True)
class DeviceQuery:
    """Filters, order and page of the device table (already validated)."""

    selector: str = ""
    state: str = ""
    version: str = ""
    sort: str = "id"
    desc: bool = False
    page: int = 1

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters of this query with `changes` applied (defaults left out)."""
        values = {**self.__dict__, **changes}
        out = {k: str(v) for k, v in values.items() if k in ("selector", "state", "version") and v}
        if values["sort"] != "id":
            out["sort"] = values["sort"]
        if values["desc"]:
            out["desc"] = "1"
        if values["page"] != 1:
            out["page"] = str(values["page"])
        return out


@dataclass(frozen=True)
class DevicePage:
    """One page of the filtered, sorted device table."""

    rows: list[DeviceRow]
    total: int
    matched: int
    page: int
    pages: int
    first: int
    last: int
    versions: list[str]
    error: str | None = None


def _sort_key(sort: str) -> Any:
    if sort == "state":
        return lambda r: (_STATE_ORDER.get(r.state, 9), r.id)
    if sort == "last_seen":
        return lambda r: (r.last_seen or 0.0, r.id)
    return lambda r: (getattr(r, sort) or "", r.id)


def device_page(rows: list[DeviceRow], q: DeviceQuery, page_size: int) -> DevicePage:
    """Filter, sort and page `rows`. A bad selector yields an empty page with the reason."""
    versions = sorted({v for r in rows for v in (*r.running, *r.wanted)}, key=_model_version_key)
    found = rows
    error = None
    if q.selector:
        try:
            sel = parse_selector(q.selector)
        except InvalidInput as e:  # InvalidSelector: shown next to the filter
            return DevicePage([], len(rows), 0, 1, 1, 0, 0, versions, error=e.message)
        found = [r for r in found if sel.matches(r.labels)]
    if q.state:
        found = [r for r in found if r.state == q.state]
    if q.version:
        found = [r for r in found if q.version in (*r.running, *r.wanted)]
    found = sorted(found, key=_sort_key(q.sort), reverse=q.desc)
    pages = max(1, -(-len(found) // page_size))
    page = min(max(1, q.page), pages)
    start = (page - 1) * page_size
    chunk = found[start : start + page_size]
    return DevicePage(chunk, len(rows), len(found), page, pages, start + 1 if chunk else 0, start + len(chunk),
                      versions, error)  # fmt: skip


def _model_version_key(mv: str) -> tuple[Any, ...]:
    name, _, version = mv.partition(":")
    return (name, version_key(version))


@dataclass(frozen=True)
class VersionCount:
    """How many devices run (and want) one version of a model."""

    version: str
    active: int
    desired: int


@dataclass(frozen=True)
class Overview:
    """The overview page."""

    total: int
    counts: dict[str, int]
    versions: dict[str, list[VersionCount]]
    events: list[EventView]
    models: int
    rollouts: list[ActiveRollout]


def version_counts(rows: list[DeviceRow]) -> dict[str, list[VersionCount]]:
    """Per model name, its versions (newest first) with active and desired device counts."""
    active: Counter[str] = Counter(m for r in rows for m in r.running)
    desired: Counter[str] = Counter(m for r in rows for m in r.wanted)
    by_model: dict[str, list[VersionCount]] = defaultdict(list)
    for mv in set(active) | set(desired):
        name, _, version = mv.partition(":")
        by_model[name].append(VersionCount(version, active[mv], desired[mv]))
    return {
        name: sorted(vs, key=lambda v: version_key(v.version), reverse=True) for name, vs in sorted(by_model.items())
    }


OPERATOR_ACTIONS = (
    "deploy", "undeploy", "model.push", "model.delete",
    "device.add", "device.label", "device.revoke", "device.rekey", "token.create", "token.revoke",
    "rollout.start", "rollout.pause", "rollout.resume", "rollout.abort", "rollout.rollback",
    "rollout.gate_failed", "rollout.wave_passed", "rollout.completed", "rollout.rolled_back",
    "blob.corrupt", "blob.restore", "hub.session.adopted", "hub.restored",  # what the hub did about its own faults
)  # fmt: skip
"""What the overview's recent events show: every action a person takes through the API or CLI, the rollout
controller's verdicts, and the hub's repairs. Every action the hub records is either here or in
`NOT_ON_OVERVIEW` (tests/hub/dashboard/test_views.py holds the two against the code that records them)."""

NOT_ON_OVERVIEW = frozenset({
    "api.call",  # every mutating request: the raw audit trail, one per action above
    "device.phase",  # a device's phase changes: on the device's page
    "hub.init",  # once, before the hub first serves
    # the controller's progress within a wave: on the rollout's page
    "rollout.wave_started", "rollout.gates", "rollout.shadow_passed", "rollout.wave_settled",
    "rollout.device_joined", "rollout.device_left", "rollout.device_rejoined",
})  # fmt: skip
"""Audit actions the overview leaves out on purpose, each with its reason."""


def recent_events(hub: HubServices, limit: int = 12) -> list[EventView]:
    """The newest events of people, rollouts and the hub's own repairs (devices' phase changes are on their
    pages)."""
    return hub.views.recent_events(OPERATOR_ACTIONS, limit)


def overview(hub: HubServices, rows: list[DeviceRow] | None = None, now: float | None = None) -> Overview:
    """Counts by state, versions across the fleet, active rollouts and recent events (traffic loads apart)."""
    now = time.time() if now is None else now
    rows = fleet_rows(hub, now) if rows is None else rows
    counts = Counter(r.state for r in rows)
    return Overview(
        total=len(rows), counts={s: counts.get(s, 0) for s in STATES}, versions=version_counts(rows),
        events=recent_events(hub), models=len(hub.registry.versions()), rollouts=active_rollouts(hub, rows),
    )  # fmt: skip


@dataclass(frozen=True)
class Traffic:
    """Fleet-wide telemetry summed over the last hour and day."""

    hour: TelemetrySummary
    day: TelemetrySummary


def traffic(hub: HubServices, now: float | None = None) -> Traffic:
    """The overview's traffic numbers (one query over the day; the hour is summed from it)."""
    now = time.time() if now is None else now
    points = hub.telemetry.series(since=now - 86400)
    hour_start = int((now - 3600) // 60) * 60
    return Traffic(hour=summarise([p for p in points if p.minute >= hour_start]), day=summarise(points))


@dataclass
class ModelRow:
    """A model version and where it is deployed."""

    mv: ModelVersionView
    golden: dict[str, Any]
    input: str
    wanted_by: list[str] = field(default_factory=list)
    active_on: list[str] = field(default_factory=list)


def model_rows(hub: HubServices, rows: list[DeviceRow]) -> list[ModelRow]:
    """Every registered version, newest first per model, with the devices that want and run it."""
    active: dict[str, list[str]] = defaultdict(list)
    wanted: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        for m in r.running:
            active[m].append(r.id)
        for m in r.wanted:
            wanted[m].append(r.id)
    out = []
    versions = sorted(hub.registry.versions(), key=lambda m: (m.name, version_key(m.version)), reverse=True)
    for mv in sorted(versions, key=lambda m: m.name):
        golden = dict(mv.descriptor.get("golden") or {})
        spec = mv.descriptor.get("input") or {}
        size = f"{spec.get('height', '?')}{TIMES}{spec.get('width', '?')}" if spec else "?"
        key = f"{mv.name}:{mv.version}"
        out.append(
            ModelRow(model_version_view(mv), golden, size, wanted_by=sorted(wanted[key]), active_on=sorted(active[key]))
        )
    return out

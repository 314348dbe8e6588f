"""A small in-memory fleet for controller tests: devices follow what the controller publishes and report
telemetry drawn from a per-version profile. Plain data, no transport: the controller is pure."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fleet.histogram import LatencyRecorder, merge_all
from hub.rollouts.cohort import DeviceView, Target
from hub.rollouts.controller import Step, step
from hub.rollouts.gates import Totals
from hub.rollouts.model import Rollout, RolloutSpec

OLD = ("cls", "1.0.0")


@dataclass(frozen=True)
class Window:
    device_id: str
    start: float
    end: float
    stat: Totals


@dataclass
class Profile:
    latency_ms: float = 5.0
    error_rate: float = 0.0
    agreement: float = 1.0
    fail_activation: bool = False


@dataclass
class World:
    """Devices `d00`.. with labels; each holds a desired state for OLD and runs it."""

    n: int = 20
    labels: dict[str, str] = field(default_factory=lambda: {"site": "a"})
    profiles: dict[str, Profile] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)  # online but never apply anything
    # accept the desired state but stay downloading with this error (code, message), as an agent whose
    # download stalls does
    stalled: dict[str, tuple[str, str]] = field(default_factory=dict)
    rps: int = 50
    now: float = 1000.0
    fleet: dict[str, DeviceView] = field(default_factory=dict)
    log: list[Window] = field(default_factory=list)
    published: Counter[tuple[str, str]] = field(default_factory=Counter)  # (device, step) -> desired states sent

    def __post_init__(self) -> None:
        for i in range(self.n):
            self.add(f"d{i:02d}")

    def add(self, device_id: str, labels: dict[str, str] | None = None) -> None:
        self.fleet[device_id] = DeviceView(
            id=device_id, labels=dict(self.labels if labels is None else labels), desired_version=1,
            desired_model=OLD, accepted=1, phase="active", active=OLD,
        )  # fmt: skip

    def profile(self, version: str) -> Profile:
        return self.profiles.get(version, Profile())

    # -- what the engine and the agents do ----------------------------------------------------------
    def publish(self, r: Rollout, targets: list[Target]) -> None:
        for t in targets:
            v = self.fleet[t.device_id]
            if t.published(v, r.id):
                continue
            self.published[(t.device_id, t.step)] += 1
            self.fleet[t.device_id] = replace(
                v, desired_version=(v.desired_version or 0) + 1, desired_model=t.model, desired_shadow=t.shadow,
                desired_rollout=r.id if t.model is not None else None,  # a removed slot names no rollout
            )  # fmt: skip

    def follow(self) -> None:
        for d, view in self.fleet.items():
            v = view
            online = d not in self.offline
            if v.online != online:
                v = replace(v, online=online)
            if online and d in self.stalled and not v.caught_up:
                code, message = self.stalled[d]
                v = replace(v, accepted=v.desired_version, phase="downloading", error_code=code, error_message=message)
            elif online and d not in self.stuck and not v.caught_up:
                model = v.desired_model
                fail = model is not None and model != v.active and self.profile(model[1]).fail_activation
                if fail:
                    v = replace(v, accepted=v.desired_version, phase="failed", error_code="activation_failed")
                else:
                    v = replace(v, accepted=v.desired_version, phase="active", active=model, shadow=v.desired_shadow,
                                error_code=None)  # fmt: skip
            self.fleet[d] = v

    def traffic(self, seconds: float) -> None:
        for d, v in self.fleet.items():
            if not v.online or v.active is None:
                continue
            p = self.profile(v.active[1])
            rec = LatencyRecorder()
            n = int(self.rps * seconds)
            for _ in range(n):
                rec.observe(p.latency_ms)
            shadow = self.profile(v.shadow[1]) if v.shadow else None
            samples = n if shadow else 0
            stat = Totals(
                model_version=v.active[1],
                requests=n,
                errors=round(n * p.error_rate),
                latency=rec.snapshot(),
                shadow_version=v.shadow[1] if v.shadow else None,
                shadow_samples=samples,
                shadow_agreements=round(samples * shadow.agreement) if shadow else 0,
            )
            self.log.append(Window(d, self.now - seconds, self.now, stat))

    def totals(self, device_ids: Sequence[str], since: float, until: float) -> list[Totals]:
        ids = set(device_ids)
        groups: dict[tuple[str | None, str | None], list[Window]] = defaultdict(list)
        for w in self.log:
            if w.device_id in ids and since <= w.start < until:
                groups[(w.stat.model_version, w.stat.shadow_version)].append(w)
        return [
            Totals(
                model_version=mv,
                shadow_version=sv,
                devices=len({w.device_id for w in ws}),
                requests=sum(w.stat.requests for w in ws),
                errors=sum(w.stat.errors for w in ws),
                latency=merge_all(w.stat.latency for w in ws),
                shadow_samples=sum(w.stat.shadow_samples for w in ws),
                shadow_agreements=sum(w.stat.shadow_agreements for w in ws),
            )  # fmt: skip
            for (mv, sv), ws in groups.items()
        ]

    # -- driving ------------------------------------------------------------------------------------
    def tick(self, r: Rollout, dt: float = 1.0, *, claimed: set[str] | None = None) -> Step:
        self.now += dt
        self.follow()
        self.traffic(dt)
        s = step(r, self.fleet, self, now=self.now, claimed=claimed or set())
        self.publish(s.rollout, s.targets)
        return s

    def run(self, r: Rollout, *, max_ticks: int = 500, dt: float = 1.0) -> Rollout:
        for _ in range(max_ticks):
            s = self.tick(r, dt)
            r = s.rollout
            if not r.state.active or r.state.value == "paused":
                return r
        return r


def spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = {"model": "cls", "version": "2.0.0", "selector": "site=a", "bake_s": 5}
    base.update(kw)
    return RolloutSpec.model_validate(base)

"""The rollout controller: a pure state machine, no transport, no store, no clock of its own.

`step(rollout, fleet, telemetry, now)` returns the next record, the desired state every device of the
rollout should have (level-triggered: the engine publishes only those not already stored), and the events
to log. `command(...)` applies pause, resume, abort and rollback. `new_rollout(...)` places the targets in
waves (online devices first). The engine persists each new record before it acts on it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fleet.messages import RuntimeOptions
from hub.rollouts.cohort import DeviceView, Target, classify, device_error, targets
from hub.rollouts.errors import InvalidTransition, NoTargets, RolloutConflict
from hub.rollouts.gates import (
    TelemetryView,
    activation_gate,
    availability_gate,
    error_rate_gate,
    p95_gate,
    shadow_gate,
)
from hub.rollouts.model import DeviceEntry, GateResult, Rollout, RolloutSpec, RolloutState, Wave, WavePhase
from hub.rollouts.waves import assign, parse_waves
from hub.selectors import parse_selector

Event = tuple[str, dict[str, Any]]  # details name waves by number, counted from 1 as people do
Command = Literal["pause", "resume", "abort", "rollback"]
_MAX_TRANSITIONS = 200


@dataclass(frozen=True)
class Step:
    """What one controller step decided."""

    rollout: Rollout
    targets: list[Target] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


_DEFAULT_RUNTIME = RuntimeOptions().model_dump(mode="json")


def _entry(view: DeviceView, wave: int, now: float) -> DeviceEntry:
    prev = view.desired_model
    runtime = {} if view.desired_runtime == _DEFAULT_RUNTIME else dict(view.desired_runtime)  # {}: the defaults
    return DeviceEntry(
        wave=wave, prev_model=prev[0] if prev else None, prev_version=prev[1] if prev else None,
        prev_runtime=runtime, joined_at=now,
    )  # fmt: skip


def new_rollout(
    rollout_id: str,
    spec: RolloutSpec,
    fleet: Mapping[str, DeviceView],
    *,
    claimed: Mapping[str, str],
    actor: str,
    now: float,
) -> Rollout:
    """A new rollout with its targets placed in waves.

    Args:
        claimed: device id -> id of the active rollout of the same model that owns it.

    Raises:
        InvalidSelector: the selector does not parse.
        NoTargets: it matches no device.
        RolloutConflict: some targets belong to another active rollout (the message names them).
    """
    sel = parse_selector(spec.selector)
    matching = sorted(d for d, v in fleet.items() if sel.matches(v.labels))
    if not matching:
        raise NoTargets(f"selector {spec.selector!r} matches no enrolled device")
    taken = {d: claimed[d] for d in matching if d in claimed}
    if taken:
        owners = sorted(set(taken.values()))
        raise RolloutConflict(
            f"{len(taken)} of the {len(matching)} target device(s) are already in active rollout(s) "
            f"{', '.join(owners)} of {spec.model} (e.g. {', '.join(sorted(taken)[:5])}); a device takes part in one "
            "rollout per model at a time (rollouts of other models may run on it at once)"
        )
    sizes = parse_waves(spec.waves)
    # devices that are online now fill the first waves, so the canary can take the update; stored here, a
    # device's wave never moves afterwards (a device that goes offline later is set aside by the offline timeout)
    placed = assign(rollout_id, matching, sizes, online={d for d in matching if fleet[d].online})
    waves = [Wave(index=i, size=s.text) for i, s in enumerate(sizes)]
    devices = {d: _entry(fleet[d], placed[d], now) for d in matching}
    return Rollout(
        id=rollout_id, spec=spec, created_at=now, created_by=actor, updated_at=now, waves=waves, devices=devices
    )


_BY_OPERATOR = {"pause": "paused by an operator", "abort": "aborted by an operator",
                "rollback": "rolled back by an operator"}  # fmt: skip


def command(r: Rollout, action: Command, *, now: float, reason: str | None = None) -> tuple[Rollout, list[Event]]:
    """Apply an operator command; InvalidTransition when the rollout's state does not allow it.

    `reason` is the operator's note: kept in `note`, beside `reason`, which keeps a gate failure that stopped
    the rollout (after a rollback too) and otherwise says that an operator acted.
    """
    s = r.state
    wave = r.waves[r.current] if r.current < len(r.waves) else None
    failure = r.reason if wave is not None and wave.phase is WavePhase.FAILED else None
    why = failure or _BY_OPERATOR.get(action)
    if action == "pause" and s is RolloutState.RUNNING:
        r = r.model_copy(update={"state": RolloutState.PAUSED, "reason": why})
    elif action == "resume" and s is RolloutState.PAUSED:
        r = _resume(r, now)
    elif action == "abort" and s.active:
        r = r.model_copy(update={"state": RolloutState.ABORTED, "reason": why})
    elif action == "rollback" and s in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.COMPLETED):
        r = r.model_copy(update={"state": RolloutState.ROLLING_BACK, "reason": why})
    else:
        raise InvalidTransition(f"rollout {r.id} is {s.value}: cannot {action} it")
    r = r.model_copy(update={"seq": r.seq + 1, "updated_at": now, "note": reason})
    return r, [(f"rollout.{action}", {"state": r.state.value, "reason": r.reason, "note": reason})]


def _resume(r: Rollout, now: float) -> Rollout:
    """Back to running; a wave that failed or was baking starts its phase again (a fresh bake window)."""
    r = r.model_copy(update={"state": RolloutState.RUNNING, "reason": None})
    if r.current >= len(r.waves):
        return r
    w = r.waves[r.current]
    if w.phase in (WavePhase.FAILED, WavePhase.SHADOW_BAKING, WavePhase.BAKING):
        shadow = (w.failed_in or w.phase).shadow
        w = w.model_copy(
            update={
                "phase": WavePhase.SHADOW_LOADING if shadow else WavePhase.ACTIVATING,
                "started_at": now, "settled_at": None, "bake_until": None, "finished_at": None, "failed_in": None,
            }
        )  # fmt: skip
        r = _with_wave(r, w)
    return r


def _with_wave(r: Rollout, w: Wave) -> Rollout:
    waves = list(r.waves)
    waves[w.index] = w
    return r.model_copy(update={"waves": waves})


def _membership(
    r: Rollout, fleet: Mapping[str, DeviceView], claimed: Collection[str], now: float, events: list[Event]
) -> Rollout:
    """Devices that left the selector are set aside; devices that joined it go to the next wave not started."""
    sel = parse_selector(r.spec.selector)
    matching = {d for d, v in fleet.items() if sel.matches(v.labels)}
    devices = dict(r.devices)
    for d, e in r.devices.items():
        if d not in matching and e.left_at is None:
            devices[d] = e.model_copy(update={"left_at": now})
            events.append(("rollout.device_left", {"device": d, "wave": e.wave + 1}))
        elif d in matching and e.left_at is not None:
            devices[d] = e.model_copy(update={"left_at": None})
            events.append(("rollout.device_rejoined", {"device": d, "wave": e.wave + 1}))
    pending = [w.index for w in r.waves if w.phase is WavePhase.PENDING]
    wave = pending[0] if pending else len(r.waves) - 1
    for d in sorted(matching - set(devices) - set(claimed)):
        devices[d] = _entry(fleet[d], wave, now)
        events.append(("rollout.device_joined", {"device": d, "wave": wave + 1}))
    return r if devices == r.devices else r.model_copy(update={"devices": devices})


def step(
    r: Rollout,
    fleet: Mapping[str, DeviceView],
    telemetry: TelemetryView,
    *,
    now: float | None = None,
    grace_s: float = 0.0,
    claimed: Collection[str] = (),
) -> Step:
    """Advance one rollout as far as the fleet and the clock allow.

    Args:
        fleet: every enrolled device by id.
        telemetry: windows for the gates.
        grace_s: wait this long past a bake's end before judging it (windows still in flight).
        claimed: devices owned by other active rollouts (never added to this one).
    """
    now = time.time() if now is None else now
    if not r.state.active:
        return Step(r)
    start = r
    events: list[Event] = []
    if r.state in (RolloutState.RUNNING, RolloutState.PAUSED):
        r = _membership(r, fleet, claimed, now, events)
    for _ in range(_MAX_TRANSITIONS):
        if r.state is not RolloutState.RUNNING or r.current >= len(r.waves):
            break
        nxt = _advance(r, r.waves[r.current], fleet=fleet, tel=telemetry, now=now, grace_s=grace_s, events=events)
        if nxt is r:
            break
        r = nxt
    want = targets(r)
    if r.state is RolloutState.ROLLING_BACK and all(t.published(fleet.get(t.device_id), r.id) for t in want):
        r = r.model_copy(update={"state": RolloutState.ROLLED_BACK})
        events.append(("rollout.rolled_back", {"devices": len(want), "reason": r.reason}))
    if r != start:
        r = r.model_copy(update={"seq": r.seq + 1, "updated_at": now})
    return Step(r, want, events)


def _fail(
    r: Rollout, w: Wave, phase: WavePhase, gates: list[GateResult], *, now: float, events: list[Event]
) -> Rollout:
    failed = [g for g in gates if not g.passed]
    w = w.model_copy(update={"phase": WavePhase.FAILED, "failed_in": phase, "finished_at": now})
    reason = f"{wave_name(r, w)} failed: " + "; ".join(f"{g.name}: {g.detail}" for g in failed)
    rollback = r.spec.on_failure == "rollback"
    state = RolloutState.ROLLING_BACK if rollback else RolloutState.PAUSED
    events.append(("rollout.gate_failed", {"wave": w.index + 1, "gates": [g.model_dump(mode="json") for g in failed]}))
    events.append(("rollout.rollback" if rollback else "rollout.pause", {"state": state.value, "reason": reason}))
    return _with_wave(r, w).model_copy(update={"state": state, "reason": reason})


def wave_name(r: Rollout, w: Wave) -> str:
    """A wave as reasons name it, counted from 1, with its own devices and, after the first, its size as given
    (`--waves` sizes are cumulative) said to be cumulative, with the devices it stands for:
    `wave 1 of 4 (canary, 1 device)`, `wave 3 of 4 (16 devices; cumulative 50%: 21 of 42)`,
    `wave 2 of 3 (15 devices; cumulative 20 of 42)`."""
    n = len(r.members(w.index))
    devices = f"{n} device{'' if n == 1 else 's'}"
    if w.index == 0:
        return f"wave 1 of {len(r.waves)} ({'canary, ' if len(r.waves) > 1 else ''}{devices})"
    upto = sum(len(r.members(i)) for i in range(w.index + 1))
    total = sum(len(r.members(i)) for i in range(len(r.waves)))
    size = f"{w.size}: {upto}" if w.size.endswith("%") else str(upto)
    return f"wave {w.index + 1} of {len(r.waves)} ({devices}; cumulative {size} of {total})"


def _next(r: Rollout, w: Wave, now: float, events: list[Event]) -> Rollout:
    w = w.model_copy(update={"phase": WavePhase.PASSED, "finished_at": now})
    events.append(("rollout.wave_passed", {"wave": w.index + 1, "size": w.size}))
    r = _with_wave(r, w).model_copy(update={"current": w.index + 1})
    if r.current >= len(r.waves):
        r = r.model_copy(update={"state": RolloutState.COMPLETED})
        events.append(("rollout.completed", {"devices": len([e for e in r.devices.values() if e.left_at is None])}))
    return r


def _advance(
    r: Rollout,
    w: Wave,
    *,
    fleet: Mapping[str, DeviceView],
    tel: TelemetryView,
    now: float,
    grace_s: float,
    events: list[Event],
) -> Rollout:
    members = r.members(w.index)
    spec = r.spec
    if w.phase is WavePhase.PENDING:
        if not members:
            return _next(r, w, now, events)
        shadow = spec.shadow_rate is not None and any(r.devices[d].prev_model for d in members)
        phase = WavePhase.SHADOW_LOADING if shadow else WavePhase.ACTIVATING
        events.append(("rollout.wave_started", {"wave": w.index + 1, "size": w.size, "devices": len(members),
                                                 "phase": phase.value}))  # fmt: skip
        upd: dict[str, Any] = {"phase": phase, "started_at": now}
        if shadow:
            upd["shadow_started_at"] = now
        return _with_wave(r, w.model_copy(update=upd))
    if w.phase in (WavePhase.SHADOW_LOADING, WavePhase.ACTIVATING):
        return _settle(r, w, members, fleet=fleet, now=now, events=events)
    if w.phase in (WavePhase.SHADOW_BAKING, WavePhase.BAKING):
        assert w.bake_until is not None
        assert w.settled_at is not None
        assert w.started_at is not None
        if now < w.bake_until + grace_s:
            return r
        judged = [d for d in members if d not in w.set_aside]
        # the window grows past the bake while a gate lacks data (see below)
        since, until = w.settled_at, max(w.bake_until, now - grace_s, w.settled_at + 1e-3)
        windows = tel.totals(judged, since, until)
        if w.phase is WavePhase.SHADOW_BAKING:
            gates = [shadow_gate(windows, spec.version, spec.gates, since=since, until=until, now=now)]
        else:
            pending = [
                d for d, e in r.devices.items() if e.left_at is None and r.waves[e.wave].phase is WavePhase.PENDING
            ]
            control = tel.totals(pending, since, until) if pending else []
            on_old = sum(c.requests for c in control if c.model_version not in (None, spec.version))
            span = until - since  # the baseline is read only when the control cohort cannot serve
            baseline = tel.totals(judged, w.started_at - span, w.started_at) if on_old < spec.gates.min_requests else []
            found = [
                error_rate_gate(windows, spec.version, spec.gates, since=since, until=until, now=now),
                p95_gate(windows, control, baseline, spec.version, spec.gates, since=since, until=until, now=now),
            ]
            gates = [g for g in found if g is not None]
        if any(g.status == "no_data" for g in gates) and not any(g.status == "fail" for g in gates):
            if now < w.bake_until + grace_s + spec.offline_timeout_s:
                return r  # too little data yet: keep baking (judged again next tick over a longer window); a
                # gate that already failed on enough data is not waited out for another one
            if w.phase is WavePhase.SHADOW_BAKING:  # an unverified candidate is not activated
                gates = [g.model_copy(update={"status": "fail", "detail": f"{g.detail} after the offline timeout"})
                         if g.status == "no_data" else g for g in gates]  # fmt: skip
        w = w.model_copy(update={"gates": [*w.gates, *gates]})
        events.append(("rollout.gates", {"wave": w.index + 1, "gates": [g.model_dump(mode="json") for g in gates]}))
        if not all(g.passed for g in gates):
            return _fail(r, w, w.phase, gates, now=now, events=events)
        if w.phase is WavePhase.SHADOW_BAKING:
            events.append(("rollout.shadow_passed", {"wave": w.index + 1}))
            upd = {"phase": WavePhase.ACTIVATING, "started_at": now, "settled_at": None, "bake_until": None,
                   "set_aside": []}  # fmt: skip
            return _with_wave(r, w.model_copy(update=upd))
        return _next(r, w, now, events)
    return r


def _proven(r: Rollout, w: Wave) -> bool:
    """An earlier wave of the rollout passed its availability gate: some device took the candidate and was judged."""
    return any(g.name == "availability" and g.status == "pass" for x in r.waves[: w.index] for g in x.gates)


def _settle(
    r: Rollout, w: Wave, members: list[str], *, fleet: Mapping[str, DeviceView], now: float, events: list[Event]
) -> Rollout:
    """Wait until every device of the wave updated or failed, or the offline timeout passed; then bake."""
    shadow = w.phase is WavePhase.SHADOW_LOADING
    ready_state = "shadowing" if shadow else "active"
    states = {d: classify(r, d, fleet.get(d)) for d in members}
    judged = {d: s for d, s in states.items() if s not in ("no_baseline", "left")}
    failed = sorted(d for d, s in judged.items() if s == "failed")
    ready = sum(1 for s in judged.values() if s == ready_state)
    phase_name: Literal["shadow", "activation"] = "shadow" if shadow else "activation"
    spec = r.spec
    errors = {d: e for d in sorted(judged) if (e := device_error(r, fleet.get(d))) is not None}
    if len(failed) > spec.gates.max_activation_failures:  # fail fast: no need to wait for the rest
        gate = activation_gate(
            phase_name, failed, ready=ready, total=len(judged), spec=spec.gates, now=now, errors=errors
        )
        return _fail(r, w.model_copy(update={"gates": [*w.gates, gate]}), w.phase, [gate], now=now, events=events)
    waiting = [d for d, s in judged.items() if s not in (ready_state, "failed")]
    assert w.started_at is not None
    timed_out = now >= w.started_at + spec.offline_timeout_s
    if waiting and not timed_out:
        return r
    offline = sorted(d for d in waiting if judged[d] == "offline")
    stuck = sorted(d for d in waiting if judged[d] != "offline")  # online but not updated in time: failures
    gates = [
        activation_gate(
            phase_name, failed + stuck, ready=ready, total=len(judged), spec=spec.gates, now=now, errors=errors
        ),
        availability_gate(phase_name, ready=ready, offline=offline, total=len(judged), now=now, proven=_proven(r, w)),
    ]
    w = w.model_copy(update={"gates": [*w.gates, *gates], "set_aside": offline + stuck})
    if not all(g.passed for g in gates):
        return _fail(r, w, w.phase, gates, now=now, events=events)
    events.append(("rollout.wave_settled", {"wave": w.index + 1, "phase": phase_name, "ready": ready,
                                             "offline": offline, "timed_out": timed_out}))  # fmt: skip
    if ready == 0:  # all offline, set aside, after earlier waves judged the candidate: nothing to bake or measure
        if shadow:
            upd = {"phase": WavePhase.ACTIVATING, "started_at": now, "set_aside": []}
            return _with_wave(r, w.model_copy(update=upd))
        return _next(r, w, now, events)
    nxt = WavePhase.SHADOW_BAKING if shadow else WavePhase.BAKING
    upd = {"phase": nxt, "settled_at": now, "bake_until": now + spec.bake_s}
    return _with_wave(r, w.model_copy(update=upd))

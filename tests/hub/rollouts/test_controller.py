"""The rollout controller as a pure state machine: waves, bake, gates, pause/rollback, offline, membership."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.errors import InvalidSelector
from hub.rollouts.cohort import DeviceView, classify
from hub.rollouts.controller import command, new_rollout, step, wave_name
from hub.rollouts.errors import InvalidTransition, NoTargets, RolloutConflict
from hub.rollouts.model import Rollout, RolloutState, WavePhase
from hub.rollouts.views import status_view
from hub.rollouts.waves import rank_key
from tests.hub.rollouts.world import OLD, Profile, World, spec

NEW = ("cls", "2.0.0")


def start(world: World, rid: str = "r-0001", **kw: object) -> Rollout:
    return new_rollout(rid, spec(**kw), world.fleet, claimed={}, actor="alice", now=world.now)


def test_a_healthy_version_rolls_through_every_wave_to_100_percent() -> None:
    w = World(20)
    r = start(w, waves=["1", "10%", "50%", "100%"])
    assert [len(r.members(i)) for i in range(4)] == [1, 1, 8, 10]
    seen_started = []
    for _ in range(200):
        s = w.tick(r)
        r = s.rollout
        seen_started += [d["wave"] for a, d in s.events if a == "rollout.wave_started"]
        # a wave starts only after the previous one passed
        for i, wave in enumerate(r.waves[1:], 1):
            if wave.phase is not WavePhase.PENDING:
                assert r.waves[i - 1].phase is WavePhase.PASSED
        if r.state is not RolloutState.RUNNING:
            break
    assert r.state is RolloutState.COMPLETED
    assert seen_started == [1, 2, 3, 4]  # waves are numbered from 1 in events
    assert all(v.desired_model == NEW and v.active == NEW for v in w.fleet.values())
    for wave in r.waves:
        names = {g.name: g for g in wave.gates}
        assert {"activation", "availability", "error_rate", "p95_latency"} <= set(names)
        assert all(g.status != "fail" for g in wave.gates)
    # control cohort: devices still on the old version in the same window; the last wave uses the baseline
    assert r.waves[0].gates[-1].measured["control_source"] == "control"
    assert r.waves[-1].gates[-1].measured["control_source"] == "baseline"
    # each device got exactly one desired state for its step
    assert set(w.published.values()) == {1}
    assert len(w.published) == 20


def test_a_slower_version_fails_p95_in_the_canary_and_is_rolled_back() -> None:
    w = World(20, profiles={"2.0.0": Profile(latency_ms=40.0)})
    r = w.run(start(w, on_failure="rollback"))
    assert r.state is RolloutState.ROLLED_BACK
    canary = r.waves[0]
    assert canary.phase is WavePhase.FAILED and canary.failed_in is WavePhase.BAKING
    gate = next(g for g in canary.gates if g.name == "p95_latency")
    assert gate.status == "fail"
    assert gate.measured["wave_p95_ms"] > 30 and gate.measured["control_p95_ms"] < 10
    assert gate.measured["control_source"] == "control" and gate.measured["control_devices"] == 19
    assert "p95_latency" in (r.reason or "")
    assert all(x.phase is WavePhase.PENDING for x in r.waves[1:])
    (d,) = r.members(0)
    assert w.fleet[d].desired_model == OLD and w.fleet[d].desired_rollout == r.id
    w.tick(r)
    assert w.fleet[d].active == OLD
    assert classify(r, d, w.fleet[d]) == "rolled_back"
    # no other device was ever touched
    assert {dev for dev, _ in w.published} == {d}


def test_error_rate_gate_pauses_then_resume_bakes_again_and_manual_rollback() -> None:
    w = World(10, profiles={"2.0.0": Profile(error_rate=0.1)})
    r = w.run(start(w, waves=["1", "100%"]))
    assert r.state is RolloutState.PAUSED
    gate = next(g for g in r.waves[0].gates if g.name == "error_rate")
    assert gate.status == "fail" and gate.value == pytest.approx(0.1, abs=0.01)
    # paused: nothing moves, the canary keeps the candidate
    for _ in range(10):
        r = w.tick(r).rollout
    assert r.state is RolloutState.PAUSED and r.waves[1].phase is WavePhase.PENDING
    w.profiles["2.0.0"] = Profile()  # "fixed" (e.g. a bad upstream dependency recovered)
    r, events = command(r, "resume", now=w.now)
    assert events[0][0] == "rollout.resume" and r.waves[0].phase is WavePhase.ACTIVATING
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED
    r, _ = command(r, "rollback", now=w.now, reason="customer complaint")
    assert r.state is RolloutState.ROLLING_BACK and r.note == "customer complaint"
    assert r.reason == "rolled back by an operator"
    r = w.run(r)
    assert r.state is RolloutState.ROLLED_BACK
    assert all(v.desired_model == OLD for v in w.fleet.values())


def test_a_rollback_keeps_the_gate_failure_beside_the_operators_note() -> None:
    w = World(10, profiles={"2.0.0": Profile(error_rate=0.1)})
    r = w.run(start(w, waves=["1", "50%", "100%"]))
    assert r.state is RolloutState.PAUSED
    failure = r.reason or ""
    # waves counted from 1, as on the dashboard, and named by their part and devices
    assert failure.startswith("wave 1 of 3 (canary, 1 device) failed: error_rate")
    r, events = command(r, "rollback", now=w.now, reason="bad canary, rolling back")
    assert r.state is RolloutState.ROLLING_BACK and r.reason == failure and r.note == "bad canary, rolling back"
    assert events == [("rollout.rollback", {"state": "rolling_back", "reason": failure, "note": r.note})]
    r = w.run(r)
    assert r.state is RolloutState.ROLLED_BACK and r.reason == failure


def test_a_disagreeing_candidate_fails_the_shadow_gate_before_any_device_activates_it() -> None:
    w = World(10, profiles={"2.0.0": Profile(agreement=0.5)})
    r = start(w, shadow_rate=0.5, on_failure="rollback", waves=["2", "100%"])
    saw_shadow = False
    for _ in range(100):
        r = w.tick(r).rollout
        saw_shadow |= any(v.shadow == NEW for v in w.fleet.values())
        assert all(v.desired_model != NEW for v in w.fleet.values())
        if not r.state.active:
            break
    assert saw_shadow
    assert r.state is RolloutState.ROLLED_BACK
    gate = next(g for g in r.waves[0].gates if g.name == "shadow_agreement")
    assert gate.status == "fail" and gate.value == pytest.approx(0.5, abs=0.02)
    assert r.waves[0].failed_in is WavePhase.SHADOW_BAKING
    assert all(v.active == OLD and v.desired_shadow is None for v in w.fleet.values() if v.desired_rollout)


def test_an_agreeing_shadow_passes_then_activates() -> None:
    w = World(6)
    r = w.run(start(w, shadow_rate=1.0, waves=["1", "100%"]))
    assert r.state is RolloutState.COMPLETED
    for wave in r.waves:
        assert [g.name for g in wave.gates if g.phase == "shadow"][-1] == "shadow_agreement"
        assert wave.shadow_started_at is not None
    assert all(v.active == NEW for v in w.fleet.values())


def test_activation_failures_fail_the_wave_at_once() -> None:
    w = World(10, profiles={"2.0.0": Profile(fail_activation=True)})
    r = w.run(start(w, waves=["3", "100%"], on_failure="rollback"))
    assert r.state is RolloutState.ROLLED_BACK
    gate = r.waves[0].gates[-1]
    assert gate.name == "activation" and gate.status == "fail" and gate.measured["failed"] >= 1
    assert r.waves[0].failed_in is WavePhase.ACTIVATING


def test_a_rollback_of_devices_that_had_no_version_removes_the_slot_once_and_ends() -> None:
    """New devices in the rollout's selector (no version of the model yet) and a failing canary: the rollback
    removes the model's slot there, once, and the rollout ends rolled back (it used to sign the removal
    again at every tick, for ever: a removed slot names no rollout)."""
    w = World(6, profiles={"2.0.0": Profile(fail_activation=True)})
    for d in w.fleet:
        w.fleet[d] = DeviceView(id=d, labels={"site": "a"})  # enrolled, never deployed to
    r = w.run(start(w, waves=["2", "100%"], on_failure="rollback"), max_ticks=50)
    assert r.state is RolloutState.ROLLED_BACK
    changed = r.members(0)
    assert all(w.fleet[d].desired_model is None and w.fleet[d].desired_rollout is None for d in changed)
    assert [n for (_, step), n in w.published.items() if step == f"{r.id}/rollback"] == [1] * len(changed)
    assert [classify(r, d, w.fleet[d]) for d in changed] == ["rolled_back"] * len(changed)
    assert all(w.fleet[d].desired_version is None for d in r.members(1))  # the later wave was never touched


def test_offline_devices_are_set_aside_after_the_timeout_and_never_hold_a_wave() -> None:
    w = World(10)
    r = start(w, waves=["5", "100%"], offline_timeout_s=20)
    victim = r.members(0)[0]
    w.offline.add(victim)
    for _ in range(10):
        r = w.tick(r).rollout
    assert r.waves[0].phase is WavePhase.ACTIVATING  # still waiting within the timeout
    counts = [classify(r, d, w.fleet[d]) for d in r.members(0)]
    assert counts.count("offline") == 1 and counts.count("active") == 4
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED
    assert r.waves[0].set_aside == [victim]
    avail = next(g for g in r.waves[0].gates if g.name == "availability")
    assert avail.measured["offline"] == 1
    # it still holds the candidate as its desired state and takes it when it comes back
    w.offline.clear()
    w.follow()
    assert w.fleet[victim].active == NEW


def _by_hash(w: World, rid: str = "r-0001") -> list[str]:
    return sorted(w.fleet, key=lambda d: rank_key(rid, d))


def _offline(w: World, *devices: str) -> None:
    w.offline |= set(devices)
    w.follow()  # the hub sees them offline before the rollout starts


def test_the_canary_is_an_online_device_when_the_hash_first_one_is_offline() -> None:
    w = World(20)
    ranked = _by_hash(w)
    _offline(w, *ranked[:3])  # the hash would have made the first of them the canary, the next the 10 % wave
    r = start(w, waves=["1", "10%", "50%", "100%"], offline_timeout_s=30)
    assert [len(r.members(i)) for i in range(4)] == [1, 1, 8, 10]  # sizes as configured
    assert r.members(0) == [ranked[3]] and r.members(1) == [ranked[4]]  # online ones, in hash order
    assert set(ranked[:3]) <= set(r.members(3))  # offline ones fill the last wave
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED, r.reason
    assert [wave.set_aside for wave in r.waves] == [[], [], [], sorted(ranked[:3])]
    assert w.fleet[ranked[3]].active == NEW


def test_with_every_device_offline_the_waves_are_as_by_hash_alone() -> None:
    w = World(20)
    placed = {d: e.wave for d, e in start(w).devices.items()}
    _offline(w, *w.fleet)
    assert {d: e.wave for d, e in start(w).devices.items()} == placed
    assert start(w).members(0) == _by_hash(w)[:1]


def test_waves_are_reproducible_and_never_move_when_devices_come_and_go() -> None:
    w = World(20)
    ranked = _by_hash(w)
    _offline(w, ranked[0])
    r = start(w, waves=["1", "10%", "50%", "100%"], offline_timeout_s=30)
    shuffled = World(0)
    shuffled.fleet = dict(reversed(list(w.fleet.items())))
    assert start(shuffled).devices == r.devices  # the same fleet in another order: the same waves
    placed = {d: e.wave for d, e in r.devices.items()}
    w.offline = {r.members(0)[0], *r.members(2)[:2]}  # the canary drops out; the hash-first one comes back
    for _ in range(300):
        r = w.tick(r).rollout
        assert {d: e.wave for d, e in r.devices.items()} == placed
        if r.state is not RolloutState.RUNNING:
            break
    assert r.state is RolloutState.PAUSED and "availability" in (r.reason or "")  # the canary was not replaced


@pytest.mark.parametrize("shadow", [False, True])
def test_last_waves_of_devices_offline_since_the_start_do_not_fail_a_rollout_earlier_waves_proved(
    shadow: bool,
) -> None:
    w = World(20)
    away = _by_hash(w)[8:]  # 12 devices: the whole last wave (10) and two of the third
    _offline(w, *away)
    r = start(w, waves=["1", "10%", "50%", "100%"], offline_timeout_s=10, on_failure="rollback",
              shadow_rate=0.5 if shadow else None)  # fmt: skip
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED, r.reason
    assert set(r.members(3)) <= set(away) and r.waves[3].set_aside == r.members(3)
    avail = [g for g in r.waves[3].gates if g.name == "availability"]
    assert [g.status for g in avail] == ["pass"] * (2 if shadow else 1)
    assert "0 of 10 device(s) ready; 10 offline set aside (the candidate passed earlier waves)" in avail[-1].detail
    assert not any(g.name in ("error_rate", "p95_latency", "shadow_agreement") for g in r.waves[3].gates)
    # they take the candidate when they come back
    w.offline.clear()
    w.follow()
    assert all(w.fleet[d].active == NEW for d in away)


def test_a_wave_with_every_device_offline_pauses_with_the_reason() -> None:
    w = World(4)
    r = start(w, waves=["1", "100%"], offline_timeout_s=5)
    w.offline |= set(r.members(0))
    r = w.run(r)
    assert r.state is RolloutState.PAUSED
    assert "availability" in (r.reason or "")


def test_online_devices_that_never_update_count_as_failures_at_the_timeout() -> None:
    w = World(4)
    r = start(w, waves=["1", "100%"], offline_timeout_s=5)
    w.stuck |= set(r.members(0))
    r = w.run(r)
    assert r.state is RolloutState.PAUSED
    assert r.waves[0].gates[-2].name == "activation" and r.waves[0].gates[-2].status == "fail"


FULL = "no space left on device for blob 3f2a9c1d0b7e: needs 151.3 MiB more (incl. 64.0 MiB kept free), 90.2 MiB free"


def test_a_canary_whose_disk_is_too_small_fails_at_once_with_the_reason() -> None:
    """insufficient_disk (the agent retries it, `permanent` false) needs a person: the canary fails on the
    first tick that sees it, naming the device and the numbers, instead of showing "updating" until the offline
    timeout (600 s here) ends the wait."""
    w = World(10)
    r = start(w, waves=["1", "100%"], offline_timeout_s=600)
    (canary,) = r.members(0)
    w.stalled[canary] = ("insufficient_disk", FULL)
    r = w.run(r, max_ticks=10)
    assert r.state is RolloutState.PAUSED
    assert classify(r, canary, w.fleet[canary]) == "failed"
    gate = r.waves[0].gates[-1]
    assert gate.name == "activation" and gate.status == "fail"
    assert gate.measured["errors"] == {canary: f"insufficient_disk: {FULL}"}
    assert r.reason == (
        f"wave 1 of 2 (canary, 1 device) failed: activation: 1 of 1 device(s) failed to activate "
        f"({canary}: insufficient_disk: {FULL})"
    )
    assert all(v.desired_model == OLD for d, v in w.fleet.items() if d != canary)  # wave 2 never started


def test_a_read_only_disk_fails_a_shadow_load_at_once() -> None:
    w = World(4)
    r = start(w, waves=["1", "100%"], shadow_rate=0.5, offline_timeout_s=600)
    (canary,) = r.members(0)
    w.stalled[canary] = ("disk_read_only", "cannot start 3f2a9c1d0b7e: Read-only file system")
    r = w.run(r, max_ticks=10)
    assert r.state is RolloutState.PAUSED and r.waves[0].failed_in is WavePhase.SHADOW_LOADING
    assert f"{canary}: disk_read_only: cannot start 3f2a9c1d0b7e: Read-only file system" in (r.reason or "")


def test_a_transient_download_error_keeps_the_device_waiting_with_its_error_shown() -> None:
    """download_failed (a network blip) is retried by the agent and may pass: the wave waits as before, the
    status shows the device's error beside its state, and at the timeout the reason names it."""
    w = World(4)
    r = start(w, waves=["1", "100%"], offline_timeout_s=30)
    (canary,) = r.members(0)
    blip = "chunk wants unanswered for 30 s: broker unreachable"
    w.stalled[canary] = ("download_failed", blip)
    for _ in range(10):
        r = w.tick(r).rollout
    assert r.state is RolloutState.RUNNING and r.waves[0].phase is WavePhase.ACTIVATING
    assert classify(r, canary, w.fleet[canary]) == "updating"
    wave = status_view(r, w.fleet, devices=True).waves[0]
    assert wave.device_states == {canary: "updating"}
    assert wave.device_errors == {canary: f"download_failed: {blip}"}
    assert status_view(r, w.fleet).waves[0].device_errors is None  # only asked for with the devices
    r = w.run(r)
    assert r.state is RolloutState.PAUSED
    assert f"activation: 1 of 1 device(s) failed to activate ({canary}: download_failed: {blip})" in (r.reason or "")


def test_an_error_from_before_the_rollout_is_not_shown_as_its_own() -> None:
    """A device still reporting an error about an earlier desired state (another rollout's, or none) is neither
    failed nor shown with it until it accepted this rollout's desired state."""
    w = World(4)
    r = start(w, waves=["1", "100%"])
    (canary,) = r.members(0)
    w.fleet[canary] = replace(w.fleet[canary], phase="downloading", error_code="insufficient_disk", error_message=FULL)
    w.stuck.add(canary)  # never accepts the rollout's desired state
    for _ in range(3):
        r = w.tick(r).rollout
    assert classify(r, canary, w.fleet[canary]) == "updating"
    assert status_view(r, w.fleet, devices=True).waves[0].device_errors == {}


def test_devices_joining_go_to_the_next_wave_not_started_and_leavers_are_left_alone() -> None:
    w = World(10)
    r = start(w, waves=["1", "50%", "100%"])
    for _ in range(3):
        r = w.tick(r).rollout
    assert r.waves[0].phase is not WavePhase.PENDING
    w.add("late-1")
    leaver = r.members(2)[0]
    w.fleet[leaver] = w.fleet[leaver].__class__(**{**w.fleet[leaver].__dict__, "labels": {"site": "b"}})
    r = w.tick(r).rollout
    assert r.devices["late-1"].wave == 1
    assert r.devices[leaver].left_at is not None
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED
    assert w.fleet["late-1"].active == NEW
    assert w.fleet[leaver].desired_model == OLD and (leaver, f"{r.id}/w2/activate") not in w.published
    # after every wave started, a joiner goes to the last wave
    w2 = World(4)
    r2 = start(w2, waves=["1", "100%"])
    while r2.waves[1].phase is WavePhase.PENDING:
        r2 = w2.tick(r2).rollout
    w2.add("late-2")
    r2 = w2.tick(r2).rollout
    assert r2.devices["late-2"].wave == 1


def test_joiners_owned_by_another_active_rollout_are_not_taken() -> None:
    w = World(3)
    r = start(w, waves=["100%"])
    w.add("other")
    s = w.tick(r, claimed={"other"})
    assert "other" not in s.rollout.devices


def test_start_refuses_conflicts_no_targets_and_bad_selectors() -> None:
    w = World(3)
    with pytest.raises(RolloutConflict, match="r-beef"):
        new_rollout("r-0002", spec(), w.fleet, claimed={"d01": "r-beef"}, actor="a", now=0)
    with pytest.raises(NoTargets):
        new_rollout("r-0002", spec(selector="site=nowhere"), w.fleet, claimed={}, actor="a", now=0)
    with pytest.raises(InvalidSelector):
        new_rollout("r-0002", spec(selector="site in (a"), w.fleet, claimed={}, actor="a", now=0)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (RolloutState.RUNNING, "resume"),
        (RolloutState.PAUSED, "pause"),
        (RolloutState.COMPLETED, "pause"),
        (RolloutState.COMPLETED, "abort"),
        (RolloutState.ROLLED_BACK, "rollback"),
        (RolloutState.ABORTED, "resume"),
        (RolloutState.ROLLING_BACK, "rollback"),
    ],
)
def test_commands_refuse_transitions_their_state_does_not_allow(state: RolloutState, action: str) -> None:
    r = start(World(2)).model_copy(update={"state": state})
    with pytest.raises(InvalidTransition, match=state.value):
        command(r, action, now=1)  # type: ignore[arg-type]


def test_abort_leaves_devices_as_they_are_and_stops_targeting() -> None:
    w = World(5)
    r = start(w, waves=["1", "100%"])
    for _ in range(3):
        r = w.tick(r).rollout
    r, _ = command(r, "abort", now=w.now)
    s = w.tick(r)
    assert s.targets == [] and s.rollout == r
    assert sum(v.desired_model == NEW for v in w.fleet.values()) == 1


def test_a_step_without_news_changes_nothing() -> None:
    w = World(5)
    r = w.run(start(w, waves=["1", "100%"], bake_s=1000), max_ticks=5)
    s1 = step(r, w.fleet, w, now=w.now)
    s2 = step(s1.rollout, w.fleet, w, now=w.now)
    assert s2.rollout == s1.rollout and s2.rollout.seq == s1.rollout.seq
    assert all(t.published(w.fleet[t.device_id], r.id) for t in s2.targets)


def test_restarting_at_any_step_continues_and_never_sends_a_step_twice() -> None:
    """Each tick the record goes through JSON (a restart); every third tick "crashes" before publishing."""
    w = World(12)
    r = start(w, shadow_rate=1.0)
    for i in range(400):
        w.now += 1
        w.follow()
        w.traffic(1)
        s = step(Rollout.model_validate_json(r.model_dump_json()), w.fleet, w, now=w.now)
        r = s.rollout
        if i % 3 != 2:
            w.publish(r, s.targets)
        if not r.state.active:
            break
    assert r.state is RolloutState.COMPLETED
    assert set(w.published.values()) == {1}
    steps = {st.rsplit("/", 1)[1] for _, st in w.published}
    assert steps == {"shadow", "activate"}


def test_a_failed_shadow_with_pause_withdraws_the_shadow_and_resume_tries_again() -> None:
    w = World(4, profiles={"2.0.0": Profile(agreement=0.0)})
    r = w.run(start(w, shadow_rate=1.0, waves=["2", "100%"]))
    assert r.state is RolloutState.PAUSED and "shadow_agreement" in (r.reason or "")
    for _ in range(2):
        r = w.tick(r).rollout
    assert [classify(r, d, w.fleet[d]) for d in r.members(0)] == ["rolled_back", "rolled_back"]
    assert all(w.fleet[d].shadow is None and w.fleet[d].active == OLD for d in r.members(0))
    w.profiles["2.0.0"] = Profile()
    r, _ = command(r, "resume", now=w.now)
    assert r.waves[0].phase is WavePhase.SHADOW_LOADING
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED


def test_without_traffic_a_wave_keeps_baking_until_the_timeout_then_records_no_data() -> None:
    w = World(4, rps=0)
    r = start(w, waves=["1", "100%"], bake_s=5, offline_timeout_s=30)
    for _ in range(20):
        r = w.tick(r).rollout
    assert r.waves[0].phase is WavePhase.BAKING and r.waves[0].gates[-1].name == "availability"
    w.rps = 50  # traffic arrives late: judged over the longer window
    r = w.tick(r).rollout
    assert r.waves[0].phase is WavePhase.PASSED
    assert r.waves[0].gates[-1].status == "pass" and r.waves[0].gates[-1].until == w.now
    w.rps = 0
    r = w.run(r)
    assert r.state is RolloutState.COMPLETED
    assert {g.status for g in r.waves[1].gates if g.name in ("error_rate", "p95_latency")} == {"no_data"}


def test_a_shadow_nobody_could_compare_is_never_activated() -> None:
    w = World(3, rps=0)
    r = w.run(start(w, waves=["100%"], shadow_rate=0.5, offline_timeout_s=20))
    assert r.state is RolloutState.PAUSED
    gate = r.waves[0].gates[-1]
    assert gate.name == "shadow_agreement" and gate.status == "fail" and "offline timeout" in gate.detail
    assert all(v.desired_model == OLD for v in w.fleet.values())


def test_a_failing_gate_is_judged_at_once_though_another_lacks_data() -> None:
    """Every device is in the wave and none served before it started: p95 has nothing to compare with
    (no_data), while error_rate has its requests and fails. The wave fails when its bake ends; before, the
    no_data gate kept it baking until the offline timeout, and the failing version stayed on for 10 min."""
    w = World(4, rps=0, profiles={"2.0.0": Profile(error_rate=0.2)})
    r = start(w, waves=["100%"], bake_s=5, offline_timeout_s=600)
    while r.waves[0].phase is not WavePhase.BAKING:
        r = w.tick(r).rollout
    w.rps = 50  # the candidate serves; nothing was served before
    r = w.run(r, max_ticks=60)
    assert r.state is RolloutState.PAUSED
    wave = r.waves[0]
    gates = {g.name: g for g in wave.gates}
    assert gates["error_rate"].status == "fail" and gates["p95_latency"].status == "no_data"
    assert "error_rate" in (r.reason or "")
    until = gates["error_rate"].until
    assert wave.bake_until is not None and until is not None and until < wave.bake_until + 600


def test_a_device_whose_rollback_failed_counts_as_failed_with_its_error() -> None:
    """The rollback signs the old version again and the device fails to activate it: it stays on the candidate
    with an error. It read "updating" for ever, as if the rollback were still on its way."""
    w = World(4, profiles={NEW[1]: Profile(error_rate=0.5), OLD[1]: Profile(fail_activation=True)})
    r = w.run(start(w, waves=["1", "100%"], on_failure="rollback"))
    assert r.state is RolloutState.ROLLED_BACK
    (canary,) = r.members(0)
    r = w.tick(r).rollout  # the canary reports on the rollback's desired state
    view = w.fleet[canary]
    assert view.caught_up and view.desired_model == OLD and view.active == NEW and view.phase == "failed"
    assert classify(r, canary, view) == "failed"
    st = status_view(r, w.fleet, devices=True)
    assert st.waves[0].device_states == {canary: "failed"}
    assert st.waves[0].device_errors == {canary: "activation_failed"}
    assert st.totals.failed == 1 and st.totals.rolled_back == 0


def test_a_wave_is_named_by_its_own_devices_and_its_cumulative_size_is_said_to_be_cumulative() -> None:
    """`--waves` sizes are cumulative, a wave's device count is its own: "wave 3 of 4 (50%, 16 devices)" read as
    16 devices being half the rollout (they were 16 more, 21 of 42 in all), and "(20, 15 devices)" as nonsense."""
    w = World(42)
    r = start(w, waves=["1", "10%", "50%", "100%"])
    assert [len(r.members(i)) for i in range(4)] == [1, 4, 16, 21]
    assert [wave_name(r, x) for x in r.waves] == [
        "wave 1 of 4 (canary, 1 device)",
        "wave 2 of 4 (4 devices; cumulative 10%: 5 of 42)",
        "wave 3 of 4 (16 devices; cumulative 50%: 21 of 42)",
        "wave 4 of 4 (21 devices; cumulative 100%: 42 of 42)",
    ]
    r = start(World(42), waves=["5", "20", "100%"])
    assert [wave_name(r, x) for x in r.waves] == [
        "wave 1 of 3 (canary, 5 devices)", "wave 2 of 3 (15 devices; cumulative 20 of 42)",
        "wave 3 of 3 (22 devices; cumulative 100%: 42 of 42)",
    ]  # fmt: skip
    st = status_view(r, World(42).fleet)
    assert [(x.devices, x.cumulative) for x in st.waves] == [(5, 5), (15, 20), (22, 42)]

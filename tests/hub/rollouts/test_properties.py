"""Properties of the controller under random fleet behaviour: devices going offline, failing, slowing down,
joining and leaving, the hub "restarting" (the record through JSON) and "crashing" before it publishes."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rollouts.cohort import previous
from hub.rollouts.controller import new_rollout, step
from hub.rollouts.model import Rollout, RolloutState, WavePhase
from tests.hub.rollouts.world import Profile, World, spec
from tests.support.fuzz import examples

MIDDLE = {WavePhase.SHADOW_LOADING, WavePhase.SHADOW_BAKING, WavePhase.ACTIVATING, WavePhase.BAKING}
Event = tuple[str, int]
events = st.lists(
    st.tuples(st.sampled_from(["offline", "online", "stuck", "unstuck", "join", "leave", "slow", "crash", "tick"]),
              st.integers(0, 15)),
    max_size=60,
)  # fmt: skip


def check(r: Rollout, w: World) -> None:
    assert Rollout.model_validate_json(r.model_dump_json()) == r
    assert sum(x.phase in MIDDLE for x in r.waves) <= 1
    for x in r.waves[r.current + 1 :]:
        assert x.phase is WavePhase.PENDING
    for x in r.waves[: r.current]:
        assert x.phase is WavePhase.PASSED
    for d, e in r.devices.items():
        if r.waves[e.wave].phase is WavePhase.PENDING and e.left_at is None:
            assert w.fleet[d].desired_rollout != r.id, f"{d} was sent something before its wave started"
    assert all(n == 1 for n in w.published.values()), w.published


@settings(max_examples=examples(120), deadline=None)
@given(events, st.booleans(), st.sampled_from(["pause", "rollback"]))
def test_random_fleets_keep_the_invariants_and_always_end(evs: list[Event], shadow: bool, on_failure: str) -> None:
    w = World(12)
    r = new_rollout(
        "r-feed", spec(waves=["1", "25%", "100%"], bake_s=3, offline_timeout_s=8, on_failure=on_failure,
                       shadow_rate=0.5 if shadow else None), w.fleet, claimed={}, actor="t", now=w.now,
    )  # fmt: skip
    seq = r.seq
    for kind, k in evs:
        name = f"d{k:02d}" if k < 12 else f"x{k}"
        if kind == "offline":
            w.offline.add(name)
        elif kind in ("online", "unstuck"):
            w.offline.discard(name)
            w.stuck.discard(name)
        elif kind == "stuck":
            w.stuck.add(name)
        elif kind == "join" and name not in w.fleet:
            w.add(name)
        elif kind == "leave" and name in w.fleet:
            w.fleet[name] = replace(w.fleet[name], labels={"site": "elsewhere"})
        elif kind == "slow":
            w.profiles["2.0.0"] = Profile(latency_ms=50.0)
        w.now += 1
        w.follow()
        w.traffic(1)
        s = step(Rollout.model_validate_json(r.model_dump_json()), w.fleet, w, now=w.now)
        assert s.rollout.seq >= seq
        r, seq = s.rollout, s.rollout.seq
        if kind != "crash":
            w.publish(r, s.targets)
        check(r, w)
    # heal the fleet: whatever happened, the rollout ends (completed, paused or rolled back) and never hangs
    w.offline.clear()
    w.stuck.clear()
    r = w.run(r, max_ticks=300)
    assert r.state in (RolloutState.COMPLETED, RolloutState.PAUSED, RolloutState.ROLLED_BACK), r.state
    check(r, w)
    if r.state is RolloutState.ROLLED_BACK:
        for d, e in r.devices.items():
            if e.left_at is None and r.waves[e.wave].phase is not WavePhase.PENDING:
                assert w.fleet[d].desired_model == previous(e)
    if r.state is RolloutState.COMPLETED:
        assert all(w.fleet[d].desired_model == ("cls", "2.0.0") for d, e in r.devices.items() if e.left_at is None)

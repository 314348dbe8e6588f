"""Wave sizes and membership: deterministic, order-independent, canary first, stable for placed devices."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rollouts.model import RolloutSpec
from hub.rollouts.waves import assign, parse_waves, rank_key
from tests.hub.rollouts.world import World, spec
from tests.support.fuzz import examples

ids = st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=0, max_size=200, unique=True)
rollout_ids = st.from_regex(r"r-[0-9a-f]{12}", fullmatch=True)
WAVES = parse_waves(["1", "10%", "50%", "100%"])


@given(ids, rollout_ids, st.randoms(use_true_random=False))
def test_membership_is_a_deterministic_partition_whatever_the_input_order(
    devices: list[str], rid: str, rnd: random.Random
) -> None:
    placed = assign(rid, devices, WAVES)
    shuffled = list(devices)
    rnd.shuffle(shuffled)
    assert assign(rid, shuffled, WAVES) == placed
    assert set(placed) == set(devices)
    n = len(devices)
    sizes = [sum(1 for w in placed.values() if w == i) for i in range(4)]
    cumulative = [min(1, n), max(min(1, n), math.ceil(n * 0.1)), math.ceil(n * 0.5), n]
    for i in range(4):
        assert sum(sizes[: i + 1]) == max(cumulative[: i + 1])
    if n:
        assert sizes[0] == 1  # the canary wave comes first and holds one device


@given(ids, ids, rollout_ids)
def test_relative_order_never_depends_on_other_devices(a: list[str], b: list[str], rid: str) -> None:
    # the rank is a hash of (rollout, device): adding devices never reorders the ones already ranked
    both = sorted(set(a) | set(b), key=lambda d: rank_key(rid, d))
    only_a = sorted(a, key=lambda d: rank_key(rid, d))
    assert [d for d in both if d in set(a)] == only_a


@given(ids, st.data(), rollout_ids)
def test_online_devices_fill_the_first_waves_in_hash_order(devices: list[str], data: st.DataObject, rid: str) -> None:
    online = set(data.draw(st.lists(st.sampled_from(devices), unique=True))) if devices else set()
    placed = assign(rid, devices, WAVES, online=online)
    # the sizes are those of the waves without the preference
    assert sorted(placed.values()) == sorted(assign(rid, devices, WAVES).values())
    # every online device is in a wave no later than any offline one
    if online and set(devices) - online:
        assert max(placed[d] for d in online) <= min(placed[d] for d in set(devices) - online)
    # among equals the hash decides: each group, in wave order, is in rank order
    for group in (online, set(devices) - online):
        by_wave = sorted(group, key=lambda d: (placed[d], rank_key(rid, d)))
        assert by_wave == sorted(group, key=lambda d: rank_key(rid, d))
    # nobody online, or everybody: the same as by hash alone
    assert assign(rid, devices, WAVES, online=set()) == assign(rid, devices, WAVES, online=set(devices))
    assert assign(rid, devices, WAVES, online=set()) == assign(rid, devices, WAVES)


@settings(max_examples=examples(40), deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["join", "leave", "offline", "online", "tick"]), st.integers(0, 30)),
             max_size=30),
    st.sets(st.integers(0, 11)),
)  # fmt: skip
def test_a_placed_device_never_changes_wave_while_others_join_leave_or_go_offline(
    ops: list[tuple[str, int]], down: set[int]
) -> None:
    w = World(12)
    from hub.rollouts.controller import new_rollout  # noqa: PLC0415

    for i in down:  # offline when the rollout starts
        w.offline.add(f"d{i:02d}")
    w.follow()
    r = new_rollout("r-abcd", spec(waves=["1", "25%", "100%"]), w.fleet, claimed={}, actor="t", now=w.now)
    placed = {d: e.wave for d, e in r.devices.items()}
    for op, k in ops:
        name = f"x{k:02d}" if op in ("join", "leave") else f"d{k % 12:02d}"
        if op == "join":
            w.add(name)
        elif op == "leave" and name in w.fleet:
            w.add(name, labels={"site": "gone"})
        elif op == "offline":
            w.offline.add(name)
        elif op == "online":
            w.offline.discard(name)
        r = w.tick(r).rollout
        for d, e in r.devices.items():
            assert placed.setdefault(d, e.wave) == e.wave


def test_different_rollouts_pick_different_canaries() -> None:
    devices = [f"cam-{i}" for i in range(50)]
    canaries = {next(d for d, w in assign(f"r-{i:04x}", devices, WAVES).items() if w == 0) for i in range(20)}
    assert len(canaries) > 5


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        (["10%", "5%", "100%"], "increase"),
        (["1", "50%"], "last wave must be 100%"),
        (["0", "100%"], "at least 1"),
        (["abc"], "device count"),
        (["x%"], "not a percentage"),
        (["150%"], "(0, 100]"),
        (["nan%"], "(0, 100]"),
        (["10%", "5", "100%"], "before percentages"),
        ([" , "], "at least one"),
        (["1"] * 40, "at most 32"),
        (["9" * 20, "100%"], "device count"),
    ],
)
def test_bad_wave_lists_are_refused_with_the_reason(waves: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("%", "%")):
        parse_waves(waves)
    with pytest.raises(ValueError):
        RolloutSpec(model="m", version="1.0.0", selector="a=b", waves=waves)


def test_a_comma_separated_string_is_accepted() -> None:
    assert [w.text for w in parse_waves(["1,10%, 100%"])] == ["1", "10%", "100%"]
    assert assign("r-0000", ["a", "b", "c"], parse_waves(["1", "10%", "100%"])).values().__len__() == 3

"""Acceptance of rollouts over real Mosquitto: real agents (in-process, serving traffic) and simulated ones.

- a healthy version rolls to 100 % through every wave;
- a slower version fails the p95 gate in the canary wave and is rolled back, with both p95s recorded (a
  profile of simulated agents, and a really heavier model on real agents);
- a version whose outputs disagree fails the shadow gate before any device activates it;
- shadow agreement is the candidate's own when versions differ in input size and normalisation;
- the canary is a device that is online when most targets are offline;
- the hub stopped mid-wave and started again on the same data dir finishes the rollout, and no device
  receives a second desired state for a step it already had.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from typer.testing import CliRunner

from edgefleet_cli import app
from tests.hub.rollouts.fleet import Fleet, cls_models_fixture, colour_models_fixture, fleet_fixture  # noqa: F401
from tests.support.models import colour_photos
from tests.support.mqtt import wait_for

Models = dict[str, tuple[Path, Path]]
ROOT = Path(__file__).resolve().parents[2]


def _cli(f: Fleet, *args: str, timeout: float = 150) -> tuple[int, str]:
    """The CLI as a process of its own (a hung follower fails here, it does not hang the suite)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    cmd = [sys.executable, str(ROOT / "edgefleet_cli.py"), *args, "--url", f.hub.url, "--token", f.hub.admin_token]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return res.returncode, res.stdout + res.stderr


def _start(f: Fleet, version: str, selector: str, **kw: object) -> str:
    # a p95 from ~100 requests of one device is noisy: allow 50 % (the slow version is 10x slower)
    body = {"model": "cls", "version": version, "selector": selector, "bake_s": 1.0,
            "gates": {"max_p95_regression": 0.5}, **kw}  # fmt: skip
    return str(f.api("POST", "/api/v1/rollouts", json=body)["id"])


def test_a_healthy_version_rolls_to_100_percent_through_all_waves(fleet: Fleet, cls_models: Models) -> None:
    f = fleet
    f.push(cls_models, "1.0.0", "2.0.0")
    f.real("cam-real-1", {"fleet": "e2e"})
    f.real("cam-real-2", {"fleet": "e2e"})
    f.sims(20, {"fleet": "e2e"})
    wait_for(lambda: all(v is None for v in f.active_versions("fleet=e2e").values()), timeout=30)
    wait_for(lambda: len(f.api("GET", "/api/v1/devices", params={"selector": "fleet=e2e"})) == 22, timeout=30)
    f.deploy("1.0.0", "fleet=e2e")
    f.wait_all_active("1.0.0", "fleet=e2e")

    # started from the CLI, which follows it to its outcome: exit 0 when it completed
    code, said = _cli(f, "rollout", "start", "cls:2.0.0", "-s", "fleet=e2e", "--waves", "1,10%,50%,100%", "--bake",
                      "1s", "--max-p95-regression", "0.5", "--wait", "--interval", "0.5")  # fmt: skip
    rid = said.split("rollout ", 1)[1].split()[0]
    status = f.api("GET", f"/api/v1/rollouts/{rid}")
    assert code == 0 and status["state"] == "completed", (said, status["reason"])
    assert "22/22 on cls:2.0.0" in said and f"{rid} completed" in said
    assert [w["devices"] for w in status["waves"]] == [1, 2, 8, 11]
    assert all(w["phase"] == "passed" for w in status["waves"])
    assert status["totals"]["active"] == 22
    for w in status["waves"]:
        gates = {g["name"]: g for g in w["gates"]}
        assert {"activation", "availability", "error_rate", "p95_latency"} <= set(gates), w
        assert all(g["status"] != "fail" for g in w["gates"])
    f.wait_all_active("2.0.0", "fleet=e2e")
    # the CLI shows the same status as a table, with the gates
    res = CliRunner().invoke(app, ["rollout", "status", rid, "--url", f.hub.url, "--token", f.hub.admin_token])
    assert res.exit_code == 0, res.output
    assert "completed" in res.output and "p95" in res.output and "error_rate" in res.output
    # a second rollout on the same devices is fine now; the first one refuses commands that make no sense
    with f.hub.client() as c:
        r = c.post(f"/api/v1/rollouts/{rid}/resume")
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert f.traffic_errors == []  # no request of a real device failed once its model was reported active


def test_a_slower_version_fails_p95_in_the_canary_and_is_rolled_back(fleet: Fleet, cls_models: Models) -> None:
    f = fleet
    f.push(cls_models, "1.0.0", "3.0.0")
    f.sims(20, {"fleet": "slow"})
    wait_for(lambda: len(f.api("GET", "/api/v1/devices", params={"selector": "fleet=slow"})) == 20, timeout=30)
    f.deploy("1.0.0", "fleet=slow")
    f.wait_all_active("1.0.0", "fleet=slow")

    rid = _start(f, "3.0.0", "fleet=slow", on_failure="rollback")
    code, said = _cli(f, "rollout", "status", rid, "--watch", "--interval", "0.5")  # exits 1: rolled back
    status = f.api("GET", f"/api/v1/rollouts/{rid}")
    assert code == 1 and status["state"] == "rolled_back", said
    assert "p95_latency" in said and "wave 1 of 4 (canary, 1 device) failed" in said  # the reason, waves counted from 1
    canary = status["waves"][0]
    assert canary["phase"] == "failed" and canary["failed_in"] == "baking"
    gate = next(g for g in canary["gates"] if g["name"] == "p95_latency")
    assert gate["status"] == "fail"
    m = gate["measured"]
    assert m["control_source"] == "control" and m["control_devices"] == 19
    assert m["wave_p95_ms"] > m["control_p95_ms"] * (1 + gate["threshold"])
    assert all(w["phase"] == "pending" for w in status["waves"][1:])
    # the canary got a newly signed desired state with the previous version and runs it again
    f.wait_all_active("1.0.0", "fleet=slow")
    desired = f.api("GET", "/api/v1/deployments")
    assert {m["model_version"] for d in desired for m in d["models"]} == {"1.0.0"}
    wanted = {"rollout.gate_failed", "rollout.rollback", "rollout.rolled_back"}
    # the rollout's state is saved before its events: wait for the events rather than read them once
    wait_for(
        lambda: wanted <= {e["action"] for e in f.api("GET", "/api/v1/events", params={"subject": f"rollout/{rid}"})}
    )


def test_a_heavier_model_on_real_agents_fails_p95_in_the_canary_and_is_rolled_back(
    fleet: Fleet, cls_models: Models
) -> None:
    f = fleet
    f.push(cls_models, "1.0.0", "3.1.0")
    for i in range(3):
        f.real(f"cam-h{i}", {"fleet": "heavy"})
    wait_for(lambda: len(f.active_versions("fleet=heavy")) == 3, timeout=30)
    f.deploy("1.0.0", "fleet=heavy")
    f.wait_all_active("1.0.0", "fleet=heavy")

    rid = _start(f, "3.1.0", "fleet=heavy", waves=["1", "100%"], on_failure="rollback")
    status = f.wait_rollout(rid, lambda s: s["state"] == "rolled_back")
    gate = next(g for g in status["waves"][0]["gates"] if g["name"] == "p95_latency")
    m = gate["measured"]
    assert gate["status"] == "fail" and m["control_source"] == "control" and m["control_devices"] == 2
    assert m["wave_p95_ms"] > m["control_p95_ms"] * (1 + gate["threshold"])
    assert status["waves"][1]["phase"] == "pending"
    f.wait_all_active("1.0.0", "fleet=heavy")
    assert f.traffic_errors == []  # overloaded by the heavier model, never unreachable


def test_a_disagreeing_version_fails_the_shadow_gate_before_any_device_activates_it(
    fleet: Fleet, cls_models: Models
) -> None:
    f = fleet
    f.push(cls_models, "1.0.0", "2.1.0")
    f.real("cam-a", {"fleet": "shadow"})
    f.real("cam-b", {"fleet": "shadow"})
    wait_for(lambda: len(f.active_versions("fleet=shadow")) == 2, timeout=30)
    f.deploy("1.0.0", "fleet=shadow")
    f.wait_all_active("1.0.0", "fleet=shadow")
    f.watch_desired()

    rid = _start(f, "2.1.0", "fleet=shadow", waves=["1", "100%"], shadow_rate=1.0, on_failure="rollback")
    status = f.wait_rollout(rid, lambda s: s["state"] == "rolled_back")
    canary = status["waves"][0]
    assert canary["failed_in"] == "shadow_baking"
    gate = next(g for g in canary["gates"] if g["name"] == "shadow_agreement")
    assert gate["status"] == "fail" and gate["measured"]["samples"] >= 20
    assert gate["value"] < 0.98 and gate["measured"]["mean_latency_delta_ms"] is not None
    assert status["waves"][1]["phase"] == "pending"
    # the candidate ran only as a shadow: never the desired model of any device, never active, never served
    wait_for(lambda: len(f.desired_log) >= 2, timeout=10)
    slots = [d.slot("cls") for d in f.desired_log]
    assert any(s is not None and s.shadow is not None and s.shadow.model.version == "2.1.0" for s in slots)
    assert all(s is not None and s.model.version == "1.0.0" for s in slots)
    assert set(f.active_versions("fleet=shadow").values()) == {"1.0.0"}
    for device in ("cam-a", "cam-b"):
        windows = f.hub.hub.store.telemetry_windows(device, since=None, until=None, limit=10_000)
        assert all(w.model_version != "2.1.0" for w in windows)
    assert f.traffic_errors == []  # the active model stayed reachable: the samples came from its traffic


def test_the_canary_is_an_online_device_when_most_targets_are_offline(fleet: Fleet, cls_models: Models) -> None:
    """30 targets enrolled and never connected, 2 simulated agents online: by hash alone the canary would be
    offline 30 times in 32 (a wave waiting out the offline timeout, then failing availability); it is online."""
    f = fleet
    f.push(cls_models, "1.0.0", "2.0.0")
    offline = [f"cam-away-{i:02d}" for i in range(30)]
    f.api("POST", "/api/v1/devices/batch", json={"devices": [{"id": d, "labels": {"fleet": "mixed"}} for d in offline]})
    online = f.sims(2, {"fleet": "mixed"})
    f.deploy("1.0.0", "fleet=mixed")
    wait_for(lambda: {d: v for d, v in f.active_versions("fleet=mixed").items() if d in online}
             == dict.fromkeys(online, "1.0.0"), timeout=60)  # fmt: skip

    rid = _start(f, "2.0.0", "fleet=mixed", waves=["1", "2", "100%"], offline_timeout_s=3)
    status = f.wait_rollout(rid, lambda s: s["state"] != "running")
    assert status["state"] == "completed", status["reason"]
    detail = f.api("GET", f"/api/v1/rollouts/{rid}", params={"devices": True})
    canary, second, rest = (w["device_states"] for w in detail["waves"])
    assert list(canary) in ([online[0]], [online[1]]) and list(second) == [d for d in online if d not in canary]
    assert set(canary.values()) == {"active"} and all(g["status"] != "fail" for g in detail["waves"][0]["gates"])
    # the offline ones make the last wave: set aside at the timeout, after the first two judged the candidate
    assert sorted(rest) == offline and set(rest.values()) == {"offline"}
    assert detail["waves"][2]["set_aside"] == offline
    assert all(v == "2.0.0" for d, v in f.active_versions("fleet=mixed").items() if d in online)


def test_the_hub_restarted_mid_wave_finishes_and_sends_no_step_twice(fleet: Fleet, cls_models: Models) -> None:
    f = fleet
    f.push(cls_models, "1.0.0", "2.0.0")
    devices = f.sims(20, {"fleet": "restart"})
    wait_for(lambda: len(f.api("GET", "/api/v1/devices", params={"selector": "fleet=restart"})) == 20, timeout=30)
    f.deploy("1.0.0", "fleet=restart")
    f.wait_all_active("1.0.0", "fleet=restart")
    f.watch_desired()

    rid = _start(f, "2.0.0", "fleet=restart", waves=["1", "25%", "100%"], bake_s=1.5)
    f.wait_rollout(rid, lambda s: s["waves"][1]["phase"] in ("activating", "baking"), timeout=60)
    f.hub.restart()  # stop the hub object, start a new one on the same data dir
    status = f.wait_rollout(rid, lambda s: s["state"] != "running")
    assert status["state"] == "completed", status["reason"]
    f.wait_all_active("2.0.0", "fleet=restart")
    # per device and content, one desired version: a restart re-sends the same signed state, never a new one
    versions: dict[tuple[str, str], set[int]] = defaultdict(set)
    for d in f.desired_log:
        slot = d.slot("cls")
        if slot is not None and slot.rollout_id == rid:
            versions[(d.device_id, slot.model.version)].add(d.version)
    assert {dev for dev, _ in versions} == set(devices)
    assert all(len(v) == 1 for v in versions.values()), versions


def test_shadow_agreement_is_the_candidates_own_across_input_size_and_normalisation(
    fleet: Fleet, colour_models: Models
) -> None:
    """Real agents serving photos over the HTTP API. 1.1.0 and 1.2.0 take another input size, dtype, layout,
    channel order and normalisation than 1.0.0; each answers on its own preprocessing. 1.1.0 disagrees on
    exactly 2 of the 8 photos: the gate sees 75 %. 1.2.0 answers alike on every photo: it passes and activates."""
    f = fleet
    f.push(colour_models, "1.0.0", "1.1.0", "1.2.0")
    photos, agrees = colour_photos()
    f.real("cam-c1", {"fleet": "colour"}, photos=("colour", photos))
    f.real("cam-c2", {"fleet": "colour"}, photos=("colour", photos))
    wait_for(lambda: len(f.active_versions("fleet=colour")) == 2, timeout=30)
    f.deploy("1.0.0", "fleet=colour", model="colour")
    f.wait_all_active("1.0.0", "fleet=colour")

    gates = {"min_agreement": 0.9, "min_requests": 40, "max_p95_regression": None}  # latency is not judged here
    body = {"model": "colour", "selector": "fleet=colour", "bake_s": 1.0, "waves": ["1", "100%"], "shadow_rate": 1.0,
            "on_failure": "rollback", "gates": gates}  # fmt: skip
    rid = f.api("POST", "/api/v1/rollouts", json={**body, "version": "1.1.0"})["id"]
    status = f.wait_rollout(rid, lambda s: s["state"] == "rolled_back")
    gate = next(g for g in status["waves"][0]["gates"] if g["name"] == "shadow_agreement")
    m = gate["measured"]
    share = sum(agrees) / len(agrees)
    assert gate["status"] == "fail" and m["samples"] >= 40 and m["incomparable"] == 0
    # one device sends the 8 photos in turn: any run of samples holds 6 agreements per 8, give or take a cycle's edge
    assert abs(m["agreements"] - share * m["samples"]) <= 3, m
    assert set(f.active_versions("fleet=colour").values()) == {"1.0.0"}

    rid = f.api("POST", "/api/v1/rollouts", json={**body, "version": "1.2.0"})["id"]
    status = f.wait_rollout(rid, lambda s: s["state"] != "running")
    assert status["state"] == "completed", status["reason"]
    for wave in status["waves"]:
        gate = next(g for g in wave["gates"] if g["name"] == "shadow_agreement")
        assert gate["status"] == "pass" and gate["value"] == 1.0 and gate["measured"]["incomparable"] == 0
    f.wait_all_active("1.2.0", "fleet=colour")
    assert f.traffic_errors == []  # hot swaps and rollbacks never broke a request

"""The rollout API and engine on a real hub: bad input, roles, conflicts, commands, restart continuity.

The hub's own tick is slowed to every 10 minutes here; tests call `engine.tick(now)` themselves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.messages import AppliedModel, DeviceStatus, Phase
from hub.rollouts.controller import step
from hub.rollouts.engine import COLLECTION, INDEX, RolloutEngine, StoreTelemetry
from hub.rollouts.model import Rollout, RolloutSpec, RolloutState, WavePhase
from hub.store import DesiredSlot, SqlStore
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.wire import one_model_report

MODEL = "mobilenet-like"


def _slots(store: SqlStore, device_id: str) -> tuple[DesiredSlot, ...]:
    """The model slots of a device's stored desired state (the test expects it to have one)."""
    desired = store.get_desired(device_id)
    assert desired is not None, f"{device_id} has no desired state"
    return desired.slots


def _version(store: SqlStore, device_id: str) -> str | None:
    """The version the device's desired state names for MODEL (None: no slot for it)."""
    desired = store.get_desired(device_id)
    assert desired is not None, f"{device_id} has no desired state"
    slot = desired.slot(MODEL)
    return slot.model_version if slot is not None else None


def _hub(broker: Broker, data_dir: Path, samples: Path) -> RunningHub:
    prefix = f"test/{uuid.uuid4().hex[:12]}/fleet/v1"
    h = start_hub(data_dir, broker.url, prefix, rollouts={"tick_interval_s": 600})
    r = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml")
    assert r.status_code == 201, r.text
    with h.client() as c:
        for i in range(6):
            site = "a" if i < 4 else "b"
            assert c.post("/api/v1/devices", json={"id": f"cam-{i}", "labels": {"site": site}}).status_code == 201
    return h


@pytest.fixture
def hub(broker: Broker, tmp_path: Path, samples: Path) -> Iterator[RunningHub]:
    h = _hub(broker, tmp_path / "hub", samples)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def shared_hub(broker: Broker, tmp_path_factory: pytest.TempPathFactory, samples: Path) -> Iterator[RunningHub]:
    """One hub for the tests that only get refused (they change nothing)."""
    h = _hub(broker, tmp_path_factory.mktemp("hub"), samples)
    yield h
    h.stop()


def body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "version": "1.0.0", "selector": "site=a", "bake_s": 1, **kw}


def error(r: httpx.Response) -> tuple[int, str, str]:
    e = r.json()["error"]
    return r.status_code, e["code"], e["message"]


@pytest.mark.parametrize(
    ("payload", "status", "code", "words"),
    [
        (body(version="9.9.9"), 404, "not_found", "9.9.9"),
        (body(selector="site=nowhere"), 400, "no_match", "matches no"),
        (body(selector="site in (a"), 400, "invalid_selector", "position"),
        (body(selector="x" * 5000), 400, "invalid_request", "selector"),
        (body(waves=["10%", "5%", "100%"]), 400, "invalid_request", "increase"),
        (body(waves=["1", "50%"]), 400, "invalid_request", "100%"),
        (body(bake_s=-1), 400, "invalid_request", "bake_s"),
        (body(on_failure="explode"), 400, "invalid_request", "on_failure"),
        (body(shadow_rate=0), 400, "invalid_request", "shadow_rate"),
        (body(gates={"max_error_rate": 2}), 400, "invalid_request", "max_error_rate"),
        (body(gates={"bogus": 1}), 400, "invalid_request", "bogus"),
        (body(extra=1), 400, "invalid_request", "extra"),
        ({"model": MODEL}, 400, "invalid_request", "version"),
        (body(version="not-semver"), 400, "invalid_request", "version"),
        (body(model="../etc"), 400, "invalid_request", "model"),
    ],
)
def test_bad_starts_are_refused_with_the_reason_and_store_nothing(
    shared_hub: RunningHub, payload: dict[str, Any], status: int, code: str, words: str
) -> None:
    with shared_hub.client() as c:
        got = error(c.post("/api/v1/rollouts", json=payload))
        assert got[:2] == (status, code), got
        assert words in got[2]
        assert c.get("/api/v1/rollouts").json() == []


def test_malformed_and_oversized_bodies_are_refused(shared_hub: RunningHub) -> None:
    with shared_hub.client() as c:
        for content in (b"{", b"[]", b"\xff\xfe", b"null", b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
            r = c.post("/api/v1/rollouts", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 400, (content[:20], r.text)
        r = c.post("/api/v1/rollouts", json=body(waves=["1"] * 100))
        assert r.status_code == 400


def test_roles_and_unknown_ids(hub: RunningHub) -> None:
    viewer = hub.token("viewer")
    with hub.client(token=None) as anon, hub.client(token=viewer) as v, hub.client() as admin:
        assert anon.get("/api/v1/rollouts").status_code == 401
        assert v.get("/api/v1/rollouts").status_code == 200
        assert error(v.post("/api/v1/rollouts", json=body()))[:2] == (403, "forbidden")
        rid = admin.post("/api/v1/rollouts", json=body()).json()["id"]
        assert v.post(f"/api/v1/rollouts/{rid}/pause").status_code == 403
        assert error(admin.get("/api/v1/rollouts/r-doesnotexist"))[:2] == (404, "not_found")
        assert error(admin.post("/api/v1/rollouts/r-doesnotexist/pause"))[:2] == (404, "not_found")
        assert admin.post(f"/api/v1/rollouts/{rid}/explode").status_code in (404, 405)
        assert admin.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "x" * 501}).status_code == 400
        assert admin.post(f"/api/v1/rollouts/{rid}/pause", json={"why": "x"}).status_code == 400
        assert admin.get("/api/v1/rollouts", params={"state": "bogus"}).status_code == 400


def test_a_conflicting_rollout_is_refused_naming_the_owner_and_commands_follow_the_state(hub: RunningHub) -> None:
    with hub.client() as c:
        first = c.post("/api/v1/rollouts", json=body()).json()
        assert first["state"] == "running" and first["devices"] == 4
        status, code, message = error(c.post("/api/v1/rollouts", json=body(selector="site")))
        assert (status, code) == (409, "rollout_conflict") and first["id"] in message
        # disjoint devices: fine
        other = c.post("/api/v1/rollouts", json=body(selector="site=b"))
        assert other.status_code == 201, other.text
        rid = first["id"]
        paused = c.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "lunch"}).json()
        assert paused["note"] == "lunch" and paused["reason"] == "paused by an operator"
        assert error(c.post(f"/api/v1/rollouts/{rid}/pause"))[:2] == (409, "invalid_transition")
        assert c.post(f"/api/v1/rollouts/{rid}/resume").json()["state"] == "running"
        assert c.post(f"/api/v1/rollouts/{rid}/abort").json()["state"] == "aborted"
        assert error(c.post(f"/api/v1/rollouts/{rid}/resume"))[:2] == (409, "invalid_transition")
        assert error(c.post(f"/api/v1/rollouts/{rid}/rollback"))[:2] == (409, "invalid_transition")
        # aborted: its devices are free again
        assert c.post("/api/v1/rollouts", json=body()).status_code == 201
        listed = c.get("/api/v1/rollouts", params={"active": True}).json()
        assert len(listed) == 2 and all(x["state"] == "running" for x in listed)
        events = c.get("/api/v1/events", params={"subject": f"rollout/{rid}"}).json()
        assert [e["action"] for e in events][::-1] == ["rollout.start", "rollout.pause", "rollout.resume",
                                                       "rollout.abort"]  # fmt: skip


def test_a_new_engine_continues_from_the_store_and_publishes_each_step_once(hub: RunningHub) -> None:
    h = hub.hub
    engine: RolloutEngine = h.rollouts
    r = engine.start_rollout(RolloutSpec.model_validate(body(waves=["1", "100%"])), actor="t")
    now = time.time()
    # a crash right after the transition was stored, before anything was published
    s = step(r, engine.fleet(MODEL, now), StoreTelemetry(h.store, MODEL), now=now)
    assert s.rollout.waves[0].phase is WavePhase.ACTIVATING and len(s.targets) == 1
    h.store.put_doc(COLLECTION, r.id, s.rollout.model_dump(mode="json"))
    assert all(m.rollout_id != r.id for d in h.store.list_desired() for m in d.slots)
    h.store.delete_doc(INDEX, r.id)  # as stored by a hub from before the listing index
    restarted = RolloutEngine(h.store, h.registry, h.deployer, h.settings.rollouts, h.settings.devices)
    assert restarted.get(r.id) == s.rollout
    assert [x.id for x in restarted.summaries()] == [r.id]
    restarted.tick(now + 0.1)
    (canary,) = s.rollout.members(0)
    desired = h.store.get_desired(canary)
    slot = desired.slot(MODEL) if desired is not None else None
    assert slot is not None and slot.rollout_id == r.id and slot.model_version == "1.0.0"
    # more ticks, and another restart: nothing new is signed for the same step
    again = RolloutEngine(h.store, h.registry, h.deployer, h.settings.rollouts, h.settings.devices)
    for i in range(3):
        again.tick(now + 1 + i)
    assert h.store.get_desired(canary) == desired
    assert [d.device_id for d in h.store.list_desired() if any(m.rollout_id == r.id for m in d.slots)] == [canary]
    # devices never came online: after the offline timeout the wave pauses, with the reason stored
    spec = s.rollout.spec
    again.tick(now + spec.offline_timeout_s + 1)
    stored = Rollout.model_validate(h.store.get_doc(COLLECTION, r.id))
    assert stored.state is RolloutState.PAUSED and "availability" in (stored.reason or "")
    assert stored.seq > s.rollout.seq


def test_metrics_show_active_rollouts_and_their_wave(hub: RunningHub) -> None:
    with hub.client() as c:
        rid = c.post("/api/v1/rollouts", json=body()).json()["id"]
        c.post(f"/api/v1/rollouts/{rid}/pause")
        text = c.get("/metrics").text
    assert 'edgefleet_hub_rollouts_active{state="paused"} 1.0' in text
    assert 'edgefleet_hub_rollouts_active{state="running"} 0.0' in text
    assert f'edgefleet_hub_rollout_wave{{model="{MODEL}",rollout="{rid}",state="paused",version="1.0.0"}} 0.0' in text
    assert "edgefleet_hub_rollout_tick_errors_total 0.0" in text


def _report(h: RunningHub, device: str, version: str, seq: int) -> None:
    """The device says (through the hub's ingestion path) that it runs `version` of its current desired state."""
    store = h.hub.store
    desired = store.get_desired(device)
    slot = desired.slot(MODEL) if desired is not None else None
    assert desired is not None and slot is not None
    now = time.time()
    store.enqueue_status(DeviceStatus(device_id=device, state="online", ts=now, session="s"), now)
    active = AppliedModel(name=MODEL, version=version, sha256=slot.sha256)
    store.enqueue_reported(
        one_model_report(device, seq=seq, ts=now, desired_version=desired.version, phase=Phase.ACTIVE,
                         active=active, model=MODEL), now,
    )  # fmt: skip
    store.flush()


def test_a_rollback_whose_previous_version_was_deleted_retries_until_it_is_back(hub: RunningHub, samples: Path) -> None:
    h = hub
    onnx, yaml = samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml"
    assert h.push_model(onnx, yaml, version="2.0.0").status_code == 201
    with h.client() as c:
        assert c.post("/api/v1/deployments", json={"model": MODEL, "version": "1.0.0", "selector": "site=b"}).is_success
    for i, d in enumerate(("cam-4", "cam-5")):
        _report(h, d, "1.0.0", i + 1)
    engine: RolloutEngine = h.hub.rollouts
    spec = RolloutSpec.model_validate(body(version="2.0.0", selector="site=b", waves=["100%"], bake_s=0,
                                           offline_timeout_s=5))  # fmt: skip
    r = engine.start_rollout(spec, actor="t")
    assert all(e.prev_runtime == {} and e.prev_version == "1.0.0" for e in r.devices.values())  # {}: defaults
    now = time.time()
    engine.tick(now)
    for i, d in enumerate(("cam-4", "cam-5")):
        _report(h, d, "2.0.0", 10 + i)
    engine.tick(now + 1)  # settled
    engine.tick(now + 30)  # no traffic: after grace (15 s) and offline timeout the gates record no_data
    assert engine.get(r.id).state is RolloutState.COMPLETED
    with h.client() as c:
        assert c.delete(f"/api/v1/models/{MODEL}/1.0.0").status_code == 204  # nobody wants it any more
        assert c.post(f"/api/v1/rollouts/{r.id}/rollback").json()["state"] == "rolling_back"
    assert engine.publish_errors == 1
    engine.tick(now + 31)
    assert engine.get(r.id).state is RolloutState.ROLLING_BACK and engine.publish_errors == 2
    assert h.push_model(onnx, yaml).status_code == 201  # the previous version is back
    engine.tick(now + 32)
    engine.tick(now + 33)
    assert engine.get(r.id).state is RolloutState.ROLLED_BACK
    assert {_version(h.hub.store, d) for d in ("cam-4", "cam-5")} == {"1.0.0"}


def test_rollouts_of_two_models_share_devices_and_each_slot_moves_alone(hub: RunningHub, samples: Path) -> None:
    """Two models on the same devices: a deploy, an undeploy and a rollout each change one model's slot of the
    signed desired state and leave the other's; two rollouts of different models run at once, a second one of
    the same model is refused (409)."""
    h = hub
    assert h.push_model(samples / "tiny-detector.onnx", samples / "tiny-detector.yaml").status_code == 201
    assert h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml", version="2.0.0").is_success
    store = h.hub.store
    with h.client() as c:
        assert c.post("/api/v1/deployments", json={"model": MODEL, "version": "1.0.0", "selector": "site=a"}).is_success
        det = {"model": "tiny-detector", "version": "1.0.0", "selector": "site"}
        assert c.post("/api/v1/deployments", json=det).is_success
        before = store.get_desired("cam-0")
        assert before is not None and [s.model_name for s in before.slots] == [MODEL, "tiny-detector"]
        assert [s.model_name for s in _slots(store, "cam-5")] == ["tiny-detector"]
        r_cls = c.post("/api/v1/rollouts", json=body(version="2.0.0", waves=["100%"]))
        r_det = c.post("/api/v1/rollouts", json=body(model="tiny-detector", selector="site", waves=["100%"]))
        assert r_cls.status_code == r_det.status_code == 201, (r_cls.text, r_det.text)
        status, code, message = error(c.post("/api/v1/rollouts", json=body(version="2.0.0", selector="site=a")))
        assert (status, code) == (409, "rollout_conflict") and r_cls.json()["id"] in message
        assert MODEL in message
    engine: RolloutEngine = h.hub.rollouts
    now = time.time()
    engine.tick(now)  # both rollouts publish their wave: each slot set by its own rollout, in one document
    after = store.get_desired("cam-0")
    assert after is not None and after.version > before.version
    cls_slot, det_slot = after.slot(MODEL), after.slot("tiny-detector")
    assert cls_slot is not None and cls_slot.model_version == "2.0.0" and cls_slot.rollout_id == r_cls.json()["id"]
    assert det_slot is not None and det_slot.rollout_id == r_det.json()["id"]
    # the signed document is the one the agent gets: both slots, each with its own blob
    state = after.state()
    assert [(m.name, m.model.version) for m in state.models] == [(MODEL, "2.0.0"), ("tiny-detector", "1.0.0")]
    with h.client() as c:
        gone = c.delete("/api/v1/deployments/tiny-detector", params={"selector": "site=b"})
        assert gone.status_code == 200 and sorted(gone.json()["devices"]) == ["cam-4", "cam-5"]
        assert error(c.delete("/api/v1/deployments/tiny-detector", params={"selector": "site=b"}))[:2] == (
            400, "no_match",
        )  # fmt: skip
    assert _slots(store, "cam-5") == ()
    assert [s.model_name for s in _slots(store, "cam-0")] == [MODEL, "tiny-detector"]

"""Acceptance: push, enrol, deploy by selector, deliver chunks, ingest telemetry, survive a restart.

Real Mosquitto, real SQLite, real HTTP; the device is a plain MQTT test client speaking the protocol.
"""

from __future__ import annotations

import time
from pathlib import Path

from fleet.bundle import DeviceBundle
from fleet.chunks import ChunkReceiver, decode_frame
from fleet.codec import encode
from fleet.histogram import LatencyRecorder
from fleet.messages import (
    AppliedModel,
    DesiredState,
    DeviceStatus,
    Phase,
    TelemetryWindow,
    Want,
)
from fleet.signing import HubPublicKey, Verifier
from tests.support.broker import Broker
from tests.support.hub import RunningHub
from tests.support.mqtt import TestClient, wait_for
from tests.support.wire import one_model_report, one_model_window


def _window(device: str, seq: int, start: float, requests: int = 10, errors: int = 1) -> TelemetryWindow:
    rec = LatencyRecorder()
    for i in range(requests):
        rec.observe(2.0 + i % 3)
    return one_model_window(
        device_id=device, seq=seq, start=start, end=start + 10, model="mobilenet-like", model_version="1.0.0",
        requests=requests, errors=errors, latency=rec.snapshot(),
    )  # fmt: skip


def test_push_deploy_deliver_ingest_restart(
    running_hub: RunningHub, broker: Broker, topic_prefix: str, samples: Path, tmp_path: Path
) -> None:
    h = running_hub
    topics = h.hub.topics
    onnx = samples / "mobilenet-like.onnx"
    r = h.push_model(onnx, samples / "mobilenet-like.yaml")
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["chunks"] > 1
    # the same bytes again: idempotent, deduplicated
    again = h.push_model(onnx, samples / "mobilenet-like.yaml")
    assert again.status_code == 200 and again.json()["created"] is False

    with h.client() as api:
        b1 = DeviceBundle.model_validate(
            api.post("/api/v1/devices", json={"id": "cam-1", "labels": {"site": "berlin"}}).json()["bundle"]
        )
        r2 = api.post("/api/v1/devices", json={"id": "cam-2", "labels": {"site": "paris"}})
        assert r2.status_code == 201
    assert b1.broker_url == broker.url and b1.topic_prefix == topic_prefix and b1.api_url == h.url
    assert b1.mqtt_password not in (h.data_dir / "hub.db").read_bytes().decode(errors="replace")

    dev1 = TestClient(broker.host, broker.port)
    dev2 = TestClient(broker.host, broker.port)
    try:
        dev1.subscribe(topics.desired("cam-1"))
        dev1.subscribe(topics.chunk(model["sha256"]))
        dev2.subscribe(topics.desired("cam-2"))
        barrier = f"{topic_prefix}/test/barrier"
        dev2.subscribe(barrier)
        for dev, device_id in ((dev1, "cam-1"), (dev2, "cam-2")):
            status = DeviceStatus(device_id=device_id, state="online", ts=time.time(), session="s1")
            dev.publish(topics.status(device_id), encode(status), retain=True)

        with h.client() as api:
            r = api.post(
                "/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "site=berlin"}
            )
            assert r.status_code == 201, r.text
            assert r.json()["devices"] == {"cam-1": 1}

        msg = dev1.get()
        assert msg.topic == topics.desired("cam-1") and msg.retain in (False, True)
        verifier = Verifier(HubPublicKey.from_text(b1.hub_public_key), "cam-1")
        desired = verifier.verify(bytes(msg.payload), DesiredState, now=time.time(), last_version=None)
        assert desired.version == 1 and [m.name for m in desired.models] == ["mobilenet-like"]
        manifest = desired.models[0].model.blob
        assert manifest.sha256 == model["sha256"]

        # want every chunk; reassemble the exact blob
        want = Want(device_id="cam-1", sha256=manifest.sha256, missing=[(0, manifest.count)])
        dev1.publish(topics.want(manifest.sha256), encode(want))
        receiver = ChunkReceiver(manifest, tmp_path / "recv")
        while not receiver.complete:
            receiver.accept(decode_frame(bytes(dev1.get().payload)))
        out = receiver.finish(tmp_path / "blob.onnx")
        assert out.read_bytes() == onnx.read_bytes()

        # the other device got nothing (the barrier arrives after anything published before it)
        dev1.publish(barrier, b"x")
        assert dev2.get().topic == barrier
        assert dev2.messages.empty()

        reported = one_model_report(
            device_id="cam-1", seq=1, ts=time.time(), desired_version=1, phase=Phase.ACTIVE,
            active=AppliedModel(name="mobilenet-like", version="1.0.0", sha256=manifest.sha256),
        )  # fmt: skip
        dev1.publish(topics.reported("cam-1"), encode(reported), retain=True)
        start = time.time() - 30
        for seq in range(5):
            dev1.publish(topics.telemetry("cam-1"), encode(_window("cam-1", seq, start + seq)))
        dev1.publish(topics.telemetry("cam-1"), encode(_window("cam-1", 3, start + 3)))  # a duplicate
    finally:
        dev1.close()
        dev2.close()

    def written() -> bool:  # the duplicate may still be on its way when the five are in: wait for all six
        st = h.hub.store.ingest_stats()
        return st.telemetry_persisted + st.telemetry_duplicates >= 6 and st.reported_applied > 0

    wait_for(written)
    h.hub.store.flush()
    st = h.hub.store.ingest_stats()
    assert (st.telemetry_persisted, st.telemetry_duplicates) == (5, 1)

    def check_everything(api_url_client: RunningHub) -> None:
        with api_url_client.client() as api:
            dev = api.get("/api/v1/devices/cam-1").json()
            assert dev["labels"] == {"site": "berlin"} and dev["desired_version"] == 1
            assert dev["active_models"] == ["mobilenet-like:1.0.0"]
            assert {d["id"] for d in api.get("/api/v1/devices").json()} == {"cam-1", "cam-2"}
            desired = api.get("/api/v1/devices/cam-1/desired").json()["desired"]
            assert desired["version"] == 1 and [m["model"] for m in desired["models"]] == ["mobilenet-like"]
            assert api.get("/api/v1/devices/cam-2/desired").json()["desired"] is None
            t = api.get("/api/v1/telemetry/devices/cam-1", params={"raw": True}).json()
            assert t["summary"]["requests"] == 50 and t["summary"]["errors"] == 5
            assert t["summary"]["p95_ms"] is not None
            assert sorted(w["seq"] for w in t["windows"]) == [0, 1, 2, 3, 4]
            assert t["seq"] == {"first": 0, "last": 4, "count": 5, "missing": 0, "spool_dropped": 0}
            m = api.get("/api/v1/telemetry/models/mobilenet-like/1.0.0").json()
            assert m["summary"]["requests"] == 50
            f = api.get("/api/v1/telemetry/fleet", params={"since": start - 120, "until": time.time() + 60}).json()
            assert f["summary"]["windows"] == 5
            actions = {e["action"] for e in api.get("/api/v1/events").json()}
            assert {"hub.init", "model.push", "device.add", "deploy"} <= actions
            assert api.get("/api/v1/models/mobilenet-like/1.0.0").json()["wanted_by"] == ["cam-1"]

    check_everything(h)
    with h.client() as api:
        # its last window has 10 % errors, above the 5 % default: degraded (online, updated, but unhealthy)
        assert api.get("/api/v1/devices/cam-1").json()["state"] == "degraded"
        assert api.get("/api/v1/devices/cam-2").json()["state"] == "online"
    h.restart()
    check_everything(h)
    # desired versions stay monotonic across the restart
    with h.client() as api:
        r = api.post("/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "site"})
        assert r.json()["devices"] == {"cam-1": 2, "cam-2": 1}

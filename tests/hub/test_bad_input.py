"""Bad inputs at the API and on every ingest topic: clear errors, nothing stored, the hub keeps serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import onnx
import pytest

from fleet.codec import encode
from fleet.messages import Capabilities, DeviceStatus
from models.descriptor import ModelDescriptor
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.models import colour_classifier, with_outputs_that_are_not_tensors, without_batch_axis
from tests.support.mqtt import TestClient, wait_for
from tests.support.wire import one_model_window

CAPS = Capabilities(agent_version="9.9.9", onnxruntime_version="1.32", providers=["CPUExecutionProvider"], cpu_count=2,
                    memory_bytes=1 << 30)  # fmt: skip


def _error(r: httpx.Response) -> dict[str, str]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    error: dict[str, str] = body["error"]
    return error


def _nothing_stored(h: RunningHub) -> None:
    assert h.hub.store.list_model_versions() == []
    assert not any(p.is_file() for p in h.settings.blob_dir.rglob("*"))
    assert not any(h.settings.tmp_dir.iterdir())


def test_corrupt_model_upload_is_refused_with_the_reason(
    running_hub: RunningHub, samples: Path, tmp_path: Path
) -> None:
    good = (samples / "mobilenet-like.onnx").read_bytes()
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(good[: len(good) // 2])  # truncated protobuf
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
    desc.update(sha256=None, size=None)  # so the file itself is judged, not only its digest
    r = running_hub.push_model(corrupt, desc)
    assert r.status_code == 400
    err = _error(r)
    assert err["code"] == "invalid_model" and "corrupt.onnx" in err["message"]
    _nothing_stored(running_hub)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all" * 100)
    r = running_hub.push_model(garbage, desc)
    assert r.status_code == 400 and _error(r)["code"] == "invalid_model"
    # the bytes differ from the digest the description records
    r = running_hub.push_model(garbage, samples / "mobilenet-like.yaml")
    assert r.status_code == 400 and "sha256" in _error(r)["message"]
    # a description that does not fit the graph (wrong input size)
    desc["input"]["height"] = 17
    r = running_hub.push_model(samples / "mobilenet-like.onnx", desc)
    assert r.status_code == 400 and _error(r)["code"] == "invalid_model"
    # a description that is not a description
    r = running_hub.push_model(samples / "mobilenet-like.onnx", {"name": "x"})
    assert r.status_code == 400 and "description" in _error(r)["message"]
    with running_hub.client() as c:
        r = c.post("/api/v1/models", data={"descriptor": "{not json"}, files={"file": ("a.onnx", b"x")})
        assert r.status_code == 400 and _error(r)["code"] == "invalid_model"
        r = c.post("/api/v1/models", data={"descriptor": json.dumps(desc)})
        assert r.status_code == 400 and "file" in _error(r)["message"]
    _nothing_stored(running_hub)


def test_an_image_input_without_a_batch_axis_is_refused_at_push_with_the_reason(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    """Before, the reason said only "has 3 dims; classification needs 4"."""
    model, desc = colour_classifier("1.0.0", 32, name="unbatched")
    onnx.save(without_batch_axis(model, 32), tmp_path / "unbatched.onnx")
    r = running_hub.push_model(tmp_path / "unbatched.onnx", desc.to_json())
    assert r.status_code == 400 and _error(r)["code"] == "invalid_model", r.text
    assert "[3, 32, 32] looks like one image without a batch axis, which is not served" in _error(r)["message"]
    _nothing_stored(running_hub)


def test_a_push_names_the_outputs_that_are_not_tensors_it_ignores(running_hub: RunningHub, tmp_path: Path) -> None:
    """A model with a ZipMap, a string and a sequence output beside its logits is stored (before: refused,
    "unsupported type seq(map(...))"), and the push's audit event names the outputs that are ignored."""
    model, desc = colour_classifier("1.0.0", 32, name="zipmap")
    onnx.save(with_outputs_that_are_not_tensors(model), tmp_path / "zipmap.onnx")
    r = running_hub.push_model(tmp_path / "zipmap.onnx", desc.to_json())
    assert r.status_code == 201, r.text
    [event] = running_hub.hub.store.list_events(
        since=None, until=None, subject="model/zipmap:1.0.0", action="model.push", limit=10
    )
    assert event.details["ignored_outputs"] == {
        "probabilities": "seq(map(int64,tensor(float)))",
        "label": "tensor(string)",
        "logit_seq": "seq(tensor(float))",
    }


def test_oversized_upload_gets_413(broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path) -> None:
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, api={"max_upload_bytes": 200_000})
    try:
        r = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml")  # 1.5 MB
        assert r.status_code == 413 and _error(r)["code"] == "too_large"
        # without a Content-Length (chunked), the limit still holds while streaming
        from hubclient import HubApiError, HubClient  # noqa: PLC0415

        desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json()
        with HubClient(h.url, h.admin_token) as c, pytest.raises(HubApiError) as info:
            c.push_model(samples / "mobilenet-like.onnx", desc, on_progress=lambda _n: None)
        assert info.value.status == 413
        _nothing_stored(h)
        with h.client() as c:
            assert c.get("/healthz").json()["status"] == "ok"
    finally:
        h.stop()


def test_unknown_device_or_model_is_404(running_hub: RunningHub) -> None:
    with running_hub.client() as c:
        for path in (
            "/api/v1/devices/nope",
            "/api/v1/devices/nope/desired",
            "/api/v1/models/nope",
            "/api/v1/models/nope/1.0.0",
            "/api/v1/telemetry/devices/nope",
            "/api/v1/telemetry/models/nope/1.0.0",
            "/api/v1/no-such-route",
        ):
            r = c.get(path)
            assert r.status_code == 404, path
            assert _error(r)["code"] == "not_found"
        r = c.patch("/api/v1/devices/nope/labels", json={"set": {"a": "b"}})
        assert r.status_code == 404
        r = c.post("/api/v1/deployments", json={"model": "nope", "version": "1.0.0", "selector": "a=b"})
        assert r.status_code == 404 and "nope" in _error(r)["message"]
        assert c.delete("/api/v1/models/nope/1.0.0").status_code == 404


@pytest.mark.parametrize(
    ("selector", "position"),
    [("site=", 6), ("site in (a,b", 13), ("=x", 1), ("a=b,,c", 5), ("site notin a", 12), ("a=b c", 5)],
)
def test_bad_selector_is_400_naming_the_position(running_hub: RunningHub, selector: str, position: int) -> None:
    with running_hub.client() as c:
        r = c.get("/api/v1/devices", params={"selector": selector})
        assert r.status_code == 400
        err = _error(r)
        assert err["code"] == "invalid_selector" and f"position {position}" in err["message"], err


def test_tokens_and_roles(running_hub: RunningHub) -> None:
    h = running_hub
    with h.client(token=None) as c:
        r = c.get("/api/v1/devices")
        assert r.status_code == 401 and _error(r)["code"] == "unauthorized"
        assert c.get("/api/v1/devices", headers={"Authorization": "Bearer eft_wrong"}).status_code == 401
        assert c.get("/api/v1/devices", headers={"Authorization": "Basic abc"}).status_code == 401
        assert c.get("/healthz").status_code == 200
    viewer, operator = h.token("viewer"), h.token("operator")
    with h.client(viewer) as c:
        assert c.get("/api/v1/devices").status_code == 200
        r = c.post("/api/v1/devices", json={"id": "x1"})
        assert r.status_code == 403 and _error(r)["code"] == "forbidden"
        assert (
            c.post("/api/v1/deployments", json={"model": "m", "version": "1.0.0", "selector": "a"}).status_code == 403
        )
    with h.client(operator) as c:
        assert c.post("/api/v1/devices", json={"id": "x1"}).status_code == 403  # enrolment is admin-only
        assert c.post("/api/v1/tokens", json={"name": "n", "role": "admin"}).status_code == 403
    with h.client() as c:
        r = c.post("/api/v1/tokens", json={"name": "n", "role": "root"})
        assert r.status_code == 400
    # tokens are stored hashed
    assert viewer not in (h.data_dir / "hub.db").read_bytes().decode(errors="replace")
    # revocation takes effect at once
    with h.client() as c:
        tokens = c.get("/api/v1/tokens").json()
        assert {t["name"] for t in tokens} == {"admin", "test-viewer", "test-operator"}
        viewer_id = next(t["id"] for t in tokens if t["name"] == "test-viewer")
        assert c.delete(f"/api/v1/tokens/{viewer_id}").status_code == 204
        assert c.delete(f"/api/v1/tokens/{viewer_id}").status_code == 404
    with h.client(viewer) as c:
        assert c.get("/api/v1/devices").status_code == 401


def test_request_validation_errors_are_json_400(running_hub: RunningHub) -> None:
    with running_hub.client() as c:
        for body in ({"id": "Bad ID!"}, {"id": "ok", "labels": {"bad key!": "v"}}, {"id": "x", "extra": 1}, [1]):
            r = c.post("/api/v1/devices", json=body)
            assert r.status_code == 400, body
            _error(r)
        r = c.get("/api/v1/telemetry/fleet", params={"since": 10, "until": 5})
        assert r.status_code == 400
        r = c.post("/api/v1/devices", json={"id": "dup"})
        assert r.status_code == 201
        assert c.post("/api/v1/devices", json={"id": "dup"}).status_code == 409
        r = c.post("/api/v1/deployments", json={"model": "m", "version": "1.0.0", "selector": ""})
        assert r.status_code == 400


def test_malformed_payloads_on_every_ingest_topic_are_counted(running_hub: RunningHub, broker: Broker) -> None:
    h = running_hub
    t = h.hub.topics
    with h.client() as c:
        assert c.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    sha = "ab" * 32
    topics = [t.status("cam-1"), t.reported("cam-1"), t.telemetry("cam-1"), t.want(sha), t.cmd_ack("cam-1")]
    hostile = [
        b"not json",
        b"[]",
        b'{"schema_version": 2, "kind": "telemetry"}',
        b'{"schema_version": 1, "kind": "nonsense"}',
        b'{"schema_version": 1}',
        b"\xff\xfe\x00",
        b"{" * 10_000,
        b"x" * (300 * 1024),  # oversized
    ]
    dev = TestClient(broker.host, broker.port)
    try:
        for topic in topics:
            for payload in hostile:
                dev.publish(topic, payload)
        # foreign: payload names another device than its topic; unknown device; a topic outside the protocol
        w = one_model_window(device_id="cam-2", seq=1, start=1, end=2)
        dev.publish(t.telemetry("cam-1"), encode(w))
        dev.publish(t.telemetry("cam-2"), encode(w))
        dev.publish(f"{h.settings.topic_prefix}/dev/cam-1/bogus", b"{}")
        # a newer agent's messages: a birth whose capabilities gained a field, a window with a new field
        newer = DeviceStatus(device_id="cam-1", state="online", ts=time.time(), capabilities=CAPS)
        birth = newer.model_dump(mode="json")
        birth["capabilities"]["accelerators"] = ["npu0"]
        dev.publish(t.status("cam-1"), json.dumps(birth).encode())
        window = one_model_window(device_id="cam-1", seq=1, start=1, end=2).model_dump(mode="json")
        dev.publish(t.telemetry("cam-1"), json.dumps({**window, "npu_percent": 5}).encode())
        expected = len(topics) * len(hostile) + 4
        wait_for(lambda: h.hub.ingest.rejected_total >= expected)
        # the hub still serves: a good message is accepted and the API answers
        dev.publish(t.status("cam-1"), encode(DeviceStatus(device_id="cam-1", state="online", ts=time.time())))
        wait_for(lambda: (d := h.hub.store.get_device("cam-1")) is not None and d.status == "online")
    finally:
        dev.close()
    rejected = h.hub.ingest.rejected
    for kind in ("status", "reported", "telemetry", "want", "cmd_ack"):
        assert rejected[(kind, "malformed")] >= 5, kind
        assert rejected[(kind, "unsupported_schema")] == 2, kind  # schema_version 1
        assert rejected[(kind, "oversized")] == 1, kind
    assert rejected[("status", "unknown_content")] == 1 and rejected[("telemetry", "unknown_content")] == 1
    assert rejected[("telemetry", "foreign")] == 1 and rejected[("telemetry", "unknown_device")] == 1
    with h.client() as c:
        counters = c.get("/api/v1/ingest").json()
        assert counters["rejected"]["telemetry/malformed"] >= 5
        metrics = c.get("/metrics").text
        assert 'edgefleet_hub_ingest_rejected_total{kind="telemetry",reason="oversized"} 1.0' in metrics

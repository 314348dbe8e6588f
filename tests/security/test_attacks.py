"""Attacks end to end: real hub, its own Mosquitto with the generated ACL, real agents (in-process).

Each attack is tried twice where the broker is the first line: with a device's credentials (the broker
refuses) and with full broker rights (the hub's account standing for a compromised broker or bridge),
where the agent's own checks must refuse it. Every refusal carries a clear reason; nothing is lost.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.headless import HeadlessServing
from agent.runtime import Agent
from fleet.bundle import DeviceBundle
from fleet.chunks import encode_frame, read_chunk
from fleet.codec import encode
from fleet.messages import BlobManifest, SignedEnvelope, TelemetryWindow
from hub.acl import hub_account
from models.descriptor import ModelDescriptor
from tests.agent.conftest import fast_settings
from tests.security.probe import NOT_AUTHORIZED, Probe
from tests.support.hub import RunningHub, start_hub
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for
from tests.support.outcomes import record
from tests.support.wire import flat_report

CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelDescriptor]]:
    out = tmp_path_factory.mktemp("attack-models")
    return classifier_versions(out)


@dataclass
class World:
    hub: RunningHub
    bundles: dict[str, DeviceBundle]
    agents: dict[str, Agent]
    tmp: Path

    def probe(self, user: str, *, v5: bool = True) -> Probe:
        lb = self.hub.hub.local_broker
        assert lb is not None
        if user == "hub":
            account = hub_account(self.hub.data_dir)
            return Probe(lb.host, lb.port, account.username, account.password, v5=v5)
        b = self.bundles[user]
        return Probe(lb.host, lb.port, b.mqtt_username, b.mqtt_password, v5=v5)

    def start_agent(self, device_id: str) -> Agent:
        settings = fast_settings(self.tmp / f"agent-{device_id}", download={"rewant_after_s": 0.3})
        agent = Agent(self.bundles[device_id], settings, HeadlessServing(seed=1))
        agent.start()
        self.agents[device_id] = agent
        return agent

    def reported(self, device_id: str) -> dict[str, Any]:
        d = self.hub.hub.store.get_device(device_id)
        return flat_report(d.reported) if d else {}

    def wait_active(self, device_id: str, version: str) -> None:
        def active() -> bool:
            r = self.reported(device_id)
            return r.get("phase") == "active" and (r.get("active") or {}).get("version") == version

        wait_for(active, timeout=60)

    def wait_error(self, device_id: str, code: str) -> dict[str, Any]:
        return wait_for(
            lambda: (r := self.reported(device_id)).get("error") and r["error"]["code"] == code and r, timeout=30
        )

    def deploy(self, device_id: str, version: str) -> dict[str, Any]:
        with self.hub.client() as c:
            r = c.post("/api/v1/deployments", json={"model": "cls", "version": version, "selector": f"id={device_id}"})
            assert r.status_code == 201, r.text
            return dict(c.get(f"/api/v1/devices/{device_id}/desired").json()["desired"])

    def manifest(self, version: str) -> BlobManifest:
        mv = self.hub.hub.registry.get("cls", version)
        return BlobManifest.model_validate(mv.manifest)


@pytest.fixture
def world(
    tmp_path: Path, topic_prefix: str, mosquitto_binary: str, models: dict[str, tuple[Path, ModelDescriptor]]
) -> Iterator[World]:
    h = start_hub(tmp_path / "hub", None, topic_prefix, transfer={"chunk_size": CHUNK},
                  security={"telemetry_burst": 20, "telemetry_per_s": 0.1})  # fmt: skip
    w = World(h, {}, {}, tmp_path)
    try:
        for path, desc in models.values():
            assert h.push_model(path, desc.to_json()).status_code == 201
        with h.client() as c:
            for d in ("cam-a", "cam-b"):
                r = c.post("/api/v1/devices", json={"id": d, "labels": {"id": d}})
                w.bundles[d] = DeviceBundle.model_validate(r.json()["bundle"])
        yield w
    finally:
        for a in w.agents.values():
            a.stop()
        h.stop()


def test_an_old_desired_state_replayed_is_refused(world: World) -> None:
    world.start_agent("cam-a")
    old = world.deploy("cam-a", "1.0.0")
    world.wait_active("cam-a", "1.0.0")
    world.deploy("cam-a", "2.0.0")
    world.wait_active("cam-a", "2.0.0")
    topic = world.hub.hub.topics.desired("cam-a")
    payload = encode(SignedEnvelope.model_validate(old["envelope"]))
    # with a device credential the broker refuses the publish outright
    b = world.probe("cam-b")
    assert b.publish(topic, payload, retain=True) == NOT_AUTHORIZED
    b.close()
    # with full broker rights it arrives, and the agent refuses it: no silent downgrade
    hub = world.probe("hub")
    hub.publish(topic, payload, retain=True)
    hub.close()
    r = world.wait_error("cam-a", "stale_version")
    assert "desired state refused" in r["error"]["message"]
    assert r["phase"] == "active" and r["active"]["version"] == "2.0.0"
    record("attack", "replayed old desired state", "refused", 2)


def test_a_desired_state_for_another_device_is_refused(world: World) -> None:
    world.start_agent("cam-b")
    a_state = world.deploy("cam-a", "1.0.0")
    world.deploy("cam-b", "2.0.0")
    world.wait_active("cam-b", "2.0.0")
    topic = world.hub.hub.topics.desired("cam-b")
    payload = encode(SignedEnvelope.model_validate(a_state["envelope"]))
    a = world.probe("cam-a")
    assert a.publish(topic, payload, retain=True) == NOT_AUTHORIZED
    a.close()
    hub = world.probe("hub")
    hub.publish(topic, payload, retain=True)
    hub.close()
    r = world.wait_error("cam-b", "wrong_subject")
    assert "cam-a" in r["error"]["message"] or "device" in r["error"]["message"]
    assert r["active"]["version"] == "2.0.0"
    record("attack", "desired state of device A on device B's topic", "refused", 2)


def test_hostile_chunks_are_refused_and_the_download_completes(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A chunk of blob X on blob Y's topic, an oversized chunk, an index out of range, forged bytes."""
    x, y = world.manifest("2.0.0"), world.manifest("1.0.0")
    assert y.count >= 2
    blob_y = world.hub.hub.registry.blob_path(y.sha256)
    parked = world.tmp / "parked"
    world.deploy("cam-a", "1.0.0")  # before the agent runs: nobody wants Y yet (a deploy needs the hub's copy)
    shutil.move(blob_y, parked)  # the hub cannot serve Y for now: the agent stays in its download
    agent = world.start_agent("cam-a")
    # a want reached the hub: the broker has the agent's chunk subscription (sent before the want)
    wait_for(lambda: agent.reconciler.download is not None and world.hub.hub.ingest.accepted["want"] > 0)
    dl = agent.reconciler.download
    assert dl is not None
    with world.hub.hub.registry.blob_path(x.sha256).open("rb") as f:
        x0 = read_chunk(f, x, 0)
    with parked.open("rb") as f:
        y0 = read_chunk(f, y, 0)
    topic = world.hub.hub.topics.chunk(y.sha256)
    hostile = {
        "chunk of blob X on blob Y's topic": encode_frame(x.sha256, 0, x.count, x0),
        "oversized chunk": encode_frame(y.sha256, 0, y.count, y0 + b"\0" * (y.chunk_size + 1)),
        "chunk index out of range": encode_frame(y.sha256, y.count + 7, y.count, y0),
        "chunk with forged bytes": encode_frame(y.sha256, 0, y.count, bytes(len(y0))),
        "truncated chunk frame": encode_frame(y.sha256, 0, y.count, y0)[:40],
    }
    device = world.probe("cam-b")
    assert device.publish(topic, hostile["oversized chunk"]) == NOT_AUTHORIZED  # devices never publish chunks
    device.close()
    hub = world.probe("hub")
    with caplog.at_level(logging.WARNING, logger="agent.download"):
        for payload in hostile.values():
            hub.publish(topic, payload)
        wait_for(lambda: dl.refused >= len(hostile), timeout=15)
    hub.close()
    assert dl.receiver.have_count == 0  # nothing hostile was written
    text = caplog.text
    for reason in ("sent to the receiver of", "exceeds", "is outside", "signed digest", "shorter than"):
        assert reason in text, (reason, text[-2000:])
    shutil.move(parked, blob_y)  # the hub can serve again: the download completes with the genuine bytes
    world.wait_active("cam-a", "1.0.0")
    assert hashlib.sha256(agent.store.blob_path(y.sha256).read_bytes()).hexdigest() == y.sha256
    for klass in hostile:
        record("attack", klass, "refused")
    record("fault", "hub blob store unavailable mid-download", "recovered")


def test_a_telemetry_flood_is_rate_limited_and_other_devices_are_unaffected(world: World) -> None:
    t = world.hub.hub.topics
    a, b = world.probe("cam-a", v5=False), world.probe("cam-b", v5=False)

    def window(device_id: str, seq: int) -> bytes:
        return encode(TelemetryWindow(device_id=device_id, seq=seq, start=1000.0 + seq, end=1001.0 + seq))

    try:
        for seq in range(300):
            a.client.publish(t.telemetry("cam-a"), window("cam-a", seq), qos=0)
            if seq % 30 == 0:
                b.publish(t.telemetry("cam-b"), window("cam-b", seq // 30))
        ingest = world.hub.hub.ingest
        wait_for(lambda: ingest.accepted["telemetry"] + ingest.rejected[("telemetry", "rate_limited")] >= 300 + 10)
        world.hub.hub.store.flush()
        with world.hub.client() as c:
            counters = c.get("/api/v1/ingest").json()
            b_windows = c.get("/api/v1/telemetry/devices/cam-b", params={"raw": True}).json()["windows"]
            a_windows = c.get("/api/v1/telemetry/devices/cam-a", params={"raw": True}).json()["windows"]
            refused = c.get("/api/v1/security").json()["telemetry_rate_limited"]
        assert len(b_windows) == 10  # every window of the quiet device is stored
        assert 20 <= len(a_windows) < 40  # the burst, then a trickle
        assert counters["rejected"]["telemetry/rate_limited"] == refused["cam-a"] == 300 - len(a_windows)
        assert "cam-b" not in refused
        record("attack", "telemetry flood from one device", "refused", refused["cam-a"])
    finally:
        a.close()
        b.close()

"""The hub runtime against real brokers: local Mosquitto supervision, reconnects, chunk rounds, MQTT 5."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from fleet.chunks import decode_frame
from fleet.codec import encode
from fleet.messages import DesiredModel, DesiredState, DeviceStatus, Want
from fleet.signing import HubPublicKey, Verifier
from hub.api.app import create_app
from hub.api.deps import Viewer
from hub.api.server import api_server
from hub.broker import LocalBroker
from hub.deploy import Deployer
from hub.errors import Conflict, HubError, NotFound, NotInitialised
from hub.rollouts.model import RolloutSpec
from hub.runtime import Hub, init_hub
from hub.settings import BrokerSettings, HubSettings
from hub.store import Database
from hub.store import telemetry as tsql
from models.descriptor import ModelDescriptor
from tests.support.broker import Broker, free_port
from tests.support.hub import RunningHub, hub_settings, start_hub
from tests.support.metrics import scrape
from tests.support.mqtt import TestClient, wait_for
from tests.support.postgres import PostgresServer
from tests.support.wire import one_model_report, one_model_window


def _push_and_enrol(h: RunningHub, samples: Path, *ids: str) -> dict[str, Any]:
    r = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml")
    assert r.status_code in (200, 201), r.text
    with h.client() as c:
        for device_id in ids:
            assert c.post("/api/v1/devices", json={"id": device_id, "labels": {"site": "x"}}).status_code == 201
    return dict(r.json())


def test_start_without_init_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NotInitialised, match="hub init"):
        Hub(HubSettings(data_dir=tmp_path)).start()


def test_local_mosquitto_is_started_supervised_and_stopped(tmp_path: Path, topic_prefix: str, samples: Path) -> None:
    h = start_hub(tmp_path / "hub", None, topic_prefix, broker={"restart_backoff_s": 0.05})
    try:
        lb = h.hub.local_broker
        assert lb is not None and h.hub.broker_url == lb.url
        conf = (h.settings.broker_dir / "mosquitto.conf").read_text()
        assert "listener" in conf and "127.0.0.1" in conf and "persistence true" in conf
        assert "message_size_limit" in conf
        assert "persistent_client_expiration 7d" in conf.splitlines()  # a device gone for good is let go of in time
        with h.client() as c:
            bundle = c.post("/api/v1/devices", json={"id": "cam-1"}).json()["bundle"]
        assert bundle["broker_url"] == lb.url
        pid = lb.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: lb.restarts == 1 and lb.pid != pid, timeout=20)
        # connected again, not still connected: right after the kill the hub may not have noticed yet
        wait_for(lambda: h.hub.link is not None and h.hub.link.connects >= 2 and h.hub.mqtt_connected, timeout=20)
        # the hub works on the restarted broker (retained: reaches the hub whenever it has subscribed)
        dev = TestClient(lb.host, lb.port, username="cam-1", password=bundle["mqtt_password"])  # the ACL'd broker
        try:
            birth = encode(DeviceStatus(device_id="cam-1", state="online", ts=1.0))
            dev.publish(h.hub.topics.status("cam-1"), birth, retain=True)
            wait_for(lambda: (d := h.hub.store.get_device("cam-1")) is not None and d.status == "online")
        finally:
            dev.close()
        last_pid = lb.pid
    finally:
        h.stop()
    assert last_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(last_pid, 0)


def test_a_local_broker_whose_picked_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    """A port picked free can be taken before Mosquitto binds it (the kernel hands ephemeral ports out as source
    ports too): Mosquitto exits at once, and the broker starts again on newly picked ports."""
    lb = LocalBroker(BrokerSettings(local_port=0), tmp_path / "mq")
    taken = lb.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((lb.host, taken))
        squatter.listen()
        lb.start()
        try:
            assert lb.port != taken
            with socket.create_connection((lb.host, lb.port), timeout=2):
                pass
            assert lb.restarts == 0
        finally:
            lb.stop()


def test_desired_states_are_republished_after_the_broker_lost_them(
    private_broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path
) -> None:
    h = start_hub(tmp_path / "hub", private_broker.url, topic_prefix)
    try:
        _push_and_enrol(h, samples, "cam-1")
        with h.client() as c:
            c.post("/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "site=x"})
        private_broker.stop()
        for p in private_broker.workdir.glob("*.db"):
            p.unlink()  # the broker forgets every retained message
        private_broker.start()
        wait_for(lambda: h.hub.link is not None and h.hub.link.connects >= 2, timeout=20)
        key = HubPublicKey(h.hub.key.public._key)
        # the republish may reach a subscriber live or as the retained copy, whichever comes first: assert
        # on what arrives, then check the broker holds it retained with a second, later subscriber
        for _ in ("first", "later"):
            dev = TestClient(private_broker.host, private_broker.port)
            try:
                dev.subscribe(h.hub.topics.desired("cam-1"))
                msg = dev.get()
                body = Verifier(key, "cam-1").verify(
                    bytes(msg.payload), DesiredState, now=time.time(), last_version=None
                )
                assert body.version == 1
            finally:
                dev.close()
        assert msg.retain  # the later subscriber got it from the broker's store: it was republished retained
    finally:
        h.stop()


def test_wants_are_coalesced_per_round_and_unknown_blobs_counted(
    running_hub: RunningHub, broker: Broker, samples: Path
) -> None:
    h = running_hub
    model = _push_and_enrol(h, samples, "cam-1", "cam-2")
    sha, count = model["sha256"], model["chunks"]
    chunks = h.hub.chunks
    watcher = TestClient(broker.host, broker.port)
    try:
        watcher.subscribe(h.hub.topics.chunk(sha))
        # hold the round open so both wants land in it
        chunks.settings = chunks.settings.model_copy(update={"round_interval_s": 0.5})
        # a hostile range far past the blob's end only asks for the chunks that exist
        hostile = Want(device_id="cam-1", sha256=sha, missing=[(0, 1 << 40)])
        watcher.publish(h.hub.topics.want(sha), encode(hostile))
        watcher.publish(h.hub.topics.want(sha), encode(Want(device_id="cam-2", sha256=sha, missing=[(1, 2)])))
        got: set[int] = set()
        while len(got) < count:
            got.add(decode_frame(bytes(watcher.get().payload)).index)
        wait_for(lambda: chunks.stats.wants == 2 and chunks.pending_chunks == 0)
        wait_for(lambda: chunks.stats.chunks_published >= count + chunks.stats.rounds - 1)
        # chunk 1 once when both wants landed in one round (held open 0.5 s for that), twice only when a
        # loaded machine delivered the second want after the first round had started: never by timing
        assert chunks.stats.chunks_published == count + (chunks.stats.rounds - 1), chunks.stats
        # out-of-range indexes are ignored; a blob the hub does not have is counted
        other = "cd" * 32
        watcher.publish(h.hub.topics.want(other), encode(Want(device_id="cam-1", sha256=other, missing=[(0, 3)])))
        wait_for(lambda: h.hub.ingest.rejected[("want", "unknown_blob")] == 1)
        wait_for(lambda: chunks.stats.unknown_blob_wants == 1)
    finally:
        watcher.close()


def test_rate_limited_serving_delivers_every_chunk(
    broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path
) -> None:
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, transfer={"rate_limit_bytes_per_s": 20_000_000})
    try:
        model = _push_and_enrol(h, samples, "cam-1")
        _fetch_every_chunk(h, broker, model["sha256"], model["chunks"])
    finally:
        h.stop()


def test_a_blob_gone_bad_on_the_hubs_disk_is_never_served_and_pushing_the_file_again_puts_it_back(
    running_hub: RunningHub, broker: Broker, samples: Path
) -> None:
    h = running_hub
    model = _push_and_enrol(h, samples, "cam-1")
    sha, count = model["sha256"], model["chunks"]
    manifest = h.hub.chunks.manifest(sha)
    assert manifest is not None
    local = h.hub.registry.blob_path(sha)
    good = local.read_bytes()
    local.write_bytes(good[: len(good) // 2])  # cut short on the hub's disk (SQLite: its only copy)
    intact = [i for i in range(count) if manifest.offset(i) + manifest.chunk_length(i) <= len(good) // 2]
    assert 0 < len(intact) < count

    def receive(n: int) -> list[int]:
        frames = [decode_frame(bytes(dev.get().payload)) for _ in range(n)]  # a bad one sent would be among them
        assert all(hashlib.sha256(f.data).hexdigest() == manifest.chunks[f.index] for f in frames)
        return sorted(f.index for f in frames)

    dev = TestClient(broker.host, broker.port)
    try:
        dev.subscribe(h.hub.topics.chunk(sha))
        dev.publish(h.hub.topics.want(sha), encode(Want(device_id="cam-1", sha256=sha, missing=[(0, count)])))
        assert receive(len(intact)) == intact  # then the first chunk past the cut: the file is set aside
        wait_for(lambda: scrape(h.url, "edgefleet_hub_chunk_read_errors_total") == 1)
        assert scrape(h.url, "edgefleet_hub_chunks_corrupt_total") == 1 and not local.exists()
        with h.client() as c:  # nothing may be sent that devices could not fetch: refused with what to do
            body = {"model": model["name"], "version": model["version"], "selector": "site=x"}
            refused = c.post("/api/v1/deployments", json=body)
        assert refused.status_code == 409 and "push its file again" in refused.json()["error"]["message"], refused.text
        with pytest.raises(Conflict, match="no copy of its bytes"):
            h.hub.rollouts.start_rollout(RolloutSpec(**body), actor="test")
        r = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml")
        assert r.status_code == 200 and r.json()["restored"], r.text  # the version exists: its bytes are put back
        assert local.read_bytes() == good
        dev.publish(h.hub.topics.want(sha), encode(Want(device_id="cam-1", sha256=sha, missing=[(0, count)])))
        assert receive(count) == list(range(count))
    finally:
        dev.close()


def _fetch_every_chunk(h: RunningHub, broker: Broker, sha: str, count: int) -> None:
    """Want every chunk of `sha` as cam-1 and receive each once."""
    dev = TestClient(broker.host, broker.port)
    try:
        dev.subscribe(h.hub.topics.chunk(sha))
        dev.publish(h.hub.topics.want(sha), encode(Want(device_id="cam-1", sha256=sha, missing=[(0, count)])))
        assert sorted(decode_frame(bytes(dev.get().payload)).index for _ in range(count)) == list(range(count))
    finally:
        dev.close()


@pytest.mark.parametrize(("version", "queued"), [("5", False), ("3.1.1", True)])
def test_chunks_published_while_a_device_is_offline_expire_over_mqtt5(
    broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path, version: str, queued: bool
) -> None:
    """A device's persistent session keeps its chunk subscription while it is offline, and the broker queues every
    chunk published meanwhile for it (each pass for other devices). Over MQTT 5 the chunks carry a Message Expiry,
    so one back after that gets none of them (it wants what it lacks); over 3.1.1 it gets every one."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, broker={"mqtt_version": version},
                  transfer={"chunk_expiry_s": 1})  # fmt: skip
    try:
        model = _push_and_enrol(h, samples, "cam-1")
        sha, count = model["sha256"], model["chunks"]
        away = TestClient(broker.host, broker.port, client_id="agent-away", clean_session=False)
        away.subscribe(h.hub.topics.chunk(sha))
        away.close()  # offline, its session (and subscription) kept
        _fetch_every_chunk(h, broker, sha, count)  # a pass for another device
        time.sleep(3.0)  # past the expiry (the broker counts whole seconds)
        back = TestClient(broker.host, broker.port, client_id="agent-away", clean_session=False)
        try:
            back.subscribe(f"{topic_prefix}/marker")
            back.publish(f"{topic_prefix}/marker", b"after")  # reaches it after whatever its session had queued
            got = [back.get().topic for _ in range(count + 1 if queued else 1)]
            assert got == [h.hub.topics.chunk(sha)] * (count if queued else 0) + [f"{topic_prefix}/marker"]
        finally:
            back.close()
    finally:
        h.stop()


def test_mqtt5_and_resigning_before_expiry(broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path) -> None:
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, broker={"mqtt_version": "5"})
    try:
        _push_and_enrol(h, samples, "cam-1")
        with h.client() as c:
            c.post("/api/v1/deployments", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "site"})
        first = h.hub.store.get_desired("cam-1")
        assert first is not None
        assert h.hub.deployer.refresh_expiring(now=first.issued_at + 1) == 0
        assert h.hub.deployer.refresh_expiring(now=(first.issued_at + first.expires_at) / 2 + 1) == 1
        second = h.hub.store.get_desired("cam-1")
        assert second is not None and second.version == 2
        assert (slot := second.slot("mobilenet-like")) is not None and slot.model_version == "1.0.0"
        # deleting a version a device still wants is refused
        with h.client() as c:
            r = c.delete("/api/v1/models/mobilenet-like/1.0.0")
            assert r.status_code == 409 and "cam-1" in r.json()["error"]["message"]
        # MQTT 5 ingestion works too
        dev = TestClient(broker.host, broker.port)
        try:
            dev.publish(h.hub.topics.status("cam-1"), encode(DeviceStatus(device_id="cam-1", state="online", ts=1.0)))
            wait_for(lambda: (d := h.hub.store.get_device("cam-1")) is not None and d.status == "online")
        finally:
            dev.close()
    finally:
        h.stop()


def test_telemetry_sent_while_the_hub_is_down_is_ingested_after_restart(
    running_hub: RunningHub, broker: Broker, samples: Path
) -> None:
    h = running_hub
    with h.client() as c:
        assert c.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    topics = h.hub.topics
    h.stop()
    dev = TestClient(broker.host, broker.port)
    try:
        for seq in range(3):
            w = one_model_window(device_id="cam-1", seq=seq, start=100.0 + seq, end=101.0 + seq, requests=2)
            dev.publish(topics.telemetry("cam-1"), encode(w), qos=1)
    finally:
        dev.close()
    h.start()  # same client id, persistent session: the broker kept the QoS 1 messages
    wait_for(lambda: h.hub.store.ingest_stats().telemetry_persisted == 3)
    with h.client() as c:
        assert c.get("/api/v1/telemetry/devices/cam-1").json()["summary"]["requests"] == 6


def test_a_device_telemetry_answer_is_one_snapshot_that_a_commit_between_its_reads_cannot_split(
    database: Database, broker: Broker, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer reads the per-minute series, the sequence numbers and the raw windows: a telemetry commit that
    falls between those reads (made to fall there, synchronously) is in none of them, or in all of them."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, database_url=database.url)
    try:
        with h.client() as c:
            assert c.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
        store = h.hub.store
        start = time.time() - 60

        def window(seq: int) -> bytes:
            return encode(one_model_window(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1,
                                           requests=5))  # fmt: skip

        store.submit_telemetry("cam-1", window(0), time.time())
        store.flush()
        read_series = tsql.query_series
        committed: list[int] = []

        def series_then_a_commit(*args: Any, **kw: Any) -> Any:
            points = read_series(*args, **kw)
            if kw.get("device_id") == "cam-1" and not committed:
                committed.append(1)
                store.submit_telemetry("cam-1", window(1), time.time())
                store.flush()  # the writer has committed window 1 before the answer reads on
            return points

        monkeypatch.setattr(tsql, "query_series", series_then_a_commit)
        with h.client() as c:
            body = c.get("/api/v1/telemetry/devices/cam-1", params={"raw": True}).json()
            assert committed
            assert body["summary"]["windows"] == body["seq"]["count"] == len(body["windows"]) == 1, body
            body = c.get("/api/v1/telemetry/devices/cam-1", params={"raw": True}).json()  # the next answer has it
            assert body["summary"]["windows"] == body["seq"]["count"] == len(body["windows"]) == 2, body
    finally:
        h.stop()


def test_a_database_outage_loses_nothing_devices_send_and_the_api_answers_503_then_at_once(
    broker: Broker, postgres: PostgresServer, topic_prefix: str, tmp_path: Path
) -> None:
    """A hub on PostgreSQL over MQTT 5: while the database refuses connections (its open ones ended), a device's
    telemetry stays unacknowledged and its status waits; the API says 503, /metrics answers without the figures
    it reads from the database. Once it is back, the first API call answers and everything is written, once."""
    url = postgres.create_database()
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, database_url=url, broker={"mqtt_version": "5"})
    dev = TestClient(broker.host, broker.port)
    page = httpx.Client(base_url=h.url, headers={"accept": "text/html"}, timeout=30)  # an operator's screen
    try:
        with h.client() as c:
            assert c.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
        assert page.post("/login", data={"token": h.admin_token, "next": "/"}).status_code == 303
        topics = h.hub.topics
        postgres.block(url)
        for seq in range(20):
            w = one_model_window(device_id="cam-1", seq=seq, start=100.0 + seq, end=101.0 + seq, requests=2)
            dev.publish(topics.telemetry("cam-1"), encode(w), qos=1)
        dev.publish(topics.status("cam-1"), encode(DeviceStatus(device_id="cam-1", state="online", ts=1.0)))
        wait_for(lambda: scrape(h.url, "edgefleet_hub_mqtt_unacknowledged") >= 20, timeout=30)
        wait_for(lambda: scrape(h.url, "edgefleet_hub_store_database_waits_total") >= 4, timeout=30)  # both writers
        assert scrape(h.url, "edgefleet_hub_database_up") == 0  # /metrics answers without the database
        with h.client() as c:
            r = c.get("/api/v1/devices")
            assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        r = page.get("/")  # the dashboard says so, and loads itself again
        assert r.status_code == 503 and "database unavailable" in r.text, r.text
        assert '<meta http-equiv="refresh" content="5">' in r.text and "loads again in 5 s" in r.text
        assert h.hub.store.ingest_stats().write_errors == 0
        postgres.block(url, blocked=False)
        assert page.get("/").status_code == 200
        with h.client() as c:
            assert c.get("/api/v1/devices").status_code == 200  # the ended connection costs no call
            assert c.post("/api/v1/devices", json={"id": "cam-2"}).status_code == 201  # a refusing server: tried
        wait_for(lambda: h.hub.store.ingest_stats().telemetry_persisted == 20, timeout=30)
        wait_for(lambda: scrape(h.url, "edgefleet_hub_mqtt_unacknowledged") == 0, timeout=30)
        wait_for(lambda: (d := h.hub.store.get_device("cam-1")) is not None and d.status == "online", timeout=30)
        with h.client() as c:
            assert c.get("/api/v1/telemetry/devices/cam-1").json()["summary"]["requests"] == 40
        st = h.hub.store.ingest_stats()
        assert (st.write_errors, st.telemetry_duplicates, st.dropped_queue_full) == (0, 0, 0)
        assert scrape(h.url, "edgefleet_hub_database_up") == 1
        assert scrape(h.url, "edgefleet_hub_devices", state="online") == 1
    finally:
        page.close()
        dev.close()
        postgres.block(url, blocked=False)
        h.stop()


def test_other_parts_mount_their_routes_on_the_hub_app(running_hub: RunningHub) -> None:

    extra = APIRouter(prefix="/api/v1/extra")

    @extra.get("/{name}")
    def get(name: str, principal: Viewer) -> dict[str, str]:
        if name == "missing":
            raise NotFound("no such thing")
        return {"name": name, "caller": principal.name}

    server = api_server(running_hub.hub, port=0, app=create_app(running_hub.hub, extra_routers=[extra]))
    server.start()
    try:
        auth = {"Authorization": f"Bearer {running_hub.admin_token}"}
        assert httpx.get(f"{server.url}/api/v1/extra/x", headers=auth).json() == {"name": "x", "caller": "admin"}
        assert httpx.get(f"{server.url}/api/v1/extra/x").status_code == 401
        r = httpx.get(f"{server.url}/api/v1/extra/missing", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    finally:
        server.stop()


def test_concurrent_deploys_leave_the_newest_state_retained(
    running_hub: RunningHub, broker: Broker, samples: Path
) -> None:
    h = running_hub
    _push_and_enrol(h, samples, "cam-1")
    ref = h.hub.registry.model_ref("mobilenet-like", "1.0.0")

    def deploy_many() -> None:
        for _ in range(10):
            h.hub.deployer.set_slot(["cam-1"], ref.name, DesiredModel(model=ref))

    threads = [threading.Thread(target=deploy_many) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = h.hub.store.get_desired("cam-1")
    assert stored is not None and stored.version == 30
    key = HubPublicKey(h.hub.key.public._key)
    versions: list[int] = []
    dev = TestClient(broker.host, broker.port)
    try:  # the last publishes may still be on their way: read (retained, then live) until version 30 arrives
        dev.subscribe(h.hub.topics.desired("cam-1"))
        while not versions or versions[-1] < 30:
            msg = dev.get()
            versions.append(Verifier(key, "cam-1").verify(bytes(msg.payload), DesiredState, now=time.time(),
                                                          last_version=None).version)  # fmt: skip
    finally:
        dev.close()
    assert versions == sorted(versions)  # published in version order: never an older one after a newer
    late = TestClient(broker.host, broker.port)  # once 30 arrived, the broker holds it: a later subscriber gets it
    try:
        late.subscribe(h.hub.topics.desired("cam-1"))
        msg = late.get()
        retained = Verifier(key, "cam-1").verify(bytes(msg.payload), DesiredState, now=time.time(), last_version=None)
        assert retained.version == 30 and msg.retain
    finally:
        late.close()


def test_a_want_sent_as_the_first_state_goes_out_finds_every_device_the_deploy_told(
    running_hub: RunningHub, samples: Path
) -> None:
    """A device may want the blob within a millisecond of its desired state; had the chunk server not learned of
    the others yet, it would start its pass for that one and publish the head again for every later device. The
    deployer here is not the chunk server's (as on another replica): what they share is the store."""
    h = running_hub
    _push_and_enrol(h, samples, "cam-1", "cam-2", "cam-3")
    ref = h.hub.registry.model_ref("mobilenet-like", "1.0.0")
    awaiting_at_publish: list[frozenset[str]] = []
    link = h.hub.link
    assert link is not None  # a running hub is connected to its broker

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not awaiting_at_publish:  # cam-1 wants at once: the chunk server looks the blob up now
            assert h.hub.chunks.want(Want(device_id="cam-1", sha256=ref.blob.sha256, missing=[(0, 1)]))
        awaiting_at_publish.append(h.hub.chunks.awaiting(ref.blob.sha256))
        link.publish(topic, payload, qos=qos, retain=retain)

    hub = h.hub
    deployer = Deployer(
        hub.store, hub.key, hub.topics, publish, h.settings.devices, registry=hub.registry, devices=hub.devices
    )
    deployer.set_slot(["cam-1", "cam-2", "cam-3"], ref.name, DesiredModel(model=ref))
    assert awaiting_at_publish == [frozenset({"cam-2", "cam-3"})] * 3


def test_stop_is_safe_unstarted_after_a_failed_start_and_twice(tmp_path: Path, broker: Broker) -> None:
    hub = Hub(HubSettings(data_dir=tmp_path / "no-hub", broker={"url": broker.url}))
    hub.stop()  # nothing was started: nothing to stop
    with pytest.raises(NotInitialised):
        hub.start()
    hub.stop()
    # a start failing half-way (store open, chunk server running, no broker answers) takes back what it began
    settings = HubSettings(
        data_dir=tmp_path / "hub", broker={"url": f"mqtt://127.0.0.1:{free_port()}", "connect_timeout_s": 0.5}
    )
    init_hub(settings)
    broken = Hub(settings)
    with pytest.raises(HubError):
        broken.start()
    broken.stop()
    assert not broken.started and not broken.mqtt_connected
    with Hub(settings.model_copy(update={"broker": HubSettings().broker.model_copy(update={"url": broker.url})})) as h:
        assert h.started  # the store the failed start opened was closed: the directory is usable again


def test_wants_reach_the_leader_alone_and_the_replica_taking_over(
    broker: Broker, topic_prefix: str, tmp_path: Path, samples: Path
) -> None:
    """Only the leader's chunk server answers wants, so only the leader subscribes to them: a follower hears none,
    not even through the subscription its broker session kept from when it led; the replica that takes over
    subscribes and serves the wants that follow (agents want again after a while without a chunk). A deploy that
    a follower serves tells the leader's chunk server whom to await through the store."""

    def replica(name: str) -> Hub:
        return Hub(hub_settings(tmp_path / "hub", broker.url, topic_prefix,
                                broker={"shared_group": "hubs", "replica": name}, leader={"lease_s": 2, "renew_s": 0.2},
                                ingest={"telemetry_process": False}))  # fmt: skip

    init_hub(replica("a").settings)
    b = replica("b")
    with b:  # b leads first: its broker session (persistent) subscribes to wants
        wait_for(lambda: b.leadership.is_leader)
        b.devices.add("cam-1", {}, actor="test")
        b.devices.add("cam-2", {}, actor="test")
        data = (samples / "mobilenet-like.onnx").read_bytes()
        upload = b.registry.receive(iter([data]), max_bytes=len(data) + 1)
        b.registry.push(upload, ModelDescriptor.load(samples / "mobilenet-like.yaml"), actor="test")
    a, b = replica("a"), replica("b")
    a.start()
    dev = TestClient(broker.host, broker.port)
    try:
        b.start()
        assert a.leadership.is_leader and not b.leadership.is_leader
        unknown = "cd" * 32
        want = encode(Want(device_id="cam-1", sha256=unknown, missing=[(0, 1)]))
        birth = encode(DeviceStatus(device_id="cam-1", state="online", ts=1.0))

        def unheard_by_b() -> bool:
            """A want, then a birth (every replica hears births): b hears the birth after the want, if at all."""
            followed, births = b.ingest.followed, b.ingest.accepted["status"]
            dev.publish(a.topics.want(unknown), want)
            dev.publish(a.topics.status("cam-1"), birth)
            wait_for(lambda: b.ingest.accepted["status"] > births)
            return b.ingest.followed == followed

        # b's UNSUBSCRIBE (sent at connect) and the first want race through the broker: wait for it to count
        wait_for(unheard_by_b)
        assert unheard_by_b()  # and it stays so
        wait_for(lambda: a.chunks.stats.unknown_blob_wants >= 2)  # the leader heard them all
        ref = b.registry.model_ref("mobilenet-like", "1.0.0")
        b.deployer.set_slot(["cam-1", "cam-2"], ref.name, DesiredModel(model=ref))  # served by the follower
        dev.publish(a.topics.want(ref.blob.sha256), encode(Want(device_id="cam-1", sha256=ref.blob.sha256,
                                                                missing=[(0, 1)])))  # fmt: skip
        wait_for(lambda: a.chunks.awaiting(ref.blob.sha256) == {"cam-2"})
        # a follower hears reports (at QoS 0: it leaves most to the leader) and writes those without a transfer
        dev.publish(a.topics.reported("cam-1"), encode(one_model_report("cam-1", seq=1, ts=time.time(), phase="idle")))
        wait_for(lambda: b.ingest.accepted["reported"] == 1 and a.ingest.accepted["reported"] == 1)
        followed = b.ingest.followed
        a.stop()  # releases the lease: b takes over
        wait_for(lambda: b.leadership.is_leader)

        # wanted again until b's subscription is in place, as an agent does after `download.rewant_after_s`
        def want_again() -> int:
            dev.publish(a.topics.want(unknown), want)
            return b.chunks.stats.unknown_blob_wants

        wait_for(want_again, interval=0.1)
        assert b.ingest.followed == followed  # served, not left to another
    finally:
        dev.close()
        a.stop()
        b.stop()

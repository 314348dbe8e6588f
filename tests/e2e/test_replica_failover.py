"""Two hub replicas on separate network hosts sharing PostgreSQL and a broker; the leader's host is cut off mid-rollout.

Each replica is a real `hub serve` process in a network namespace of its own (its own address, a veth link to
this host, where Mosquitto and PostgreSQL listen) with a blob directory of its own: no file system is shared.
Both ingest through MQTT 5 shared subscriptions; the leader lease in PostgreSQL decides which one runs the
rollout controller and the chunk server. Simulated agents take part in a rollout that the follower's API
started; once its first wave is out, the leader's link goes down (`ip link set down`): its process keeps
running but reaches neither the broker nor the database.

What must hold: the follower takes the lease (bounded by the lease time, a wait with a deadline here), drives the
rollout to completion and serves its chunks (of a model pushed through the cut leader: from the store's copy);
no device gets two different desired states under one version counter (recorded from the broker); when the link
comes back, the old leader finds itself a follower and records nothing as leader; every telemetry window the
agents sent is stored exactly once, and its per-minute rollups count it exactly once (windows the cut replica
held are written once its link is back).

The cut replica's broker session goes on getting its share of the shared telemetry subscription (Mosquitto hands
it out whether the member is reachable or not), so the new leader takes that session over once the cut replica's
presence lease has expired (`hub.sessions`): it stores what the session held and ends it, and the healed
replica starts a fresh one. Before that (session 11) the rollout took 9 s to ~50 s after the cut: with a dozen
devices publishing in a steady order, one device's windows could all land on the cut replica and the new
leader's gates waited for data (`no_data`); the whole test now takes 16-17 s (five runs, session 12).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from paho.mqtt.client import MQTTMessage

from fleet.codec import decode
from fleet.messages import SignedEnvelope
from fleet.topics import TopicKind, Topics
from hub.leadership import LEADER_LEASE
from hub.runtime import init_hub
from hub.settings import HubSettings
from models.descriptor import ModelDescriptor
from sim.config import SimConfig
from sim.enrol import enrol_via_hub
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.hub.rollouts.fleet import PROFILES, cls_models_fixture  # noqa: F401
from tests.support.broker import Broker, free_port
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient, wait_for
from tests.support.netns import NetLab
from tests.support.postgres import PostgresServer, find_postgres_bin

Models = dict[str, tuple[Path, Path]]
LEASE_S, RENEW_S = 4.0, 0.5
DEVICES = 12


@pytest.fixture
def shared(netlab: NetLab, mosquitto_binary: str, tmp_path: Path) -> Iterator[tuple[NetLab, Broker, PostgresServer]]:
    """Two namespace hosts, and a broker and a PostgreSQL server on this host listening on both links."""
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (`make test` installs it)")
    a, b = netlab.host("a"), netlab.host("b")
    broker = Broker(mosquitto_binary, tmp_path / "mosquitto", free_port(), also_listen=(a.host_ip, b.host_ip))
    pg = PostgresServer(bindir, listen=("127.0.0.1", a.host_ip, b.host_ip))
    broker.start()
    try:
        pg.start()
        yield netlab, broker, pg
    finally:
        pg.stop()
        broker.stop()


def test_the_leaders_host_cut_off_mid_rollout_hands_over_and_nothing_is_sent_twice_or_lost(
    shared: tuple[NetLab, Broker, PostgresServer], cls_models: Models, topic_prefix: str, tmp_path: Path
) -> None:
    lab, broker, pg = shared
    a, b = lab.hosts
    db = pg.create_database().rsplit("/", 1)[1]
    token = init_hub(HubSettings(data_dir=tmp_path / "a", database_url=pg.url(db), topic_prefix=topic_prefix))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the signing key travels to every replica
    # no shared blob directory: the models are pushed through `a`; `b`, leading once `a` is cut off, serves
    # their chunks from the store's copy (hub.registry.Registry.local_blob)
    replicas = {}
    for name, host in (("a", a), ("b", b)):
        env = {
            "EDGEFLEET_HUB_DATABASE_URL": pg.url(db, host=host.host_ip),
            "EDGEFLEET_HUB_BROKER_MQTT_VERSION": "5", "EDGEFLEET_HUB_BROKER_SHARED_GROUP": "hub",
            "EDGEFLEET_HUB_BROKER_REPLICA": name, "EDGEFLEET_HUB_BROKER_PUBLIC_URL": broker.url,
            "EDGEFLEET_HUB_LEADER_LEASE_S": str(LEASE_S), "EDGEFLEET_HUB_LEADER_RENEW_S": str(RENEW_S),
            "EDGEFLEET_HUB_BROKER_KEEPALIVE_S": "60",  # the cut heals before either end gives the session up
        }  # fmt: skip
        replicas[name] = HubProcess(tmp_path / name, f"mqtt://{host.host_ip}:{broker.port}", topic_prefix,
                                    tmp_path / f"{name}.log", host=host, env=env)  # fmt: skip
    replicas["a"].start()  # first up: it takes the lease
    replicas["b"].start()
    conn = psycopg.connect(pg.url(db), autocommit=True)

    def holder() -> str | None:
        row = conn.execute("SELECT holder, expires_at > extract(epoch from clock_timestamp()) FROM leases "
                           "WHERE name = %s", (LEADER_LEASE,)).fetchone()  # fmt: skip
        return str(row[0]) if row and row[1] else None

    def api(replica: str, method: str, path: str, **kw: Any) -> Any:
        url = replicas[replica].url + path
        r = httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)
        assert r.status_code < 400, r.text
        return r.json()

    assert (holder() or "").endswith("-a")
    pushed = {}
    for v in ("1.0.0", "2.0.0"):
        onnx, yaml = cls_models[v]
        desc = json.dumps(ModelDescriptor.load(yaml).to_json())
        with onnx.open("rb") as f:
            pushed[v] = api("a", "POST", "/api/v1/models", data={"descriptor": desc}, files={"file": (onnx.name, f)})
    identities = enrol_via_hub(replicas["a"].url, token, DEVICES, id_prefix="r", labels={"fleet": "ha"})
    config = SimConfig(telemetry_s=0.25, want_retry_s=0.5, seed=7)
    sim = Simulator(identities, config, Profiles.parse(PROFILES), tmp_path / "cache", threads=2, tick_s=0.05)
    watch = TestClient(broker.host, broker.port)
    desired: dict[tuple[str, int], set[str]] = defaultdict(set)  # (device, version counter) -> bodies seen
    try:
        sim.start()

        def all_on(version: str) -> bool:
            rows = api("b", "GET", "/api/v1/devices", params={"selector": "fleet=ha"})  # the follower reads too
            return len(rows) == DEVICES and all(r["active_models"] == [f"cls:{version}"] for r in rows)

        wait_for(lambda: sum(x.connected for x in sim.agents) == DEVICES, timeout=30)

        def on_desired(_c: object, _u: object, msg: MQTTMessage) -> None:
            d = decode(bytes(msg.payload), SignedEnvelope).body
            if d:
                desired[(str(d["device_id"]), int(d["version"]))].add(json.dumps(d, sort_keys=True))

        watch.client.on_message = on_desired
        watch.subscribe(Topics(topic_prefix).subscription(TopicKind.DESIRED))
        api("a", "POST", "/api/v1/deployments", json={"model": "cls", "version": "1.0.0", "selector": "fleet=ha"})
        wait_for(lambda: all_on("1.0.0"), timeout=90, interval=0.1)

        body = {"model": "cls", "version": "2.0.0", "selector": "fleet=ha", "waves": ["1", "50%", "100%"],
                "bake_s": 1.0, "gates": {"max_p95_regression": 0.5}}  # fmt: skip
        rid = api("b", "POST", "/api/v1/rollouts", json=body)["id"]  # started on the follower, driven by the leader
        wait_for(lambda: api("b", "GET", f"/api/v1/rollouts/{rid}")["waves"][0]["phase"] != "pending", timeout=60)

        a.cut()
        cut_at = time.monotonic()
        wait_for(lambda: (holder() or "").endswith("-b"), timeout=LEASE_S + 30)
        handover_s = time.monotonic() - cut_at
        status = wait_for(
            lambda: (s := api("b", "GET", f"/api/v1/rollouts/{rid}")) and s["state"] != "running" and s, timeout=120
        )
        assert status["state"] == "completed", status["reason"]
        adopted = "SELECT subject FROM events WHERE action = 'hub.session.adopted'"
        wait_for(lambda: [r[0][-2:] for r in conn.execute(adopted).fetchall()] == ["-a"], timeout=30)  # cut a's
        wait_for(lambda: all_on("2.0.0"), timeout=60, interval=0.1)

        a.heal()  # the old leader comes back: a follower now, its stalled connections resume
        wait_for(replicas["a"].healthy, timeout=90, interval=0.2)
        sim.stop()
        sent = {x.device_id: x.stats.telemetry for x in sim.agents}

        def stored() -> dict[str, int]:
            rows = conn.execute("SELECT device_id, count(*) FROM telemetry GROUP BY device_id").fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        try:
            wait_for(lambda: stored() == sent, timeout=120, interval=0.5)
        except TimeoutError:
            got = stored()
            missing = {d: sent[d] - got.get(d, 0) for d in sent if got.get(d, 0) != sent[d]}
            raise AssertionError(f"windows missing per device: {missing}") from None
        rolled: dict[str, int] = dict(
            conn.execute("SELECT device_id, sum(windows)::bigint FROM telemetry_minute GROUP BY 1").fetchall()
        )
        assert rolled == sent  # each window counted once in the rollups, whichever replica wrote it
        assert (holder() or "").endswith("-b")  # the healed old leader did not take the lease back
        sha = pushed["2.0.0"]["sha256"]  # pushed through a, served by b after the cut: fetched from the store
        assert (tmp_path / "b" / "blobs" / sha[:2] / sha).read_bytes() == cls_models["2.0.0"][0].read_bytes()
    finally:
        watch.close()
        sim.stop()
        conn.close()
        for r in replicas.values():
            r.kill()
    assert not [k for k, bodies in desired.items() if len(bodies) > 1], "a version counter carried two states"
    steps: dict[str, set[int]] = defaultdict(set)
    for (device, version), bodies in desired.items():
        doc = json.loads(next(iter(bodies)))
        if any(m.get("rollout_id") == rid for m in doc.get("models", [])):  # the slot the rollout set
            steps[device].add(version)
    assert set(steps) == {i.device_id for i in identities}
    print(f"handover after the cut: {handover_s:.1f} s (lease {LEASE_S} s, renew {RENEW_S} s)")

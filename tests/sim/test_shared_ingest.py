"""Two hub processes on one store split ingestion through an MQTT 5 shared subscription: nothing lost or doubled.

Replica "a" runs in the test process, replica "b" is a real `edgefleet hub serve` process; both subscribe with
`$share/hubs/...` for telemetry, so Mosquitto hands each window to exactly one of them. The simulated fleet publishes
telemetry, births and reported states. The sum of what the replicas accepted must equal what the agents sent,
each replica must have taken a share, and the shared store must hold every window once. The devices are
enrolled through replica a after b started: b learns of them from the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.runtime import Hub, init_hub
from hub.settings import HubSettings
from sim.config import AgentIdentity, SimConfig
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.support.broker import Broker, free_port
from tests.support.metrics import scrape
from tests.support.mqtt import wait_for
from tests.support.procs import stop

ROOT = Path(__file__).resolve().parents[2]
N = 20


@pytest.fixture
def replicas(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[Hub, str, list[AgentIdentity]]]:
    settings = HubSettings.model_validate({
        "data_dir": tmp_path / "hub", "topic_prefix": topic_prefix,
        "broker": {"url": broker.url, "mqtt_version": "5", "shared_group": "hubs", "replica": "a"},
        "api": {"port": 0}, "retention": {"sweep_interval_s": 3600},
    })  # fmt: skip
    init_hub(settings)
    a = Hub(settings)
    a.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {
        "PYTHONPATH": str(ROOT), "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "hub"),
        "EDGEFLEET_HUB_TOPIC_PREFIX": topic_prefix, "EDGEFLEET_HUB_BROKER_MQTT_VERSION": "5",
        "EDGEFLEET_HUB_BROKER_SHARED_GROUP": "hubs", "EDGEFLEET_HUB_BROKER_REPLICA": "b",
        "EDGEFLEET_HUB_RETENTION_SWEEP_INTERVAL_S": "3600",
    }  # fmt: skip
    log = (tmp_path / "replica-b.log").open("wb")
    b = subprocess.Popen(
        [sys.executable, str(ROOT / "edgefleet_cli.py"), "hub", "serve", "--broker-url", broker.url, "--port",
         str(port)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def b_connected() -> bool:
            assert b.poll() is None, (tmp_path / "replica-b.log").read_text()
            try:
                return bool(httpx.get(f"{url}/healthz", timeout=2).json()["mqtt_connected"])
            except httpx.HTTPError:
                return False

        wait_for(b_connected, timeout=60)
        bundles = [a.devices.add(f"rep-{i:03d}", {"ring": "all"}, actor="test")[1] for i in range(N)]
        yield a, url, [AgentIdentity.from_bundle(x) for x in bundles]
    finally:
        stop(b)
        log.close()
        a.stop()


def test_two_hub_processes_split_ingestion_with_nothing_lost_or_doubled(
    replicas: tuple[Hub, str, list[AgentIdentity]], tmp_path: Path
) -> None:
    a, b_url, identities = replicas
    config = SimConfig(telemetry_s=0.1, seed=3)
    sim = Simulator(identities, config, Profiles.parse(["*:rps=50"]), tmp_path / "cache", threads=1)
    with sim:
        wait_for(lambda: sim.snapshot().stats.get("telemetry", 0) >= 10 * N, timeout=30)
    sent = sim.snapshot().stats["telemetry"]

    def taken() -> tuple[int, int]:
        return a.ingest.accepted["telemetry"], int(
            scrape(b_url, "edgefleet_hub_ingest_accepted_total", kind="telemetry")
        )

    wait_for(lambda: sum(taken()) >= sent, timeout=20)
    a_took, b_took = taken()
    assert a_took + b_took == sent, f"replicas accepted {(a_took, b_took)}, agents sent {sent}"  # none twice
    assert min(a_took, b_took) > 0, f"one replica took everything: {(a_took, b_took)}"  # the broker split it

    def persisted() -> int:
        return a.store.ingest_stats().telemetry_persisted + int(
            scrape(b_url, "edgefleet_hub_telemetry_persisted_total")
        )

    wait_for(lambda: persisted() >= sent, timeout=20)
    assert persisted() == sent  # nothing lost
    device = identities[0].device_id
    windows = a.store.telemetry_windows(device, since=None, until=None, limit=100_000)
    assert len({w.seq for w in windows}) == len(windows)  # the shared store holds each window once
    births = a.ingest.accepted["status"] + int(scrape(b_url, "edgefleet_hub_ingest_accepted_total", kind="status"))
    assert births >= N  # every birth reached the replicas (births and reports reach every replica)

"""The simulator against a real Mosquitto and a test-side hub: births, signed states, fan-out, faults."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.codec import decode
from fleet.messages import CommandAck, CommandName, ModelRef, Phase, TelemetryWindow
from fleet.signing import HubSigningKey
from sim.config import SimConfig
from sim.enrol import direct_identities
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.support.broker import Broker
from tests.support.hubside import one
from tests.support.mqtt import wait_for
from tests.support.sim_hub import MiniHub

N = 50


@pytest.fixture
def hub(broker: Broker, topic_prefix: str) -> Iterator[MiniHub]:
    h = MiniHub(broker.host, broker.port, topic_prefix, batch_s=0.05, resend_s=0.5)
    yield h
    h.close()


def simulator(broker: Broker, hub: MiniHub, topic_prefix: str, tmp_path: Path, n: int, **config: object) -> Simulator:
    identities = direct_identities(broker.url, hub.public_key, n, topic_prefix=topic_prefix, labels={"ring": "canary"})
    cfg = SimConfig.model_validate({"telemetry_s": 0.5, "want_retry_s": 0.5, "seed": 7, **config})
    return Simulator(identities, cfg, Profiles.parse(["*:p50=4ms,err=0.01,rps=20"]), tmp_path / "cache", threads=2)


def test_fifty_agents_download_by_fan_out_and_report_active(
    broker: Broker, hub: MiniHub, topic_prefix: str, tmp_path: Path
) -> None:
    blob = random.Random(1).randbytes(2 * 1024 * 1024 + 123)
    manifest = hub.add_blob(blob)
    model = ModelRef(name="resnet", version="1.2.0", task="classification", blob=manifest)
    with simulator(broker, hub, topic_prefix, tmp_path, N) as sim:
        wait_for(lambda: hub.online() == N, timeout=30)
        assert all(s.labels == {"ring": "canary"} for s in hub.status.values())
        for agent in sim.agents:
            hub.publish_desired(hub.desired(agent.device_id, model))
        wait_for(lambda: list(hub.phases().values()).count("active") == N, timeout=60)
        assert all((a := one(r).active) is not None and a.version == "1.2.0" for r in hub.reported.values())
        # every agent verified every chunk; the bytes hit the disk once; chunks went out about once each
        assert sim.snapshot().stats["chunks"] == N * manifest.count
        assert sim.blobs.chunks_written == manifest.count
        assert (tmp_path / "cache" / "blobs" / manifest.sha256).read_bytes() == blob
        assert hub.chunks_sent < 4 * manifest.count
        wait_for(
            lambda: any(m.version == "1.2.0" for _, p in hub.telemetry[-N:] for m in decode(p, TelemetryWindow).models),
            timeout=10,
        )
        hub.command(sim.agents[0].device_id, CommandName.PING, "corr-1")
        wait_for(lambda: hub.acks, timeout=10)
        assert decode(hub.acks[0], CommandAck).ok
    wait_for(lambda: hub.online() == 0, timeout=10)  # a clean stop says offline
    hub.clear([a.device_id for a in sim.agents])


def test_bad_signature_is_refused_and_reported(broker: Broker, hub: MiniHub, topic_prefix: str, tmp_path: Path) -> None:
    manifest = hub.add_blob(b"x" * 5000, chunk_size=1024)
    model = ModelRef(name="resnet", version="1.0.0", task="classification", blob=manifest)
    with simulator(broker, hub, topic_prefix, tmp_path, 3) as sim:
        wait_for(lambda: hub.online() == 3, timeout=30)
        rogue = HubSigningKey.generate()
        for agent in sim.agents:
            hub.publish_desired(hub.desired(agent.device_id, model), key=rogue)
        wait_for(lambda: all(r.error is not None for r in hub.reported.values()) and len(hub.reported) == 3, timeout=20)
        assert {r.error.code for r in hub.reported.values() if r.error} == {"unknown_signing_key"}
        assert all(r.phase is Phase.IDLE and one(r).download is None for r in hub.reported.values())
        # hostile payloads on the desired and chunk topics are counted, and nothing dies
        hub.publish_raw(hub.topics.desired(sim.agents[0].device_id), os.urandom(300))
        hub.publish_raw(hub.topics.chunk(manifest.sha256), os.urandom(300))
        wait_for(lambda: sim.agents[0].stats.refused_desired == 2, timeout=10)
        assert sim.snapshot().transport["callback_errors"] == 0
    hub.clear([a.device_id for a in sim.agents])


def test_faults_show_in_status_and_reported_states(
    broker: Broker, hub: MiniHub, topic_prefix: str, tmp_path: Path
) -> None:
    manifest = hub.add_blob(b"y" * 70_000, chunk_size=8192)
    model = ModelRef(name="resnet", version="3.0.0", task="classification", blob=manifest)
    faults = {"activation_fail_p": 1.0, "offline_p": 0.0, "offline_s": 1.0, "slow_fraction": 1.0, "slow_chunk_s": 0.01}
    with simulator(broker, hub, topic_prefix, tmp_path, 4, faults=faults) as sim:
        wait_for(lambda: hub.online() == 4, timeout=30)
        for agent in sim.agents:
            hub.publish_desired(hub.desired(agent.device_id, model))
        wait_for(lambda: list(hub.phases().values()).count("failed") == 4, timeout=30)
        assert {e.code for r in hub.reported.values() if (e := one(r).error)} == {"activation_failed"}
        assert all(one(r).active is None for r in hub.reported.values())
        # going offline abruptly fires the last will; the agent comes back by itself
        victim = sim.agents[0]
        victim.config = victim.config.model_copy(
            update={"faults": victim.config.faults.model_copy(update={"offline_p": 1.0})}
        )
        victim._next_window = time.time()
        wait_for(lambda: hub.status[victim.device_id].state == "offline", timeout=20)
        victim.config = victim.config.model_copy(
            update={"faults": victim.config.faults.model_copy(update={"offline_p": 0.0})}
        )
        wait_for(lambda: hub.status[victim.device_id].state == "online", timeout=20)
        assert victim.stats.went_offline >= 1
    hub.clear([a.device_id for a in sim.agents])

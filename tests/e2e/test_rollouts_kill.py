"""The hub as a real process (`edgefleet hub serve`), SIGKILLed twice in the middle of a rollout.

Each kill lands right after a wave started, when its desired states are being stored and published; the
hub started again on the same data directory continues and finishes the rollout, and every device holds
exactly one signed desired version per step (a re-sent retained state after a restart has the same version).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.codec import decode
from fleet.messages import DesiredState, SignedEnvelope
from fleet.topics import TopicKind, Topics
from hub.runtime import init_hub
from hub.settings import HubSettings
from models.descriptor import ModelDescriptor
from sim.config import SimConfig
from sim.enrol import enrol_via_hub
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.hub.rollouts.fleet import PROFILES, cls_models_fixture  # noqa: F401
from tests.support.broker import Broker
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient, wait_for

ROOT = Path(__file__).resolve().parents[2]
Models = dict[str, tuple[Path, Path]]


@pytest.fixture
def hub_process(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[HubProcess, str]]:
    settings = HubSettings(data_dir=tmp_path / "hub", topic_prefix=topic_prefix, broker={"url": broker.url})
    token = init_hub(settings)
    h = HubProcess(settings.data_dir, broker.url, topic_prefix, tmp_path / "hub.log")
    h.start()
    yield h, token
    h.kill()


def test_a_hub_killed_mid_wave_twice_finishes_the_rollout_without_sending_a_step_twice(
    hub_process: tuple[HubProcess, str], cls_models: Models, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    h, token = hub_process

    def api(method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, h.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)
        assert r.status_code < 400, r.text
        return r.json()

    for v in ("1.0.0", "2.0.0"):
        onnx, yaml = cls_models[v]
        desc = json.dumps(ModelDescriptor.load(yaml).to_json())
        with onnx.open("rb") as f:
            api("POST", "/api/v1/models", data={"descriptor": desc}, files={"file": (onnx.name, f)})
    identities = enrol_via_hub(h.url, token, 20, id_prefix="k", labels={"fleet": "kill"})
    config = SimConfig(telemetry_s=0.2, want_retry_s=0.5, seed=5)
    sim = Simulator(identities, config, Profiles.parse(PROFILES), tmp_path / "cache", threads=2, tick_s=0.05)
    watch = TestClient(broker.host, broker.port)
    log: list[DesiredState] = []
    try:
        sim.start()

        def all_on(version: str) -> bool:
            rows = api("GET", "/api/v1/devices", params={"selector": "fleet=kill"})
            return len(rows) == 20 and all(r["active_models"] == [f"cls:{version}"] for r in rows)

        wait_for(lambda: sum(a.connected for a in sim.agents) == 20, timeout=30)
        api("POST", "/api/v1/deployments", json={"model": "cls", "version": "1.0.0", "selector": "fleet=kill"})
        wait_for(lambda: all_on("1.0.0"), timeout=60, interval=0.1)
        watch.client.on_message = lambda _c, _u, msg: log.append(
            DesiredState.model_validate(decode(bytes(msg.payload), SignedEnvelope).body)
        )
        watch.subscribe(Topics(topic_prefix).subscription(TopicKind.DESIRED))

        body = {"model": "cls", "version": "2.0.0", "selector": "fleet=kill", "waves": ["1", "25%", "100%"],
                "bake_s": 1.0, "gates": {"max_p95_regression": 0.5}}  # fmt: skip
        rid = api("POST", "/api/v1/rollouts", json=body)["id"]
        for wave in (1, 2):

            def started(w: int = wave) -> bool:
                return bool(api("GET", f"/api/v1/rollouts/{rid}")["waves"][w]["phase"] != "pending")

            wait_for(started, timeout=60, interval=0.02)
            h.kill()
            h.start()
        status = wait_for(
            lambda: (s := api("GET", f"/api/v1/rollouts/{rid}")) and s["state"] != "running" and s, timeout=60
        )
        assert status["state"] == "completed", status["reason"]
        wait_for(lambda: all_on("2.0.0"), timeout=30, interval=0.1)
        versions: dict[tuple[str, str], set[int]] = defaultdict(set)
        for d in log:
            slot = d.slot("cls")
            if slot is not None and slot.rollout_id == rid:
                versions[(d.device_id, slot.model.version)].add(d.version)
        assert {dev for dev, _ in versions} == {i.device_id for i in identities}
        assert all(len(v) == 1 for v in versions.values()), versions
    finally:
        watch.close()
        sim.stop()

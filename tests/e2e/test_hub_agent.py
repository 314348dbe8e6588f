"""The whole single-device path for real: hub + Mosquitto + an agent process serving its inference API.

Push two versions, enrol a device, deploy v1 by selector, call the device's API, see the hub learn what
runs there and what it served, deploy v2 and see the API switch, stop the agent and see it go offline.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fleet.bundle import DeviceBundle
from models.descriptor import ModelDescriptor
from tests.support.agents import AgentProc
from tests.support.broker import free_port
from tests.support.hub import RunningHub
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelDescriptor]]:
    return classifier_versions(tmp_path_factory.mktemp("e2e-models"))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), (200, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _served_version(api: str) -> str | None:
    try:
        r = httpx.get(f"{api}/v2/models/cls", timeout=2)
    except httpx.HTTPError:
        return None
    return str(r.json()["versions"][0]) if r.status_code == 200 else None


def test_deploy_serve_update_and_report(
    running_hub: RunningHub,
    versions: dict[str, tuple[Path, ModelDescriptor]],
    spawn_agent: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    h = running_hub
    for path, desc in versions.values():
        r = h.push_model(path, desc.to_json())
        assert r.status_code == 201, r.text
    with h.client() as hub_api:
        r = hub_api.post("/api/v1/devices", json={"id": "cam-e2e", "labels": {"site": "lab"}})
        assert r.status_code == 201, r.text
        bundle = DeviceBundle.model_validate(r.json()["bundle"])
        hub_api.post("/api/v1/devices", json={"id": "cam-other", "labels": {"site": "elsewhere"}})
    bundle.save(tmp_path / "bundle.json")

    def hub_view() -> dict[str, object]:
        with h.client() as c:
            return dict(c.get("/api/v1/devices/cam-e2e").json())

    agent = spawn_agent(tmp_path / "bundle.json", free_port())
    wait_for(lambda: hub_view()["status"] == "online", timeout=30)
    assert httpx.get(f"{agent.api}/v2/health/ready", timeout=5).status_code == 503  # nothing deployed yet

    with h.client() as hub_api:
        r = hub_api.post("/api/v1/deployments", json={"model": "cls", "version": "1.0.0", "selector": "site=lab"})
        assert r.status_code == 201, r.text
        assert set(r.json()["devices"]) == {"cam-e2e"}
    wait_for(lambda: _served_version(agent.api) == "1.0.0", timeout=60)

    answers = []
    for _ in range(5):
        r = httpx.post(f"{agent.api}/v1/models/cls:predict?top_k=3", content=_png(), timeout=10)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert all(len(a["classes"]) == 3 for a in answers)
    assert answers[0] == answers[-1]  # deterministic model, same image

    wait_for(lambda: hub_view()["active_models"] == ["cls:1.0.0"], timeout=30)

    def served_requests() -> int:
        with h.client() as c:
            t = c.get("/api/v1/telemetry/devices/cam-e2e", params={"raw": True}).json()
        return int(t["summary"]["requests"] or 0)

    wait_for(lambda: served_requests() >= 5, timeout=30)

    with h.client() as hub_api:
        r = hub_api.post("/api/v1/deployments", json={"model": "cls", "version": "2.0.0", "selector": "site=lab"})
        assert r.status_code == 201, r.text
    wait_for(lambda: _served_version(agent.api) == "2.0.0", timeout=60)
    wait_for(lambda: hub_view()["active_models"] == ["cls:2.0.0"], timeout=30)
    r = httpx.post(f"{agent.api}/v1/models/cls:predict?top_k=3", content=_png(), timeout=10)
    assert r.status_code == 200

    assert agent.stop() == 0, agent.output()[-3000:]
    wait_for(lambda: hub_view()["status"] == "offline", timeout=30)

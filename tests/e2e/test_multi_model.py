"""Several models per device, for real: a hub, Mosquitto and agent processes serving a detector and a
classifier side by side through their inference API, with clients calling both all along.

- both models deployed to the same devices; the hub's device list shows both on each;
- a rollout of the classifier whose canary fails its p95 gate (a really heavier version) is rolled back: only
  the classifier moves, the detector keeps serving and not one request to it fails;
- a rollout of the detector runs at the same time on the same devices and completes; a second rollout of
  the classifier on them is refused (409);
- tritonclient lists both models of a device and calls each.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from PIL import Image

from fleet.bundle import DeviceBundle
from models.cli import write_model
from models.samples import build_detector, detector_descriptor
from tests.hub.rollouts.fleet import HUB_OVERRIDES, cls_models_fixture  # noqa: F401
from tests.support.agents import AgentProc
from tests.support.broker import Broker, free_port
from tests.support.hub import RunningHub, start_hub
from tests.support.mqtt import wait_for

DEVICES = ("cam-m0", "cam-m1", "cam-m2")
Models = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def det_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A small detector `det` (64x64 input): 1.0.0 and 1.1.0 (other weights)."""
    out = tmp_path_factory.mktemp("det-models")
    found = {}
    for version, seed in (("1.0.0", 1), ("1.1.0", 2)):
        desc = detector_descriptor("yolov8", size=(64, 64), name="det").model_copy(update={"version": version})
        onnx_path, yaml_path = write_model(
            build_detector("yolov8", size=(64, 64), seed=seed), desc, out, f"det-{version}"
        )
        found[version] = (onnx_path, yaml_path)
    return found


@pytest.fixture
def hub(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[RunningHub]:
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, **HUB_OVERRIDES)
    yield h
    h.stop()


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class Clients:
    """One client per device and model posting images to the model's image endpoint until stopped."""

    def __init__(self, agents: list[AgentProc], models: tuple[str, ...]) -> None:
        self.codes: dict[str, Counter[int]] = {m: Counter() for m in models}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(a.api, m), daemon=True) for a in agents for m in models
        ]
        for t in self._threads:
            t.start()

    def _run(self, url: str, model: str) -> None:
        images = [_png(i) for i in range(4)]
        with httpx.Client(base_url=url, timeout=30) as c:
            i = 0
            while not self._stop.wait(0.01):
                code = c.post(f"/v1/models/{model}:predict", content=images[i % 4]).status_code
                with self._lock:
                    self.codes[model][code] += 1
                i += 1

    def count(self, model: str) -> Counter[int]:
        with self._lock:
            return Counter(self.codes[model])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def test_a_detector_and_a_classifier_roll_out_on_their_own_on_the_same_devices(
    hub: RunningHub,
    cls_models: Models,
    det_models: Models,
    spawn_agent: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    h = hub
    for models, versions in ((cls_models, ("1.0.0", "3.1.0")), (det_models, ("1.0.0", "1.1.0"))):
        for v in versions:
            assert h.push_model(*models[v]).status_code == 201
    agents = []
    with h.client() as api:
        for d in DEVICES:
            r = api.post("/api/v1/devices", json={"id": d, "labels": {"fleet": "multi"}})
            assert r.status_code == 201, r.text
            DeviceBundle.model_validate(r.json()["bundle"]).save(tmp_path / f"{d}.json")
            agents.append(spawn_agent(tmp_path / f"{d}.json", free_port()))
        for model in ("det", "cls"):
            body = {"model": model, "version": "1.0.0", "selector": "fleet=multi"}
            assert api.post("/api/v1/deployments", json=body).status_code == 201

    def devices() -> dict[str, Any]:
        with h.client() as api:
            return {d["id"]: d for d in api.get("/api/v1/devices", params={"selector": "fleet=multi"}).json()}

    def running(*want: str) -> bool:
        return all(sorted(d["active_models"]) == sorted(want) for d in devices().values())

    wait_for(lambda: running("det:1.0.0", "cls:1.0.0"), timeout=90, interval=0.2)

    clients = Clients(agents, ("det", "cls"))
    try:
        wait_for(lambda: clients.count("cls")[200] >= 30 * len(DEVICES), timeout=60)
        gate = {"max_p95_regression": 0.5, "max_error_rate": None, "min_requests": 10}
        with h.client() as api:
            cls_rollout = api.post("/api/v1/rollouts", json={
                "model": "cls", "version": "3.1.0", "selector": "fleet=multi", "waves": ["1", "100%"], "bake_s": 2,
                "gates": gate, "on_failure": "rollback",
            })  # fmt: skip
            det_rollout = api.post("/api/v1/rollouts", json={
                "model": "det", "version": "1.1.0", "selector": "fleet=multi", "waves": ["1", "100%"], "bake_s": 1,
                "gates": {"max_p95_regression": None, "min_requests": 10},
            })  # fmt: skip
            assert cls_rollout.status_code == det_rollout.status_code == 201, (cls_rollout.text, det_rollout.text)
            again = api.post("/api/v1/rollouts", json={"model": "cls", "version": "3.1.0", "selector": "fleet=multi"})
            assert again.status_code == 409 and again.json()["error"]["code"] == "rollout_conflict"

        def rollout(r: httpx.Response, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            def check() -> dict[str, Any] | None:
                with h.client() as api:
                    s = api.get(f"/api/v1/rollouts/{r.json()['id']}").json()
                return s if until(s) else None

            return wait_for(check, timeout=180, interval=0.2)

        cls_status = rollout(cls_rollout, lambda s: s["state"] in ("rolled_back", "completed", "paused"))
        det_status = rollout(det_rollout, lambda s: s["state"] in ("completed", "paused", "rolled_back"))
        assert cls_status["state"] == "rolled_back", cls_status["reason"]
        canary = cls_status["waves"][0]
        gate_result = next(g for g in canary["gates"] if g["name"] == "p95_latency")
        assert gate_result["status"] == "fail" and gate_result["measured"]["control_devices"] == 2
        assert det_status["state"] == "completed", det_status["reason"]
        wait_for(lambda: running("det:1.1.0", "cls:1.0.0"), timeout=60, interval=0.2)
        served = clients.count("det")[200]
        wait_for(lambda: clients.count("det")[200] >= served + 3 * len(DEVICES), timeout=30)  # still serving
    finally:
        clients.stop()
    det_codes, cls_codes = clients.count("det"), clients.count("cls")
    assert set(det_codes) == {200}, f"requests to the detector failed during the rollouts: {det_codes}"
    assert set(cls_codes) == {200}, f"requests to the classifier failed during its swaps: {cls_codes}"
    # the classifier's telemetry judged the classifier: the detector's windows are its own
    windows = h.hub.store.telemetry_windows(DEVICES[0], since=None, until=None, limit=100_000)
    assert {w.model for w in windows if w.requests} == {"det", "cls"}

    # tritonclient sees both models of a device and calls each
    client = th.InferenceServerClient(agents[0].api.removeprefix("http://"))
    try:
        index = client.get_model_repository_index()
        ready = sorted((m["name"], m["version"]) for m in index if m["state"] == "READY")
        assert ready == [("cls", "1.0.0"), ("det", "1.1.0")]
        assert client.is_model_ready("det") and client.is_model_ready("cls", "1.0.0")
        for name, tensor, shape in (("cls", "image", [1, 3, 32, 32]), ("det", "images", [1, 3, 64, 64])):
            inp = th.InferInput(tensor, shape, "FP32")
            inp.set_data_from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32), binary_data=True)
            result = client.infer(name, [inp])
            assert result.get_response()["model_name"] == name
    finally:
        client.close()

"""End-to-end rollout fixtures: a real hub on Mosquitto, real in-process agents with traffic, simulated agents.

Models are small classifiers (`cls`): 1.0.0 and 2.0.0 (other weights), 3.0.0 (slow on simulated agents:
their profile says so), 3.1.0 (really heavier: it runs the network on its input upscaled 8x) and 2.1.0 =
1.0.0 with its labels permuted (disagrees in shadow). Colour classifiers (`colour`): 1.0.0 plain, 1.1.0 and
1.2.0 with another input size, dtype, layout, channel order and normalisation, 1.1.0 disagreeing on a known
share of `colour_photos` (agents serving them run the HTTP API and send those photos to the image endpoint).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from agent.api import ApiServer, ApiSettings
from agent.headless import HeadlessServing
from agent.runtime import Agent
from agent.serving import ModelRepository, NotReady, ServingError
from agent.settings import AgentSettings
from fleet.bundle import DeviceBundle
from fleet.codec import decode
from fleet.messages import DesiredState, ReportedState, SignedEnvelope
from fleet.topics import TopicKind
from models.cli import write_model
from models.errors import ModelError
from models.samples import build_classifier, classifier_descriptor
from sim.config import SimConfig
from sim.enrol import enrol_via_hub
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.models import colour_classifier, permute_output
from tests.support.mqtt import TestClient, wait_for

HUB_OVERRIDES: dict[str, Any] = {
    "rollouts": {"tick_interval_s": 0.2, "telemetry_grace_s": 0.4},
}
# simulated devices are slower than the real ones here, so a real canary never looks slow against them
PROFILES = ["*:p50=20ms,p95=40ms,rps=100", "3.0.0:p50=200ms,p95=400ms,rps=100"]


def upscale_input(model: onnx.ModelProto, factor: int) -> onnx.ModelProto:
    """The same network run on its input resized `factor` times larger: a genuinely heavier model."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inner = "image_upscaled"
    for node in m.graph.node:
        node.input[:] = [inner if i == "image" else i for i in node.input]
    scales = np.asarray([1, 1, factor, factor], dtype=np.float32)
    m.graph.initializer.append(numpy_helper.from_array(scales, "upscale"))
    m.graph.node.insert(0, helper.make_node("Resize", ["image", "", "upscale"], [inner], mode="nearest"))
    return m


@pytest.fixture(scope="session", name="cls_models")
def cls_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """version -> (onnx, descriptor yaml), validated."""
    out = tmp_path_factory.mktemp("rollout-models")
    models = {
        "1.0.0": build_classifier(10, seed=0),
        "2.0.0": build_classifier(10, seed=1),
        "3.0.0": build_classifier(10, seed=2),
        "2.1.0": permute_output(build_classifier(10, seed=0), "logits", [(i + 3) % 10 for i in range(10)]),
        "3.1.0": upscale_input(build_classifier(10, seed=2), 8),  # ~70x the compute of 1.0.0
    }
    found = {}
    for version, model in models.items():
        desc = classifier_descriptor(10, 32, 32, name="cls").model_copy(update={"version": version})
        onnx_path, yaml_path = write_model(model, desc, out, f"cls-{version}")
        found[version] = (onnx_path, yaml_path)
    return found


@pytest.fixture(scope="session", name="colour_models")
def colour_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """version -> (onnx, descriptor yaml) of the colour classifiers, validated."""
    out = tmp_path_factory.mktemp("colour-models")
    made = {}
    for version, size, raw, bias in (("1.0.0", 32, False, 0.0), ("1.1.0", 48, True, 0.1), ("1.2.0", 40, True, 0.0)):
        onnx_path, yaml_path = write_model(*colour_classifier(version, size, raw_bgr=raw, red_bias=bias), out, version)
        made[version] = (onnx_path, yaml_path)
    return made


def _photo_traffic(
    url: str, model: str, photos: list[bytes], stop: threading.Event, errors: list[str], active: Callable[[], bool]
) -> None:
    """Send `photos` in turn to `model`'s image endpoint, one at a time, until stopped.

    Until the device has reported `model` active (`active()`, read before each request: the agent reports
    only after the model serves) refusals are expected; after that only an overload refusal (503 "overloaded",
    a request timeout on a loaded machine) is, and any other answer that is not 200 — 503 not ready above
    all: the model became unreachable — is recorded in `errors`. So is a request that fails below HTTP
    (connection reset, timeout). The traffic goes on either way: a dead traffic thread would leave a rollout
    waiting for samples instead of saying what happened."""
    with httpx.Client(base_url=url, timeout=30) as c:
        i = 0
        while not stop.wait(0.005):
            was_active = active()
            try:
                r = c.post(f"/v1/models/{model}:predict", content=photos[i % len(photos)])
            except httpx.HTTPError as e:
                errors.append(f"{model}: {e!r}")
                continue
            if r.status_code == 200:
                i += 1
            elif was_active and not _overload(r):
                errors.append(f"{model}: HTTP {r.status_code} after the device reported it active: {r.text[:200]}")


def _overload(r: httpx.Response) -> bool:
    """True for the API's refusal under load (`agent.serving.classify`: 503 "overloaded: ..."), not not-ready."""
    try:
        reason = r.json().get("error", "") if r.status_code == 503 else ""
    except ValueError:
        return False
    return isinstance(reason, str) and reason.startswith("overloaded")


def _traffic(serving: HeadlessServing, stop: threading.Event, errors: list[str], active: Callable[[], bool]) -> None:
    """Tensors to headless serving until stopped. Refusals during a swap or under load (a request timeout on
    a loaded machine) are expected, and NotReady until the device has reported its model active (`active()`,
    read before each request: the agent reports only after the model serves). NotReady after that means the
    model became unreachable: it is recorded in `errors`, like any unexpected error, and the traffic goes on
    (a dead traffic thread would leave a rollout waiting for samples)."""
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    while not stop.wait(0.01):
        was_active = active()
        try:
            serving.infer({"image": x})
        except NotReady as e:
            if was_active:
                errors.append(f"headless: NotReady after the device reported its model active: {e}")
        except (ModelError, ServingError, TimeoutError):
            pass
        except Exception as e:  # noqa: BLE001 - recorded for the test to see
            errors.append(f"headless: {e!r}")


@dataclass
class Fleet:
    """A hub with devices: `real(...)` in-process agents serving traffic, `sims(...)` simulated ones."""

    hub: RunningHub
    tmp: Path
    broker: Broker
    agents: list[Agent] = field(default_factory=list)
    servings: dict[str, ModelRepository] = field(default_factory=dict)
    servers: list[ApiServer] = field(default_factory=list)
    sim: Simulator | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    desired_log: list[DesiredState] = field(default_factory=list)
    traffic_errors: list[str] = field(default_factory=list)  # requests of `real(...)` devices that failed
    reported_active: dict[str, frozenset[str]] = field(default_factory=dict)  # device -> active models it reported
    _watch: TestClient | None = None
    _reports: TestClient | None = None
    _report_seq: dict[str, int] = field(default_factory=dict)

    def push(self, models: dict[str, tuple[Path, Path]], *versions: str) -> None:
        for v in versions:
            r = self.hub.push_model(*models[v])
            assert r.status_code in (200, 201), r.text

    def real(self, device_id: str, labels: dict[str, str], photos: tuple[str, list[bytes]] | None = None) -> None:
        """An in-process agent with traffic: tensors to headless serving, or with `photos` (model name, images)
        the HTTP API, with those images sent in turn to the model's image endpoint."""
        with self.hub.client() as api:
            r = api.post("/api/v1/devices", json={"id": device_id, "labels": labels})
            assert r.status_code == 201, r.text
            bundle = DeviceBundle.model_validate(r.json()["bundle"])
        settings = AgentSettings.model_validate(
            {
                "data_dir": self.tmp / device_id,
                "link": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "keepalive_s": 5, "publish_timeout_s": 2},
                "download": {"rewant_after_s": 1.0},
                "telemetry": {"interval_s": 0.2},
                "activation": {"warmup_runs": 1, "report_interval_s": 0.05},
            }
        )
        self._watch_reported()
        serving: ModelRepository
        if photos is None:
            serving = headless = HeadlessServing(seed=1)
            traffic: tuple[Callable[..., None], tuple[Any, ...]]
            active = lambda: bool(self.reported_active.get(device_id))  # noqa: E731
            traffic = (_traffic, (headless, self._stop, self.traffic_errors, active))
        else:
            serving = ModelRepository(seed=1)
            server = ApiServer(ApiSettings(port=0), serving)
            server.start()
            self.servers.append(server)
            active = lambda: photos[0] in self.reported_active.get(device_id, ())  # noqa: E731
            traffic = (_photo_traffic, (server.url, *photos, self._stop, self.traffic_errors, active))
        agent = Agent(bundle, settings, serving)
        agent.start()
        self.agents.append(agent)
        self.servings[device_id] = serving
        t = threading.Thread(target=traffic[0], args=traffic[1], daemon=True)
        t.start()
        self._threads.append(t)

    def sims(self, n: int, labels: dict[str, str], *, prefix: str = "sim") -> list[str]:
        identities = enrol_via_hub(self.hub.url, self.hub.admin_token, n, id_prefix=prefix, labels=labels)
        config = SimConfig(telemetry_s=0.2, want_retry_s=0.5, seed=3)
        self.sim = Simulator(identities, config, Profiles.parse(PROFILES), self.tmp / "cache", threads=2, tick_s=0.05)
        self.sim.start()
        return [i.device_id for i in identities]

    def _watch_reported(self) -> None:
        """Keep `reported_active` current: the models each device's latest reported state has active."""
        if self._reports is not None:
            return
        self._reports = TestClient(self.broker.host, self.broker.port)
        self._reports.client.on_message = lambda _c, _u, msg: self._on_reported(
            decode(bytes(msg.payload), ReportedState)
        )
        self._reports.subscribe(self.hub.hub.topics.subscription(TopicKind.REPORTED))

    def _on_reported(self, r: ReportedState) -> None:
        if r.seq > self._report_seq.get(r.device_id, -1):
            self._report_seq[r.device_id] = r.seq
            self.reported_active[r.device_id] = frozenset(m.name for m in r.models if m.active is not None)

    def watch_desired(self) -> None:
        """Record every desired state published from now on (to check nothing is sent twice)."""
        topics = self.hub.hub.topics
        self._watch = TestClient(self.broker.host, self.broker.port)
        self._watch.client.on_message = lambda _c, _u, msg: self.desired_log.append(
            DesiredState.model_validate(decode(bytes(msg.payload), SignedEnvelope).body)
        )
        self._watch.subscribe(topics.subscription(TopicKind.DESIRED))

    # -- API helpers ----------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> Any:
        with self.hub.client() as c:
            r = c.request(method, path, **kw)
            assert r.status_code < 400, r.text
            return r.json()

    def deploy(self, version: str, selector: str, model: str = "cls") -> None:
        self.api("POST", "/api/v1/deployments", json={"model": model, "version": version, "selector": selector})

    def active_versions(self, selector: str, model: str | None = None) -> dict[str, str | None]:
        """The version of `model` (default: the one model each device runs) active on each matching device."""
        rows = self.api("GET", "/api/v1/devices", params={"selector": selector})
        return {
            r["id"]: next((m.split(":")[1] for m in r["active_models"] if model in (None, m.split(":")[0])), None)
            for r in rows
        }

    def wait_all_active(self, version: str, selector: str, timeout: float = 60) -> None:
        wait_for(lambda: set(self.active_versions(selector).values()) == {version}, timeout=timeout, interval=0.1)

    def wait_rollout(self, rollout_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 90) -> Any:
        last: list[Any] = [None]

        def check() -> Any:
            s = last[0] = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
            return s if until(s) else None

        try:
            return wait_for(check, timeout=timeout, interval=0.1)
        except TimeoutError as e:  # say where the rollout stood and whether the traffic failed
            raise AssertionError(f"{e}: last status {last[0]}; {self.diagnosis()}") from e

    def diagnosis(self) -> str:
        """What a rollout that did not move needs explained: whether the hub's tick failed or refused messages,
        whether the traffic failed (a model reported active but unreachable shows here), and, for each real
        device, what it serves, what its shadow compared and dropped, and the telemetry the hub stored."""
        hub = self.hub.hub
        ticking = hub.rollouts._loop.running
        parts = [f"leading {hub.rollouts.leading}, ticking {ticking}, tick errors {hub.rollouts.tick_errors}",
                 f"ingest refused {dict(hub.ingest.rejected)}", f"store {hub.store.ingest_stats()}"]  # fmt: skip
        alive = sum(t.is_alive() for t in self._threads)
        parts.append(f"traffic threads alive {alive} of {len(self._threads)}")
        parts.append(f"traffic errors {len(self.traffic_errors)} {self.traffic_errors[:5]}")
        now = time.time()
        for device, serving in self.servings.items():
            for name, slot in serving.slots.items():
                tally = slot.shadow_tally()
                shadow = (
                    f"shadow {tally.candidate_version}: {tally.total_samples} samples, {tally.total_agreements} "
                    f"agreed, {tally.total_incomparable} incomparable, dropped {tally.total_dropped}"
                    if tally is not None else "no shadow"
                )  # fmt: skip
                parts.append(f"{device}/{name}: active {slot.active_model}, {shadow}")
            windows = hub.store.telemetry_windows(device, since=now - 120, until=None, limit=100_000)
            last = max((w.end for w in windows), default=None)
            totals = hub.store.telemetry_totals([device], since=now - 120, until=now + 60)
            shadowed = {t.shadow_version: t.shadow_samples for t in totals if t.shadow_version}
            ago = f"{now - last:.1f} s ago" if last is not None else "never"
            parts.append(f"{device} telemetry (2 min): {len(windows)} windows, last ended {ago}, shadow {shadowed}")
        return "; ".join(parts)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for watcher in (self._watch, self._reports):
            if watcher is not None:
                watcher.close()
        if self.sim is not None:
            self.sim.stop()
        for agent in self.agents:
            agent.stop()
        for server in self.servers:
            server.stop()
        for serving in self.servings.values():
            if isinstance(serving, HeadlessServing):
                serving.close()


@pytest.fixture(name="fleet")
def fleet_fixture(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    hub = start_hub(tmp_path / "hub", broker.url, topic_prefix, **HUB_OVERRIDES)
    f = Fleet(hub, tmp_path, broker)
    try:
        yield f
    finally:
        f.close()
        hub.stop()

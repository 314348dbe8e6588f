"""Agent test fixtures: sample models built once, a hub stand-in on the broker, agents in-process."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.headless import HeadlessServing
from agent.runtime import Agent
from agent.settings import AgentSettings
from models.descriptor import ModelDescriptor
from models.samples import build_classifier, build_detector, classifier_descriptor, detector_descriptor
from models.validate import validate
from tests.support.agents import AgentProc, agent_command, agent_env
from tests.support.broker import Broker, free_port
from tests.support.hubside import HubSide

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sample:
    """A model file and its validated description."""

    path: Path
    descriptor: ModelDescriptor


def _build(out: Path, seed: int, version: str) -> Sample:
    path = out / f"classifier-{version}.onnx"
    path.write_bytes(build_classifier(num_classes=10, seed=seed).SerializeToString())
    desc = classifier_descriptor(num_classes=10, height=64, width=64, name="cls").model_copy(
        update={"version": version}
    )
    return Sample(path, validate(path, desc).descriptor)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    """v1 and v2 of a small classifier, and v3 whose weights fail the golden check recorded for them."""
    out = tmp_path_factory.mktemp("samples")
    v1 = _build(out, 0, "1.0.0")
    v2 = _build(out, 1, "2.0.0")
    bad = _build(out, 2, "3.0.0")
    # v3's file with v1's golden record: loads, then fails the golden check
    bad_desc = bad.descriptor.model_copy(update={"golden": v1.descriptor.golden})
    return {"v1": v1, "v2": v2, "bad": Sample(bad.path, bad_desc)}


@pytest.fixture(scope="session")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """A small detector named `det` (64x64 input), with its golden record."""
    path = tmp_path_factory.mktemp("det") / "det.onnx"
    path.write_bytes(build_detector("yolov8", size=(64, 64)).SerializeToString())
    desc = detector_descriptor("yolov8", size=(64, 64), name="det").model_copy(update={"version": "1.0.0"})
    return Sample(path, validate(path, desc).descriptor)


def fast_settings(data_dir: Path, **groups: dict[str, Any]) -> AgentSettings:
    """Settings with short intervals for tests (telemetry effectively off unless asked for)."""
    base: dict[str, dict[str, Any]] = {
        "link": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "keepalive_s": 5, "publish_timeout_s": 2},
        "download": {"rewant_after_s": 1.0, "sync_every": 1},
        "telemetry": {"interval_s": 3600},
        "activation": {"warmup_runs": 1, "report_interval_s": 0.05},
    }
    for name, values in groups.items():
        base.setdefault(name, {}).update(values)
    return AgentSettings.model_validate({"data_dir": data_dir, **base})


@pytest.fixture
def persistent_broker(mosquitto_binary: str) -> Iterator[Broker]:
    """A broker of this test's own whose sessions survive a restart.

    Mosquitto started as root drops to its own user, which cannot write into pytest's 0700 temporary
    directories; its persistence file then is never saved and sessions vanish with a restart. This
    broker's directory is world-writable so the session store works whoever runs the tests.
    """
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-agent-broker-"))
    workdir.chmod(0o777)
    b = Broker(mosquitto_binary, workdir, free_port())
    b.start()
    yield b
    b.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hub(broker: Broker, topic_prefix: str) -> Iterator[HubSide]:
    h = HubSide(broker.host, broker.port, topic_prefix)
    yield h
    h.close()


AgentFactory = Callable[..., tuple[Agent, HeadlessServing]]


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[AgentFactory]:
    """Start in-process agents; every one is stopped at teardown."""
    started: list[Agent] = []
    servings: list[HeadlessServing] = []

    def make(
        hub: HubSide,
        device_id: str,
        broker_url: str,
        *,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        **groups: Any,
    ) -> tuple[Agent, HeadlessServing]:
        settings = fast_settings(data_dir or tmp_path / device_id, **groups)
        serving = HeadlessServing(seed=1)
        agent = Agent(hub.bundle(device_id, broker_url), settings, serving, clock=clock)
        agent.start()
        started.append(agent)
        servings.append(serving)
        return agent, serving

    yield make
    for agent in started:
        agent.stop()
    for serving in servings:
        serving.close()


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Start headless agent subprocesses from a bundle (kill tests); every one is killed at teardown."""
    procs: list[AgentProc] = []

    def spawn(bundle_path: Path, data_dir: Path, **env_extra: str) -> AgentProc:
        env = agent_env(
            EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S="1",
            EDGEFLEET_AGENT_DOWNLOAD_SYNC_EVERY="1",  # each verified chunk is durable when counted
            EDGEFLEET_API_PORT="0",  # the inference API on a free port: several agents per test
            **env_extra,
        )
        args = agent_command(bundle_path, data_dir, "--headless")
        p = AgentProc(args, env, tmp_path / f"agent-{len(procs)}.log")
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.kill()


def wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)

"""Agent test fixtures: sample models built once, a hub stand-in on the broker, agents in-process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
from models.samples import build_classifier, classifier_descriptor
from models.validate import validate
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

    def make(hub: HubSide, device_id: str, broker_url: str, *, data_dir: Path | None = None, **groups: Any):
        settings = fast_settings(data_dir or tmp_path / device_id, **groups)
        serving = HeadlessServing(seed=1)
        agent = Agent(hub.bundle(device_id, broker_url), settings, serving)
        agent.start()
        started.append(agent)
        servings.append(serving)
        return agent, serving

    yield make
    for agent in started:
        agent.stop()
    for serving in servings:
        serving.close()


class AgentProcess:
    """The agent as a real subprocess (`python -m agent run`), for kill tests."""

    def __init__(self, bundle_path: Path, data_dir: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--headless", "--bundle", str(bundle_path),
             "--data-dir", str(data_dir), "--log-level", "info"],
            cwd=REPO, env=env, stdout=self._log_file, stderr=self._log_file,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown, no offline status but the will)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log_file.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agent subprocesses from a bundle; every one is stopped at teardown."""
    procs: list[AgentProcess] = []

    def spawn(bundle_path: Path, data_dir: Path, **env_extra: str) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        env.update(
            {
                "EDGEFLEET_AGENT_LINK_BACKOFF_INITIAL_S": "0.05",
                "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "0.5",
                "EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S": "1",
                "EDGEFLEET_AGENT_DOWNLOAD_SYNC_EVERY": "1",
                "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "3600",
                "EDGEFLEET_AGENT_ACTIVATION_WARMUP_RUNS": "1",
                "EDGEFLEET_AGENT_ACTIVATION_REPORT_INTERVAL_S": "0.05",
                "EDGEFLEET_API_PORT": "0",  # the inference API on a free port: several agents per test
                "PYTHONPATH": str(REPO),
            }
        )
        env.update(env_extra)
        p = AgentProcess(bundle_path, data_dir, env, tmp_path / f"agent-{len(procs)}.log")
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.proc.poll() is None:
            p.kill()


def wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)

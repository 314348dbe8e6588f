"""End-to-end fixtures: the real hub (tests.support.hub) and agent subprocesses with their inference API."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agents import AgentProc
from tests.support.hub import running_hub

__all__ = ["AgentProc", "running_hub", "spawn_agent"]

REPO = Path(__file__).resolve().parents[2]

FAST_AGENT_ENV = {
    "EDGEFLEET_AGENT_LINK_BACKOFF_INITIAL_S": "0.05",
    "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "0.5",
    "EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S": "1",
    "EDGEFLEET_AGENT_ACTIVATION_WARMUP_RUNS": "1",
    "EDGEFLEET_AGENT_ACTIVATION_REPORT_INTERVAL_S": "0.05",
    "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "0.5",
}


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Start `python -m agent run --bundle B --api-port P` processes; all are stopped at teardown."""
    procs: list[AgentProc] = []

    def spawn(bundle: Path, port: int, *extra: str) -> AgentProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_AGENT_", "EDGEFLEET_API_"))}
        env.update(FAST_AGENT_ENV)
        env["PYTHONPATH"] = str(REPO)
        n = len(procs)
        args = [sys.executable, "-m", "agent", "run", "--bundle", str(bundle), "--data-dir", str(tmp_path / f"a{n}")]
        args += ["--api-port", str(port), *extra]
        p = AgentProc(args, env, tmp_path / f"agent-{n}.log", port)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.stop()

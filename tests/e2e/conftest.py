"""End-to-end fixtures: the real hub (tests.support.hub) and agent subprocesses with their inference API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agents import AGENT_ENV, AgentProc, agent_command, agent_env
from tests.support.hub import running_hub

__all__ = ["AgentProc", "running_hub", "spawn_agent"]


FAST_AGENT_ENV = AGENT_ENV | {
    "EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S": "1",
    "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "0.5",
}


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Start `python -m agent run --bundle B --api-port P` processes; all are stopped at teardown."""
    procs: list[AgentProc] = []

    def spawn(bundle: Path, port: int, *extra: str) -> AgentProc:
        n = len(procs)
        args = agent_command(bundle, tmp_path / f"a{n}", "--api-port", str(port), *extra)
        p = AgentProc(args, agent_env(**FAST_AGENT_ENV), tmp_path / f"agent-{n}.log", port)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.stop()

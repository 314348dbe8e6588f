"""The simulator: N `SimAgent`s on one `Transport`, sharing one blob directory, with a fleet-wide snapshot."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fleet.messages import device_phase
from sim.actions import AgentStats
from sim.agent import SimAgent
from sim.config import AgentIdentity, SimConfig
from sim.profile import Profiles
from sim.store import SharedBlobs
from sim.transport import Transport

SHM = Path("/dev/shm")  # tmpfs for the per-device state files


@dataclass(frozen=True)
class Snapshot:
    """Where the simulated fleet stands (read without locks: counts may be a few messages stale)."""

    agents: int
    connected: int
    phases: dict[str, int]
    active_versions: dict[str, int]
    errors: dict[str, int]
    stats: dict[str, int]
    transport: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "agents": self.agents,
            "connected": self.connected,
            "phases": self.phases,
            "active_versions": self.active_versions,
            "errors": self.errors,
            "stats": self.stats,
            "transport": self.transport,
        }


class Simulator:
    """Many simulated agents in this process.

    Args:
        identities: one per agent (from bundles, hub enrolment or `direct_identities`).
        config: behaviour and faults shared by all agents.
        profiles: latency/error distributions per model version.
        cache_dir: the shared blob directory (and each agent's accepted-state file under `devices/`, unless
            /dev/shm is writable: then they live there until `stop`).
        threads: transport threads.
        connect_rate: new MQTT connections per second.
        tick_s: timer resolution of every agent, s.
    """

    def __init__(
        self,
        identities: list[AgentIdentity],
        config: SimConfig,
        profiles: Profiles,
        cache_dir: Path,
        *,
        threads: int = 2,
        connect_rate: float = 500.0,
        tick_s: float = 0.25,
    ) -> None:
        seeder = random.Random(config.seed)
        now = time.time()
        # Each agent fsyncs its accepted desired state as the agent does; here thousands of devices share one
        # disk instead of one each, so the files go to memory (tmpfs) where there is one.
        self._state_tmp = (
            tempfile.TemporaryDirectory(prefix="edgefleet-sim-", dir=SHM) if os.access(SHM, os.W_OK) else None
        )
        settings = config.agent_settings(Path(self._state_tmp.name) if self._state_tmp else cache_dir / "devices")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = SharedBlobs(
            cache_dir, sync_every=settings.download.sync_every, sync_interval_s=settings.download.sync_interval_s
        )
        rngs = [random.Random(seeder.getrandbits(64)) for _ in identities]
        self.agents = [
            SimAgent(identity, config, self.blobs, profiles, rng, settings=settings, now=now)
            for identity, rng in zip(identities, rngs, strict=True)
        ]
        self.transport = Transport(
            threads=threads, tick_s=tick_s, connect_rate=connect_rate, keepalive_s=config.keepalive_s
        )
        for agent in self.agents:
            self.transport.add(agent, agent.identity)

    def start(self) -> None:
        """Connect every agent (at the configured rate) and start their timers."""
        self.transport.start()

    def stop(self) -> None:
        """Publish `offline` for each agent, disconnect cleanly and persist partial downloads."""
        self.transport.stop()
        for agent in self.agents:
            agent.reconciler.close()
        self.blobs.close()
        if self._state_tmp is not None:
            self._state_tmp.cleanup()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def agent(self, device_id: str) -> SimAgent:
        """The agent with `device_id` (KeyError if none)."""
        for agent in self.agents:
            if agent.device_id == device_id:
                return agent
        raise KeyError(device_id)

    def snapshot(self) -> Snapshot:
        """Counts over the fleet: connected, devices by phase, models by active `name:version`, errors, counters."""
        totals: Counter[str] = Counter()
        for agent in self.agents:
            for f in fields(AgentStats):
                totals[f.name] += getattr(agent.stats, f.name)
        ts = self.transport.stats
        return Snapshot(
            agents=len(self.agents),
            connected=sum(1 for a in self.agents if a.connected),
            phases=dict(Counter(device_phase(m.phase for m in a.models.values()).value for a in self.agents)),
            active_versions=dict(
                Counter(f"{m.name}:{m.active.version}" for a in self.agents for m in a.models.values() if m.active)
            ),
            errors=dict(
                Counter(
                    e.code
                    for a in self.agents
                    for e in (a.error, *(m.error for m in a.models.values()))
                    if e is not None
                )
            ),
            stats=dict(totals),
            transport={
                "connects": ts.connects,
                "connect_failures": ts.connect_failures,
                "disconnects": ts.disconnects,
                "callback_errors": ts.callback_errors,
                "messages_in": ts.messages_in,
                "messages_out": ts.messages_out,
                "bytes_in": ts.bytes_in,
                "cache_chunks_written": self.blobs.chunks_written,
                "cache_chunks_hashed": self.blobs.chunks_hashed,
            },
        )

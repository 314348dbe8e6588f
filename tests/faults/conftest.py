"""Fault fixtures: a real hub with its own (ACL'd) Mosquitto and two model versions, agent processes from
enrolment bundles (optionally with a file-size limit standing for a full disk), a TCP proxy that can
partition an agent from the broker, and network-namespace hosts."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet.bundle import DeviceBundle
from models.descriptor import ModelDescriptor
from tests.faults.proxy import TcpProxy
from tests.support.agents import AgentProc, agent_command, agent_env
from tests.support.hub import RunningHub, running_hub, start_hub
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for
from tests.support.netns import NetHost, NetLab
from tests.support.wire import flat_report

__all__ = ["running_hub"]

CHUNK = 16 * 1024
FAULT_AGENT_ENV = {  # besides tests.support.agents.AGENT_ENV: a resume bitmap after every chunk, an API port
    "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "0.3",
    "EDGEFLEET_AGENT_DOWNLOAD_SYNC_EVERY": "1",
    "EDGEFLEET_API_PORT": "0",
}
# runs the agent with RLIMIT_FSIZE set and SIGXFSZ ignored: a write past the limit fails with EFBIG, as a
# full disk fails it with ENOSPC (no privileges or loop devices needed)
_LIMITED = (
    "import resource, runpy, signal, sys; limit = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)); "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "sys.argv[0] = 'agent'; runpy.run_module('agent', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="session")
def fault_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelDescriptor]]:
    """Two versions of a small classifier (about 1.4 MB each: some 85 chunks of 16 KiB)."""
    out = tmp_path_factory.mktemp("fault-models")
    return classifier_versions(out)


@dataclass
class FaultWorld:
    """A hub on its own broker, models v1 and v2 pushed, and the agents started in a test."""

    hub: RunningHub
    tmp: Path
    agents: list[AgentProc] = field(default_factory=list)

    def enrol(self, device_id: str, broker_url: str | None = None) -> Path:
        """Enrol a device (label id=<device>); its bundle file, pointing at `broker_url` when given."""
        with self.hub.client() as c:
            r = c.post("/api/v1/devices", json={"id": device_id, "labels": {"id": device_id}})
            assert r.status_code == 201, r.text
        bundle = DeviceBundle.model_validate(r.json()["bundle"])
        if broker_url is not None:
            bundle = bundle.model_copy(update={"broker_url": broker_url})
        path = self.tmp / f"{device_id}.bundle.json"
        bundle.save(path)
        return path

    def spawn(
        self, bundle: Path, data_dir: Path, *, fsize_limit: int | None = None, host: NetHost | None = None, **env: str
    ) -> AgentProc:
        """Start an agent process (optionally with a file-size limit: the disk-full stand-in; or on `host`)."""
        args = agent_command(bundle, data_dir)
        if fsize_limit is not None:  # the same arguments, through the RLIMIT_FSIZE runner
            args = [sys.executable, "-c", _LIMITED, str(fsize_limit), *args[3:]]
        if host is not None:
            args = [*host.prefix, *args]
        p = AgentProc(args, agent_env(**(FAULT_AGENT_ENV | env)), self.tmp / f"agent-{len(self.agents)}.log")
        self.agents.append(p)
        return p

    def deploy(self, device_id: str, version: str) -> int:
        with self.hub.client() as c:
            r = c.post("/api/v1/deployments", json={"model": "cls", "version": version, "selector": f"id={device_id}"})
            assert r.status_code == 201, r.text
            return int(r.json()["devices"][device_id])

    def reported(self, device_id: str) -> dict[str, Any]:
        d = self.hub.hub.store.get_device(device_id)
        return flat_report(d.reported) if d else {}

    def stored_seqs(self, device_id: str) -> list[int]:
        """The seq of every telemetry window of `device_id` the hub has stored, in order."""
        self.hub.hub.store.flush()
        with self.hub.client() as c:
            r = c.get(f"/api/v1/telemetry/devices/{device_id}", params={"raw": True, "limit": 10_000})
        return sorted(win["seq"] for win in r.json()["windows"])

    @staticmethod
    def spooled(data_dir: Path) -> int:
        """Telemetry windows waiting in the spool of the agent on `data_dir`."""
        with sqlite3.connect(f"file:{data_dir / 'telemetry.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM windows").fetchone()[0])

    def wait_active(self, device_id: str, version: str, timeout: float = 60) -> dict[str, Any]:
        def active() -> dict[str, Any] | None:
            r = self.reported(device_id)
            ok = r.get("phase") == "active" and (r.get("active") or {}).get("version") == version
            return r if ok else None

        return wait_for(active, timeout=timeout)


@contextmanager
def _world(tmp_path: Path, topic_prefix: str, models: dict[str, tuple[Path, ModelDescriptor]],
           net_host: NetHost | None = None) -> Iterator[FaultWorld]:  # fmt: skip
    """A hub with its own Mosquitto (on `net_host`'s link when given), both model versions pushed."""
    broker: dict[str, Any] = {"restart_backoff_s": 0.05}
    if net_host is not None:
        broker["local_host"] = net_host.host_ip
    h = start_hub(tmp_path / "hub", None, topic_prefix, transfer={"chunk_size": CHUNK}, broker=broker)
    w = FaultWorld(h, tmp_path)
    try:
        for path, desc in models.values():
            assert h.push_model(path, desc.to_json()).status_code == 201
        if net_host is not None:
            lb = h.hub.local_broker
            assert lb is not None and net_host.probe(lb.host, lb.port), "the agent's host cannot reach the broker"
        yield w
    finally:
        for a in w.agents:
            a.stop()
        h.stop()


@pytest.fixture
def fault_world(
    tmp_path: Path, topic_prefix: str, mosquitto_binary: str, fault_models: dict[str, tuple[Path, ModelDescriptor]]
) -> Iterator[FaultWorld]:
    with _world(tmp_path, topic_prefix, fault_models) as w:
        yield w


@pytest.fixture
def net_host(netlab: NetLab) -> NetHost:
    """A network host of its own for an agent (tests/support/netns.py; skipped, with the reason, only where the
    kernel refuses namespaces, never under CI=true), removed after the test, failed or not."""
    return netlab.host("agent")


@pytest.fixture
def netns_world(
    net_host: NetHost,
    tmp_path: Path,
    topic_prefix: str,
    mosquitto_binary: str,
    fault_models: dict[str, tuple[Path, ModelDescriptor]],
) -> Iterator[FaultWorld]:
    """A hub whose Mosquitto listens on the hub's end of `net_host`'s link (bundles carry that address)."""
    with _world(tmp_path, topic_prefix, fault_models, net_host) as w:
        yield w


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str, int], TcpProxy]]:
    """TCP proxies in front of the broker; all closed at teardown."""
    made: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        p = TcpProxy(host, port)
        p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()

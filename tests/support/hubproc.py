"""`edgefleet hub serve` as a real process on a fixed port (optionally on a network-namespace host), killable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.broker import free_port
from tests.support.mqtt import wait_for
from tests.support.netns import NetHost

ROOT = Path(__file__).resolve().parents[2]


class HubProcess:
    """One `hub serve` process.

    Args:
        data_dir: an initialised hub data directory.
        broker_url: the broker it uses (its address as seen from `host`).
        prefix: topic prefix.
        log: where its output goes (appended across restarts).
        host: the network-namespace host it runs on (None: this host, API on loopback).
        env: more `EDGEFLEET_HUB_*` settings.
    """

    def __init__(
        self,
        data_dir: Path,
        broker_url: str,
        prefix: str,
        log: Path,
        *,
        host: NetHost | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir, self.broker_url, self.prefix, self.log = data_dir, broker_url, prefix, log
        self.host = host
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://{host.ip if host else '127.0.0.1'}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "EDGEFLEET_HUB_TOPIC_PREFIX": self.prefix,
                "EDGEFLEET_HUB_ROLLOUTS_TICK_INTERVAL_S": "0.2",
                "EDGEFLEET_HUB_ROLLOUTS_TELEMETRY_GRACE_S": "0.4",
                "EDGEFLEET_HUB_TRANSFER_ROUND_INTERVAL_S": "0.01",
                **self.extra_env,
            }
        )
        cmd = [sys.executable, "-m", "edgefleet_cli", "hub", "serve", "--data-dir", str(self.data_dir),
               "--broker-url", self.broker_url, "--host", self.host.ip if self.host else "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        with self.log.open("ab") as out:
            if self.host is None:
                self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
            else:
                self.proc = self.host.popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        wait_for(self.healthy, timeout=60, interval=0.05)

    def healthy(self) -> bool:
        """Serving and connected to the broker (raises if the process exited)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"hub exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return bool(httpx.get(f"{self.url}/healthz", timeout=1).json()["mqtt_connected"])
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

"""`edgefleet hub serve` as a real process, with the local Mosquitto it supervises, for reliability tests.

hub = HubProc(tmp_path / "hub", mosquitto_binary)   # runs `hub init`
hub.start()                                         # `hub serve`; waits for the API
with hub.client() as c: ...
hub.enrol("cam-1")                                  # a device bundle (its broker account)
assert hub.stop() == 0                              # SIGTERM: must exit cleanly
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from fleet.bundle import DeviceBundle

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "edgefleet_cli.py")]


class HubProc:
    """A hub in a process of its own on a data dir of its own. `env` adds EDGEFLEET_HUB_* settings."""

    def __init__(self, data_dir: Path, mosquitto_binary: str, *, init: bool = True, **env: str) -> None:
        self.data_dir = data_dir
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
            "EDGEFLEET_HUB_DATA_DIR": str(data_dir), "EDGEFLEET_HUB_BROKER_LOCAL_PORT": "0",
            "EDGEFLEET_HUB_BROKER_MOSQUITTO_BINARY": mosquitto_binary, "PYTHONPATH": str(ROOT), **env,
        }  # fmt: skip
        self.admin_token = ""
        if init:
            done = subprocess.run([*CLI, "hub", "init", "--json"], env=self.env, capture_output=True, text=True,
                                  timeout=120, check=False)  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"hub init failed: {done.stderr}")
            self.admin_token = json.loads(done.stdout)["admin_token"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.broker_url = ""
        self.log = data_dir.parent / f"{data_dir.name}-serve{'' if init else '-2'}.log"
        self._starts = 0

    def start(self, timeout: float = 90) -> HubProc:
        """Start `hub serve` and wait until its API answers."""
        self._starts += 1
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*CLI, "hub", "serve", "--port", "0"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()[offset:]
            m = re.search(r"API (http://\S+) .* broker (mqtts?://\S+)", text)
            if m:
                self.url, self.broker_url = m.group(1), m.group(2)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub serve did not come up (exit {self.proc.poll()}):\n{text[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status (the hub must stop cleanly: 0). SIGKILL after `timeout`."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return int(self.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def broker(self) -> tuple[str, int]:
        u = urlparse(self.broker_url)
        return u.hostname or "127.0.0.1", int(u.port or 1883)

    def client(self, token: str | None = "admin") -> httpx.Client:
        """An HTTP client on the API; `token="admin"` uses the admin token, None sends none."""
        token = self.admin_token if token == "admin" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def enrol(self, device_id: str, **labels: str) -> DeviceBundle:
        with self.client() as c:
            r = c.post("/api/v1/devices", json={"id": device_id, "labels": labels})
            assert r.status_code == 201, r.text
        return DeviceBundle.model_validate(r.json()["bundle"])

    def get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params=params)
            assert r.status_code == 200, (path, r.status_code, r.text)
            return r.json()


AGENT_ENV = {  # fast reconnects and re-wants, no telemetry unless a test asks, one warm-up run
    "EDGEFLEET_AGENT_LINK_BACKOFF_INITIAL_S": "0.05",
    "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "0.5",
    "EDGEFLEET_AGENT_LINK_KEEPALIVE_S": "5",
    "EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S": "0.5",
    "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "3600",
    "EDGEFLEET_AGENT_ACTIVATION_WARMUP_RUNS": "1",
}


def agent_command(bundle: Path, data_dir: Path, *, prefix: list[str] | None = None, **env: str) -> tuple[
    list[str], dict[str, str]
]:  # fmt: skip
    """Argv and environment of a headless agent process (`prefix`: e.g. `ip netns exec NS`)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    full_env |= AGENT_ENV | env | {"PYTHONPATH": str(ROOT)}
    run = ["run", "--bundle", str(bundle), "--data-dir", str(data_dir), "--headless", "--log-level", "info"]
    return [*(prefix or []), sys.executable, "-m", "agent", *run], full_env

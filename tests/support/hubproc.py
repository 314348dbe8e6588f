"""`edgefleet hub serve` as a real process on a fixed port (optionally on a network-namespace host), killable.

h = HubProcess(data_dir, broker_url, prefix, log)   # an initialised data dir, an external broker
h = HubProcess(data_dir, None, mosquitto_binary=b)  # or the hub's own supervised Mosquitto
h.init()                                            # `hub init` (the admin token: h.admin_token)
h.start()                                           # waits until it serves and its MQTT link is up
h.enrol("cam-1"); h.get("/api/v1/ingest")           # its API, as admin
assert h.stop() == 0                                # SIGTERM: it must stop cleanly; or h.kill()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from fleet.bundle import DeviceBundle
from fleet.ids import DEFAULT_PREFIX
from tests.support.broker import free_port
from tests.support.mqtt import wait_for
from tests.support.netns import NetHost
from tests.support.procs import stop

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edgefleet_cli"]


class HubProcess:
    """One `hub serve` process.

    Args:
        data_dir: the hub's data directory (initialised, or call `init()`).
        broker_url: the broker it uses (its address as seen from `host`); None: the hub's own Mosquitto.
        prefix: topic prefix.
        log: where its output goes (appended across restarts; default beside the data dir).
        host: the network-namespace host it runs on (None: this host, API on loopback).
        env: more `EDGEFLEET_HUB_*` settings.
        mosquitto_binary: the Mosquitto the hub starts when `broker_url` is None.
        own_session: start it in a process group of its own, as a shell starts a foreground job (a signal to
            the group, like Ctrl-C in its terminal, reaches only it and its children).
    """

    def __init__(
        self,
        data_dir: Path,
        broker_url: str | None,
        prefix: str = DEFAULT_PREFIX,
        log: Path | None = None,
        *,
        host: NetHost | None = None,
        env: dict[str, str] | None = None,
        mosquitto_binary: str | None = None,
        own_session: bool = False,
    ) -> None:
        self.data_dir, self.broker_url, self.prefix = data_dir, broker_url, prefix
        self.log = log or data_dir.parent / f"{data_dir.name}-serve.log"
        self.host, self.own_session = host, own_session
        self.extra_env = env or {}
        if broker_url is None:  # the hub's own broker, on a free port
            self.extra_env = {"EDGEFLEET_HUB_BROKER_LOCAL_PORT": "0", **self.extra_env}
            if mosquitto_binary:
                self.extra_env["EDGEFLEET_HUB_BROKER_MOSQUITTO_BINARY"] = mosquitto_binary
        self.port = free_port()
        self.url = f"http://{host.ip if host else '127.0.0.1'}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_token = ""

    @property
    def env(self) -> dict[str, str]:
        """The environment of its processes (no EDGEFLEET_* of the test run leaks in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "EDGEFLEET_HUB_TOPIC_PREFIX": self.prefix,
                "EDGEFLEET_HUB_ROLLOUTS_TICK_INTERVAL_S": "0.2",
                "EDGEFLEET_HUB_ROLLOUTS_TELEMETRY_GRACE_S": "0.4",
                "EDGEFLEET_HUB_TRANSFER_ROUND_INTERVAL_S": "0.01",
                "EDGEFLEET_HUB_TRANSFER_JOIN_GAP_S": "0.05",
                **self.extra_env,
            }
        )
        return env

    def init(self) -> str:
        """`hub init` on the data dir; returns (and keeps) the first admin token."""
        done = subprocess.run([*CLI, "hub", "init", "--json", "--data-dir", str(self.data_dir)], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"hub init failed: {done.stderr}")
        self.admin_token = str(json.loads(done.stdout)["admin_token"])
        return self.admin_token

    def command(self) -> list[str]:
        """The `hub serve` command line of this hub."""
        cmd = [*CLI, "hub", "serve", "--data-dir", str(self.data_dir), "--host",
               self.host.ip if self.host else "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        return cmd if self.broker_url is None else [*cmd, "--broker-url", self.broker_url]

    def start(self) -> None:
        env, cmd = self.env, self.command()
        with self.log.open("ab") as out:
            if self.host is None:
                self.proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=self.own_session
                )
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

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit status (a clean stop is 0). SIGKILL, and -9, after `timeout`."""
        return 0 if self.proc is None else stop(self.proc, timeout=timeout)[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- its API, as admin ---------------------------------------------------------------------------
    def client(self, token: str | None = "admin") -> httpx.Client:
        """An HTTP client on the API; `token="admin"` uses the admin token, None sends none."""
        token = self.admin_token if token == "admin" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params=params)
            assert r.status_code == 200, (path, r.status_code, r.text)
            return r.json()

    def enrol(self, device_id: str, **labels: str) -> DeviceBundle:
        """Enrol a device; its bundle (broker account and the broker's URL)."""
        with self.client() as c:
            r = c.post("/api/v1/devices", json={"id": device_id, "labels": labels})
            assert r.status_code == 201, r.text
        return DeviceBundle.model_validate(r.json()["bundle"])

    @property
    def broker(self) -> tuple[str, int]:
        """The devices' broker address (host, port), as the hub reports it."""
        u = urlparse(self.get("/healthz")["broker_url"])
        return u.hostname or "127.0.0.1", int(u.port or 1883)

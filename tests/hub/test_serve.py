"""`edgefleet hub init` + `edgefleet hub serve` as real processes: local Mosquitto, API, clean SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def test_serve_runs_a_local_broker_and_stops_it_on_sigterm(tmp_path: Path, mosquitto_binary: str) -> None:
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "hub"), "EDGEFLEET_HUB_BROKER_LOCAL_PORT": "0",
           "EDGEFLEET_HUB_BROKER_MOSQUITTO_BINARY": mosquitto_binary, "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = [sys.executable, str(ROOT / "edgefleet_cli.py")]
    init = subprocess.run(
        [*cli, "hub", "init", "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["admin_token"]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([*cli, "hub", "serve", "--port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()
            m = re.search(r"API (http://\S+) ", Path(log.name).read_text())
            url = m.group(1) if m else None
            time.sleep(0.05)
        assert url, Path(log.name).read_text()
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["broker_url"].startswith("mqtt://127.0.0.1:")
        r = httpx.post(f"{url}/api/v1/devices", json={"id": "cam-1"}, headers={"Authorization": f"Bearer {token}"})
        assert r.json()["bundle"]["broker_url"] == health["broker_url"]
        children = [c for c in psutil.Process(proc.pid).children() if "mosquitto" in c.name()]
        assert len(children) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, Path(log.name).read_text()
        assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_a_killed_hub_takes_its_broker_with_it(tmp_path: Path, mosquitto_binary: str) -> None:
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "hub"), "EDGEFLEET_HUB_BROKER_LOCAL_PORT": "0",
           "EDGEFLEET_HUB_BROKER_MOSQUITTO_BINARY": mosquitto_binary, "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = [sys.executable, str(ROOT / "edgefleet_cli.py")]
    subprocess.run([*cli, "hub", "init", "--json"], env=env, capture_output=True, timeout=60, check=True)
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([*cli, "hub", "serve", "--port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()
            children = [c for c in psutil.Process(proc.pid).children() if "mosquitto" in c.name()]
            time.sleep(0.05)
        assert children, Path(log.name).read_text()
        proc.kill()  # SIGKILL: no clean shutdown runs
        proc.wait(10)
        gone, _alive = psutil.wait_procs(children, timeout=10)
        assert gone == children, "the hub's Mosquitto outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

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
from typing import Any

import httpx
import psutil
import psycopg

from fleet.codec import encode
from fleet.messages import TelemetryWindow
from fleet.topics import Topics
from tests.support.broker import Broker, free_port
from tests.support.mqtt import TestClient, wait_for
from tests.support.postgres import PostgresServer

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


def test_serve_on_postgresql_keeps_its_store_in_the_database(
    tmp_path: Path, postgres: PostgresServer, broker: Broker, topic_prefix: str
) -> None:
    """`hub init/serve --database-url postgresql://…`: every write, telemetry included, lands in PostgreSQL."""
    url = postgres.create_database()
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "hub"), "EDGEFLEET_HUB_BROKER_URL": broker.url,
           "EDGEFLEET_HUB_TOPIC_PREFIX": topic_prefix, "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = [sys.executable, str(ROOT / "edgefleet_cli.py")]
    init = subprocess.run([*cli, "hub", "init", "--json", "--database-url", url], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["admin_token"]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([*cli, "hub", "serve", "--port", "0", "--database-url", url], env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    dev = TestClient(broker.host, broker.port)
    try:
        api_url = wait_for(lambda: re.search(r"API (http://\S+) ", Path(log.name).read_text()), timeout=60).group(1)
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{api_url}/api/v1/devices", json={"id": "cam-1"}, headers=auth).status_code == 201
        start = time.time() - 60
        for seq in range(3):
            w = TelemetryWindow(device_id="cam-1", seq=seq, start=start + seq, end=start + seq + 1, requests=5)
            dev.publish(Topics(topic_prefix).telemetry("cam-1"), encode(w))

        def stored() -> Any:
            body = httpx.get(f"{api_url}/api/v1/telemetry/devices/cam-1", headers=auth).json()
            return body["seq"]["count"] == 3 and body

        body = wait_for(stored, timeout=30)
        assert body["summary"]["requests"] == 15
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry WHERE device_id = 'cam-1'").fetchone() == (3,)
            assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)
        assert not (tmp_path / "hub" / "hub.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, Path(log.name).read_text()
    finally:
        dev.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _serve(cli: list[str], env: dict[str, str], log_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """`hub serve` in a process group of its own (signals to the group reach only it and its children)."""
    with log_path.open("w") as log:  # the child writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [*cli, "hub", "serve", "--port", "0", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        m = re.search(r"API (http://\S+) ", log_path.read_text())
        if m:
            return proc, m.group(1)
        time.sleep(0.05)
    raise AssertionError(log_path.read_text())


def test_sigterm_with_a_dashboard_open_and_ctrl_c_to_the_group_stop_cleanly(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    broker_port = free_port()
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(tmp_path / "hub"),
           "EDGEFLEET_HUB_BROKER_MOSQUITTO_BINARY": mosquitto_binary, "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = [sys.executable, str(ROOT / "edgefleet_cli.py")]
    init = subprocess.run(
        [*cli, "hub", "init", "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    token = json.loads(init.stdout)["admin_token"]
    dirty = ("Traceback", "CancelledError", "timeout graceful shutdown exceeded", "restarting", "a new one")

    proc, url = _serve(cli, env, tmp_path / "term.log", "--broker-port", str(broker_port))
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).json()["broker_url"] == f"mqtt://127.0.0.1:{broker_port}"
        with httpx.Client(base_url=url, timeout=30) as browser:
            assert browser.post("/login", data={"token": token, "next": "/"}).status_code == 303
            with browser.stream("GET", "/live", headers={"Accept": "text/event-stream"}) as live:
                lines = live.iter_lines()
                assert next(lines).startswith("retry: ")  # the stream is open, as in a browser tab
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, (tmp_path / "term.log").read_text()
                assert list(lines) is not None  # the server ended the stream; it did not hang on it
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "term.log").read_text()
    assert not [d for d in dirty if d in text], text
    assert took < 5, f"{took:.1f} s: the live stream held the shutdown up"  # uvicorn's drain timeout is 5 s

    proc, url = _serve(cli, env, tmp_path / "int.log", "--broker-port", str(broker_port))
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
        children = [c for c in psutil.Process(proc.pid).children() if "mosquitto" in c.name()]
        assert len(children) == 1
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the hub's terminal: the whole foreground process group
        assert proc.wait(30) == 0, (tmp_path / "int.log").read_text()
        assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "int.log").read_text()
    assert not [d for d in dirty if d in text], text  # no broker or writer restarted while shutting down

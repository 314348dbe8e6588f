"""The operator's CLI against a real hub: tables at 80 columns keep refs whole, errors name the setting to
change, deploys are summarised and refused inside rollouts, abort/rollback ask first, --watch exits by outcome.
"""

from __future__ import annotations

import http.server
import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet_cli import app
from fleet.messages import AppliedModel, DeviceStatus, Phase
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.wire import one_model_report

ROOT = Path(__file__).resolve().parents[2]
LONG = "mobilenet-v3-large-imagenet-int8"  # a model name as long as real ones get
REF = f"{LONG}:1.10.0-rc.2"
runner = CliRunner()


@pytest.fixture(scope="module")
def hub(broker: Broker, samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """12 devices on REF (desired and running), a rollout of another version over 4 of them."""
    h = start_hub(tmp_path_factory.mktemp("cli"), broker.url, f"test/{uuid.uuid4().hex[:12]}/fleet/v1",
                  rollouts={"tick_interval_s": 600})  # fmt: skip
    try:
        onnx, yaml = samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml"
        for version in ("1.10.0-rc.2", "1.10.0"):
            assert h.push_model(onnx, yaml, name=LONG, version=version).status_code == 201
        with h.client() as c:
            for i in range(12):
                labels = {"site": "berlin-central-station", "ring": "canary" if i < 4 else "main"}
                assert c.post("/api/v1/devices", json={"id": f"camera-{i:04d}", "labels": labels}).status_code == 201
            r = c.post("/api/v1/deployments", json={"model": LONG, "version": "1.10.0-rc.2", "selector": "site"})
            assert r.status_code == 201, r.text
        sha = h.hub.registry.get(LONG, "1.10.0-rc.2").sha256
        now = time.time()
        for i in range(12):
            dev = f"camera-{i:04d}"
            h.hub.store.enqueue_status(DeviceStatus(device_id=dev, state="online", ts=now), now)
            active = AppliedModel(name=LONG, version="1.10.0-rc.2", sha256=sha)
            rep = one_model_report(dev, seq=1, ts=now, desired_version=1, phase=Phase.ACTIVE, active=active)
            h.hub.store.enqueue_reported(rep, now)
        h.hub.store.flush()
        yield h
    finally:
        h.stop()


def cli(h: RunningHub | None, *args: str, token: bool = True, **env: str) -> tuple[int, str]:
    extra = ([] if h is None else ["--url", h.url]) + (["--token", h.admin_token] if h is not None and token else [])
    res = runner.invoke(app, [*args, *extra], env={"COLUMNS": "80", **env})
    return res.exit_code, res.output


def _start_rollout(h: RunningHub, selector: str = "ring=canary") -> str:
    code, out = cli(h, "rollout", "start", f"{LONG}:1.10.0", "-s", selector, "--waves", "1,100%", "--json")
    assert code == 0, out
    rid = str(json.loads(out)["id"])
    h.hub.rollouts.tick()  # the first wave starts: its device is sent the candidate
    return rid


def test_tables_keep_model_refs_and_versions_whole_at_80_columns(hub: RunningHub) -> None:
    rid = _start_rollout(hub)
    try:
        outputs = {
            "device list": cli(hub, "device", "list"),
            "model list": cli(hub, "model", "list"),
            "rollout list": cli(hub, "rollout", "list"),
            "rollout status": cli(hub, "rollout", "status", rid, "--devices"),
        }
    finally:
        hub.hub.rollouts.command(rid, "abort", actor="test")
    for name, (code, out) in outputs.items():
        assert code == 0, (name, out)
        assert all(len(line) <= 80 for line in out.splitlines()), (name, out)
        assert "…" not in out, (name, out)
    devices = outputs["device list"][1]
    assert devices.count(REF) == 12 and f"wants {LONG}:1.10.0 " in devices  # running everywhere; one wants more
    assert "1.10.0-rc.2" in outputs["model list"][1] and "1.10.0 " in outputs["model list"][1]
    assert f"{LONG}:1.10.0" in outputs["rollout list"][1] and rid in outputs["rollout list"][1]
    status = outputs["rollout status"][1]
    assert f"{LONG}:1.10.0" in status and "wave 1 of 2" in status  # waves counted from 1
    assert "camera-0000" in status


def test_errors_say_which_setting_to_change(hub: RunningHub) -> None:
    env = dict.fromkeys(("EDGEFLEET_TOKEN", "EDGEFLEET_URL"), "")
    code, out = cli(hub, "device", "list", token=False, **env)
    assert code == 1 and "EDGEFLEET_TOKEN" in out and "--token" in out and "Authorization" not in out
    code, out = cli(hub, "deploy", f"{LONG}:9.9.9", "-s", "ring=main")
    assert code == 1 and "has no version 9.9.9" in out and "1.10.0-rc.2" in out  # the versions it has
    code, out = cli(hub, "deploy", "mobilenet-v3-large-imagenet-int:1.10.0", "-s", "ring=main")
    assert code == 1 and f"did you mean {LONG}?" in out
    res = runner.invoke(app, ["device", "list", "--url", f"{hub.url}/api/v1", "--token", hub.admin_token])
    assert res.exit_code == 1 and "takes the hub's address alone" in res.output, res.output
    with _answering(502, b"") as url:  # a proxy with nothing behind it
        res = runner.invoke(app, ["device", "list", "--url", url, "--token", "t"], env={"COLUMNS": "80"})
    assert res.exit_code == 1 and "HTTP 502 Bad Gateway from GET" in res.output and "empty body" in res.output
    assert "/api/v1/devices" in res.output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--max-error-rate", "5"], "--max-error-rate: Input should be less than or equal to 1"),
        (["--min-agreement", "-1"], "--min-agreement: Input should be greater than or equal to 0"),
        (["--shadow", "2"], "--shadow: Input should be less than or equal to 1"),
        (["--waves", "1,50%"], "--waves: Value error, waves: the last wave must be 100%"),
    ],
)
def test_a_refused_rollout_value_is_named_by_its_option(hub: RunningHub, args: list[str], option: str) -> None:
    code, out = cli(hub, "rollout", "start", f"{LONG}:1.10.0", "-s", "ring=main", *args)
    said = " ".join(out.split())
    assert code == 1 and option in said and "body." not in said, out


def test_an_unset_url_names_the_variable() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("something listens on 127.0.0.1:8080, the default hub URL: the hint needs it unreachable")
    res = runner.invoke(app, ["device", "list", "--token", "t"], env={"EDGEFLEET_URL": "", "COLUMNS": "80"})
    assert res.exit_code == 1 and "127.0.0.1:8080" in res.output and "EDGEFLEET_URL" in res.output


class _Fixed(http.server.BaseHTTPRequestHandler):
    status, body = 502, b""

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_a: object) -> None:
        pass


class _answering:  # noqa: N801  (a context manager named for what it does)
    """A real HTTP server on loopback that answers every GET with one status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        handler = type("Handler", (_Fixed,), {"status": status, "body": body})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_deploy_is_summarised_and_refused_inside_a_rollout_unless_forced(hub: RunningHub) -> None:
    code, out = cli(hub, "deploy", f"{LONG}:1.10.0", "-s", "site")
    assert code == 0, out
    assert f"{LONG}:1.10.0 is now the desired model of 12 devices" in out  # the model version, not a counter
    assert "camera-0000, camera-0001" in out and "(5 more: --json lists them all)" in out
    assert len(out.splitlines()) < 6  # a summary, not a row per device
    rid = _start_rollout(hub)
    try:
        code, out = cli(hub, "deploy", f"{LONG}:1.10.0-rc.2", "-s", "site")
        assert code == 1 and "in_rollout" in out and f"{rid} (4)" in out and "--force" in out
        code, out = cli(hub, "deploy", f"{LONG}:1.10.0-rc.2", "-s", "site", "--force")
        assert code == 0 and "desired model of 12 devices" in out
        assert f"warning: 4 devices of them in active rollout {rid}" in out
    finally:
        hub.hub.rollouts.command(rid, "abort", actor="test")


def test_abort_and_rollback_ask_first_saying_how_many_devices(hub: RunningHub) -> None:
    rid = _start_rollout(hub)
    code, out = cli(hub, "rollout", "rollback", rid)  # not a terminal and no --yes: refused, nothing sent
    assert code == 2 and "needs a yes: pass --yes" in out and "for 1 device" in out
    assert hub.hub.rollouts.get(rid).state.value == "running"
    answer, said = _in_terminal(hub, ["rollout", "rollback", rid], "n\n")
    assert answer != 0 and f"Roll back {rid}? The version each device ran before is signed again for 1 device" in said
    assert f"{LONG}:1.10.0-rc.2 to 1 device" in said and "nothing sent" in said
    assert hub.hub.rollouts.get(rid).state.value == "running"
    answer, said = _in_terminal(hub, ["rollout", "abort", rid, "--note", "wrong version"], "y\n")
    assert answer == 0 and f"Abort {rid}? It stops where it stands" in said and "3 devices in later waves" in said
    r = hub.hub.rollouts.get(rid)
    assert r.state.value == "aborted" and r.note == "wrong version"


def _in_terminal(h: RunningHub, args: list[str], typed: str) -> tuple[int, str]:
    """Run the CLI with a real terminal on stdin (a pty), type `typed`, return the exit code and what it said."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "edgefleet_cli.py"), *args, "--url", h.url, "--token", h.admin_token],
        stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    os.close(secondary)
    try:
        os.write(primary, typed.encode())
        said, _ = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, said.decode()


def test_watch_and_wait_exit_by_outcome(hub: RunningHub) -> None:
    rid = _start_rollout(hub)
    hub.hub.rollouts.command(rid, "pause", actor="test")
    code, out = cli(hub, "rollout", "status", rid, "--watch", "--interval", "0.2")
    assert code == 2 and "paused" in out  # a person must decide
    hub.hub.rollouts.command(rid, "abort", actor="test")
    code, out = cli(hub, "rollout", "status", rid, "--watch")
    assert code == 1 and "aborted" in out

    def abort_when_started() -> None:  # what an operator does meanwhile, in another terminal
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            active = hub.hub.rollouts.active()
            if active:
                hub.hub.rollouts.command(active[0].id, "pause", actor="test")
                return
            time.sleep(0.05)

    other = threading.Thread(target=abort_when_started)
    other.start()
    code, out = cli(hub, "rollout", "start", f"{LONG}:1.10.0", "-s", "ring=canary", "--wait", "--interval", "0.2")
    other.join()
    assert code == 2 and "is paused: it waits for a person" in out
    for r in hub.hub.rollouts.active():
        hub.hub.rollouts.command(r.id, "abort", actor="test")


def test_watch_exits_3_when_the_hub_stops_answering(broker: Broker, samples: Path, tmp_path: Path) -> None:
    h = start_hub(tmp_path / "hub", broker.url, f"test/{uuid.uuid4().hex[:12]}/fleet/v1",
                  rollouts={"tick_interval_s": 600})  # fmt: skip
    try:
        r = h.push_model(samples / "mobilenet-like.onnx", samples / "mobilenet-like.yaml", version="1.0.0")
        assert r.status_code == 201, r.text
        with h.client() as c:
            assert c.post("/api/v1/devices", json={"id": "cam-1", "labels": {"ring": "canary"}}).status_code == 201
            r = c.post("/api/v1/rollouts", json={"model": "mobilenet-like", "version": "1.0.0", "selector": "ring"})
            assert r.status_code == 201, r.text
            rid = r.json()["id"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "edgefleet_cli.py"), "rollout", "status", rid, "--watch", "--interval", "0.2",
             "--url", h.url, "--token", h.admin_token],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # its first line: it follows the running rollout
        first = proc.stdout.readline().decode() if ready else ""
    finally:
        h.stop()  # the hub goes away while the CLI follows
    try:
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = first + rest.decode()
    assert rid in first and "running" in first, said
    assert proc.returncode == 3, said
    assert "stopped following" in said and f"{rid} is unknown: the hub stopped answering" in said

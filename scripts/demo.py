"""`make demo`: the whole product on one machine, driven through the same CLI and APIs users call.

1. `edgefleet hub init` + `edgefleet hub serve` (the hub starts and supervises its own Mosquitto).
2. Three devices enrolled (`edgefleet device add`), three real agent processes (`edgefleet agent run`).
3. The sample classifier v1.0.0 built, pushed and deployed; inference requests sent to every device.
4. v2.0.0 (another "training run") pushed and rolled out through waves and gates, with live progress.
5. The dashboard URL and a viewer token printed; runs until Ctrl-C (or exits with --exit / DEMO_EXIT=1).

Every process is stopped on exit, the hub's Mosquitto included. Work files go to a temporary folder
(or `--workdir`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from rich.console import Console
from rich.live import Live
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hubclient import HubApiError, HubClient  # noqa: E402

EDGEFLEET = str(Path(sys.executable).parent / "edgefleet")
DEVICES = (("cam-berlin-1", "site=berlin"), ("cam-berlin-2", "site=berlin"), ("cam-paris-1", "site=paris"))
out = Console(highlight=False)


class DemoError(Exception):
    """Something the demo needs did not happen; the message says what."""


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if check():
                return
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


class Demo:
    """Owns every process it starts and stops them all, whatever happens."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.hub_port = free_port()
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.token = ""
        self.agent_ports: dict[str, int] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        self.env["PYTHONPATH"] = str(ROOT)

    # -- processes ----------------------------------------------------------------------------------
    def cli(self, *args: str, show: bool = True) -> str:
        """Run `edgefleet ARGS` like a user would, echoing the command; returns its stdout."""
        if show:
            out.print(f"[dim]$ edgefleet {' '.join(args)}[/dim]")
        env = self.env | {"EDGEFLEET_URL": self.hub_url, "EDGEFLEET_TOKEN": self.token}
        res = subprocess.run([EDGEFLEET, *args], capture_output=True, text=True, env=env, cwd=self.work, check=False)
        if res.returncode != 0:
            raise DemoError(f"`edgefleet {' '.join(args)}` failed ({res.returncode}): {res.stderr.strip()[-800:]}")
        return res.stdout

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen([EDGEFLEET, *args], env=self.env | (env or {}), stdout=log, stderr=log, cwd=self.work)
        log.close()
        self.procs.append((name, proc))

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):  # agents first, the hub (and its Mosquitto) last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                out.print(f"[yellow]{name} did not stop in 30 s: killing it[/yellow]")
                proc.kill()
                proc.wait(timeout=5)

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-1500:]
                raise DemoError(f"{name} exited with {proc.returncode}:\n{tail}")

    # -- hub API --------------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> Any:
        with HubClient(self.hub_url, self.token, timeout=30) as hub:
            try:
                return hub.request(method, path, **kw)
            except HubApiError as e:
                raise DemoError(f"{method} {path}: {e.status} {e.message[:300]}") from e

    def devices_on(self, version: str) -> int:
        return sum(
            1 for d in self.api("GET", "/api/v1/devices") if f"mobilenet-like:{version}" in d.get("active_models", [])
        )


def png(seed: int) -> bytes:
    img = Image.new("RGB", (320, 240), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Traffic:
    """Application traffic: every device's image endpoint called a few times a second (gates need data)."""

    def __init__(self, ports: dict[str, int], per_second: float = 20.0) -> None:
        self.ports, self.period = ports, 1.0 / per_second
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        images = [png(i) for i in range(8)]
        with httpx.Client(timeout=10) as c:
            i = 0
            while not self._stop.is_set():
                for port in self.ports.values():
                    try:
                        r = c.post(f"http://127.0.0.1:{port}/v1/models/mobilenet-like:predict?top_k=1",
                                   content=images[i % len(images)])  # fmt: skip
                        self.sent += 1
                        self.failed += r.status_code != 200
                    except httpx.HTTPError:
                        self.failed += 1
                    i += 1
                self._stop.wait(self.period)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rollout_table(status: dict[str, Any], traffic: Traffic) -> Table:
    t = Table(title=f"rollout {status['id']} of mobilenet-like:2.0.0 - {status['state']}", title_justify="left")
    for col in ("wave", "size", "phase", "devices", "on 2.0.0", "gates"):
        t.add_column(col)
    marks = {"pass": "[green]✓[/green]", "fail": "[red]✗[/red]", "no_data": "[dim]·[/dim]"}
    for w in status["waves"]:
        gates = " ".join(f"{marks.get(g['status'], '?')} {g['name']}" for g in w["gates"]) or "-"
        counts = w["counts"]
        t.add_row(str(w["index"]), w["size"], w["phase"], str(w["devices"]), str(counts.get("active", 0)), gates)
    t.caption = f"requests sent {traffic.sent}, failed {traffic.failed}"
    return t


def run(demo: Demo, exit_after: bool) -> None:
    work = demo.work
    t0 = time.monotonic()
    out.rule("[bold]1. the hub")
    init = json.loads(demo.cli("hub", "init", "--data-dir", str(work / "hub"), "--json"))
    demo.token = init["admin_token"]
    # its Mosquitto on a free port: a system broker (or another demo) may hold 1883. The demo's agents send
    # 1 s telemetry windows (below), so the hub judges a bake 2 s after it ends, not the 15 s that suit 10 s ones
    hub_env = {"EDGEFLEET_HUB_BROKER_LOCAL_PORT": "0", "EDGEFLEET_HUB_ROLLOUTS_TELEMETRY_GRACE_S": "2"}
    demo.spawn("hub", "hub", "serve", "--data-dir", str(work / "hub"), "--port", str(demo.hub_port), env=hub_env)
    wait_until(
        "the hub API",
        lambda: demo.check_alive() or httpx.get(f"{demo.hub_url}/healthz", timeout=2).status_code == 200,
        60,
    )
    out.print(f"hub API on {demo.hub_url} (it started its own Mosquitto)")

    out.rule(f"[bold]2. three devices[/bold] [dim](+{time.monotonic() - t0:.0f} s)[/dim]")
    for device_id, label in DEVICES:
        demo.cli("device", "add", device_id, "--label", label, "--label", "fleet=demo",
                 "--out", str(work / f"{device_id}.json"))  # fmt: skip
        port = free_port()
        demo.agent_ports[device_id] = port
        demo.spawn(device_id, "agent", "run", "--bundle", str(work / f"{device_id}.json"),
                   "--data-dir", str(work / device_id), "--api-port", str(port),
                   env={"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1"})  # fmt: skip
    online = lambda: sum(d["status"] == "online" for d in demo.api("GET", "/api/v1/devices"))  # noqa: E731
    wait_until("three devices online", lambda: online() == 3, 60)
    out.print(demo.cli("device", "list", show=True))

    out.rule(f"[bold]3. deploy v1.0.0 and call the on-device API[/bold] [dim](+{time.monotonic() - t0:.0f} s)[/dim]")
    demo.cli("model", "build-samples", str(work / "v1"))
    demo.cli("model", "push", str(work / "v1" / "mobilenet-like.onnx"))
    demo.cli("deploy", "mobilenet-like:1.0.0", "--selector", "fleet=demo")
    wait_until("v1.0.0 active on every device", lambda: demo.devices_on("1.0.0") == 3, 120)
    for device_id, port in demo.agent_ports.items():
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/mobilenet-like:predict?top_k=3", content=png(1), timeout=10)
        r.raise_for_status()
        top = ", ".join(f"{c['label']} {c['score']:.2f}" for c in r.json()["classes"])
        out.print(f"{device_id} (127.0.0.1:{port}) -> {top}")
    demo.check_alive()

    out.rule(f"[bold]4. roll out v2.0.0 through waves and gates[/bold] [dim](+{time.monotonic() - t0:.0f} s)[/dim]")
    out.print(
        "[dim]The p95 gate allows a 3x slowdown against the devices still on v1 here: on one small machine "
        "running the hub, three agents and this script, tail latency is noisy. The production default is 0.2.[/dim]"
    )
    demo.cli("model", "build-samples", str(work / "v2"), "--version", "2.0.0", "--seed", "1")
    demo.cli("model", "push", str(work / "v2" / "mobilenet-like.onnx"))
    with Traffic(demo.agent_ports) as traffic:
        time.sleep(3)  # a few telemetry windows on v1: the control cohort of the p95 gate
        started = json.loads(demo.cli(
            "rollout", "start", "mobilenet-like:2.0.0", "--selector", "fleet=demo", "--waves", "1,2,100%",
            "--bake", "5s", "--max-error-rate", "0.01", "--max-p95-regression", "3.0", "--min-requests", "50",
            "--on-failure", "rollback", "--json",
        ))  # fmt: skip
        rid = started["id"]
        status = demo.api("GET", f"/api/v1/rollouts/{rid}")
        deadline = time.monotonic() + 150
        with Live(rollout_table(status, traffic), console=out, refresh_per_second=4) as live:
            while status["state"] in ("running", "rolling_back") and time.monotonic() < deadline:
                time.sleep(0.5)
                demo.check_alive()
                status = demo.api("GET", f"/api/v1/rollouts/{rid}")
                live.update(rollout_table(status, traffic))
    out.print()
    if status["state"] != "completed":
        raise DemoError(f"rollout ended {status['state']}: {status.get('reason')}")
    wait_until("v2.0.0 active on every device", lambda: demo.devices_on("2.0.0") == 3, 60)
    out.print(f"[bold green]rollout succeeded[/bold green]: 3/3 devices on 2.0.0, {traffic.sent} requests, "
              f"{traffic.failed} failed")  # fmt: skip

    out.rule(f"[bold]5. watch the fleet[/bold] [dim](+{time.monotonic() - t0:.0f} s)[/dim]")
    viewer = json.loads(demo.cli("hub", "token", "demo-viewer", "--role", "viewer", "--json"))["token"]
    out.print(f"dashboard: {demo.hub_url}/   viewer token: {viewer}")
    out.print(f"admin token: {demo.token}   work files: {work}")
    if exit_after:
        return
    out.print("running; press Ctrl-C to stop every process")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)
            demo.check_alive()


@contextlib.contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path).resolve()
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    p = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    try:
        yield p
    finally:
        shutil.rmtree(p, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exit", action="store_true", default=os.environ.get("DEMO_EXIT") == "1",
                        help="exit after the rollout instead of running until Ctrl-C (also DEMO_EXIT=1)")  # fmt: skip
    parser.add_argument("--workdir", help="keep work files here (default: a temporary folder, removed)")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        out.print("error: Mosquitto is not installed: sudo apt-get install mosquitto (see README)")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with workdir(args.workdir) as work:
        demo = Demo(work)
        try:
            run(demo, args.exit)
        except DemoError as e:
            out.print(f"[bold red]demo failed:[/bold red] {e}")
            return 1
        except KeyboardInterrupt:
            out.print("stopping")
        finally:
            demo.stop_all()
    out.print("every process stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark (issue 7): hub + Mosquitto + simulated agents on this machine.

For each N it measures, in one run:
  online   - seconds from starting the simulator process until the hub has seen N retained births;
  ingest   - hub CPU (% of one core) and telemetry ingest lag (hub receipt minus window end) with every agent
             sending a window every --telemetry-s seconds, over --steady-s seconds;
  raw      - a 16 MiB blob published once (64 x 256 KiB, QoS 1) to N plain subscribers that only count
             messages (the broker's and the client library's raw fan-out, same process layout as the agents);
  rollout  - the same blob as a signed desired state to all N agents: want, fan-out of chunks, every agent
             verifying every chunk, reported `active` seen by the hub; and its ratio to raw;
  hub RSS  - resident memory of the hub process at the end.

    .venv/bin/python benchmarks/scale.py [--agents 100,500,2000] [--blob-mib 16] [--steady-s 30] [--md FILE]

The hub is a stand-in (tests/support/sim_hub.MiniHub: signs, serves wants with a gathering window, ingests
reported/status/telemetry with pydantic) running in this process, until the product hub's runtime can be
started here; the table says which hub was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from agent.sim.agent import Action, Publish, Subscribe  # noqa: E402
from agent.sim.config import BrokerAddress  # noqa: E402
from agent.sim.enrol import direct_identities  # noqa: E402
from agent.sim.mqtt import Transport  # noqa: E402
from fleet import ModelRef, TelemetryWindow, decode  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.mqtt import TestClient  # noqa: E402
from tests.support.sim_hub import MiniHub  # noqa: E402


# -- raw receivers (run in their own process: `scale.py _raw ...`) ----------------------------------------
class RawReceiver:
    """A transport endpoint that subscribes to one topic and counts messages; says ready and done."""

    def __init__(self, device_id: str, topic: str, signal_topic: str, count: int) -> None:
        self.device_id = device_id
        self.connected = False
        self.topic, self.signal_topic, self.count = topic, signal_topic, count
        self.got = 0
        self.bytes = 0

    def will(self, now: float) -> Publish | None:
        return None

    def on_connect(self, now: float) -> list[Action]:
        self.connected = True
        return [Subscribe(self.topic), Publish(f"{self.signal_topic}/ready", self.device_id.encode(), qos=1)]

    def on_disconnect(self) -> None:
        self.connected = False

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]:
        self.got += 1
        self.bytes += len(payload)
        if self.got == self.count:
            return [Publish(f"{self.signal_topic}/done", self.device_id.encode(), qos=1)]
        return []

    def tick(self, now: float) -> list[Action]:
        return []


def raw_worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--signal", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    key = "A" * 43  # any 32-byte key: raw receivers verify nothing
    identities = direct_identities(a.broker, key, a.n, id_prefix="raw")
    transport = Transport(threads=a.threads, connect_rate=1000)
    for ident in identities:
        transport.add(RawReceiver(ident.device_id, a.topic, a.signal, a.count), ident)
    transport.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    transport.stop(timeout=5)


# -- orchestration ----------------------------------------------------------------------------------------
@dataclass
class Result:
    n: int
    hub: str
    online_s: float
    hub_cpu_pct: float
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    windows: int
    raw_s: float
    rollout_s: float
    chunks_published: int
    hub_rss_mib: float
    sim_rss_mib: float

    @property
    def ratio(self) -> float:
        return self.rollout_s / self.raw_s if self.raw_s else float("nan")


def _wait(
    predicate: Callable[[], object], timeout: float, what: str, progress: Callable[[], str] | None = None
) -> float:
    start = last = time.monotonic()
    while not predicate():
        now = time.monotonic()
        if now - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        if progress is not None and now - last >= 5:
            last = now
            print(f"  {what}: {now - start:.0f}s {progress()}", file=sys.stderr, flush=True)
        time.sleep(0.05)
    return time.monotonic() - start


def _python_cmd(module_call: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {module_call}"]


def run_one(n: int, blob_mib: int, telemetry_s: float, steady_s: float, threads: int, work: Path) -> Result:
    broker = Broker(find_mosquitto() or "mosquitto", work / f"mq-{n}", free_port(), max_packet_size=16 << 20)
    broker.start()
    hub = MiniHub(broker.host, broker.port, "fleet/v1", batch_s=0.2, resend_s=1.0)
    me = psutil.Process()
    sim: subprocess.Popen[bytes] | None = None
    raw: subprocess.Popen[bytes] | None = None
    try:
        blob = os.urandom(blob_mib << 20)
        manifest = hub.add_blob(blob)
        sim_cmd = [
            *_python_cmd("from agent.sim.cli import app; app()"),
            "--agents", str(n), "--broker", broker.url, "--hub-key", hub.public_key, "--json",
            "--telemetry-s", str(telemetry_s), "--want-retry-s", "10", "--threads", str(threads),
            "--connect-rate", "1000", "--seed", "1", "--cache", str(work / f"cache-{n}"),
        ]  # fmt: skip
        t0 = time.monotonic()
        sim = subprocess.Popen(sim_cmd, cwd=ROOT, stdout=subprocess.PIPE)
        _wait(lambda: hub.online() >= n, 120 + n / 10, f"{n} agents online")
        online_s = time.monotonic() - t0

        # steady state: telemetry from every agent
        time.sleep(min(telemetry_s, 5))  # let the first, randomly spread windows begin
        mark = len(hub.telemetry)
        cpu0, w0 = me.cpu_times(), time.monotonic()
        time.sleep(steady_s)
        cpu1, w1 = me.cpu_times(), time.monotonic()
        cpu_pct = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (w1 - w0)
        lags = []
        for received, payload in hub.telemetry[mark:]:
            lags.append(received - decode(payload, TelemetryWindow).end)
        lags.sort()
        hub.telemetry.clear()

        # raw fan-out of the same bytes on the blob's own chunk topic (no agent subscribes to it yet)
        signal_topic = f"bench/{uuid.uuid4().hex[:8]}"
        listener = TestClient(broker.host, broker.port)
        listener.subscribe(f"{signal_topic}/#")
        ready: set[str] = set()
        done: set[str] = set()
        raw_cmd = [sys.executable, str(Path(__file__).resolve()), "_raw", "--n", str(n), "--broker", broker.url,
                   "--topic", hub.topics.chunk(manifest.sha256), "--signal", signal_topic,
                   "--count", str(manifest.count), "--threads", str(threads)]  # fmt: skip
        raw = subprocess.Popen(raw_cmd, cwd=ROOT)

        def drain() -> None:
            while True:
                try:
                    msg = listener.messages.get_nowait()
                except Exception:
                    return
                (ready if msg.topic.endswith("/ready") else done).add(msg.payload.decode())

        _wait(lambda: drain() or len(ready) >= n, 120 + n / 10, "raw receivers subscribed")
        t_raw = time.monotonic()
        hub.fan_out(manifest.sha256)
        _wait(lambda: drain() or len(done) >= n, 600, "raw fan-out complete", lambda: f"{len(done)} done")
        raw_s = time.monotonic() - t_raw
        listener.close()
        raw.send_signal(signal.SIGTERM)
        raw.wait(30)
        raw = None

        # rollout: signed desired state to every agent, until every one reports the version active
        model = ModelRef(name="bench", version="1.0.0", task="classification", blob=manifest)
        sent_before = hub.chunks_sent
        t_roll = time.monotonic()
        for i in range(n):
            hub.publish_desired(hub.desired(f"sim-{i:05d}", model))

        def all_active() -> bool:
            with hub._lock:
                return sum(1 for r in hub.reported.values() if r.active is not None) >= n

        def roll_progress() -> str:
            with hub._lock:
                phases = [r.phase.value for r in hub.reported.values()]
            counts = {p: phases.count(p) for p in set(phases)}
            return f"{counts} wants={hub.wants} chunks={hub.chunks_sent - sent_before}"

        _wait(all_active, max(600, 20 * raw_s), "rollout to every agent", roll_progress)
        rollout_s = time.monotonic() - t_roll
        hub_rss = me.memory_info().rss / 2**20
        sim_rss = psutil.Process(sim.pid).memory_info().rss / 2**20
        return Result(
            n=n, hub="stand-in (tests/support/sim_hub.py)", online_s=online_s, hub_cpu_pct=cpu_pct,
            lag_p50_s=statistics.median(lags) if lags else float("nan"),
            lag_p99_s=lags[int(0.99 * (len(lags) - 1))] if lags else float("nan"),
            lag_max_s=lags[-1] if lags else float("nan"), windows=len(lags), raw_s=raw_s, rollout_s=rollout_s,
            chunks_published=hub.chunks_sent - sent_before, hub_rss_mib=hub_rss, sim_rss_mib=sim_rss,
        )  # fmt: skip
    finally:
        for proc in (raw, sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        hub.close()
        broker.stop()


def table(results: list[Result], blob_mib: int, telemetry_s: float) -> str:
    head = (
        f"| agents | online s | hub CPU % (telemetry every {telemetry_s:g} s) | ingest lag p50 / p99 / max s "
        f"| raw fan-out {blob_mib} MiB s | rollout s | rollout / raw | chunks published | hub RSS MiB | sim RSS MiB |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        lines.append(
            f"| {r.n} | {r.online_s:.1f} | {r.hub_cpu_pct:.0f} | {r.lag_p50_s:.3f} / {r.lag_p99_s:.3f} / "
            f"{r.lag_max_s:.3f} | {r.raw_s:.1f} | {r.rollout_s:.1f} | {r.ratio:.2f}x | {r.chunks_published} | "
            f"{r.hub_rss_mib:.0f} | {r.sim_rss_mib:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        raw_worker(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="100,500,2000", help="comma-separated fleet sizes")
    p.add_argument("--blob-mib", type=int, default=16, help="model blob size, MiB")
    p.add_argument("--telemetry-s", type=float, default=10.0, help="telemetry window of every agent, s")
    p.add_argument("--steady-s", type=float, default=30.0, help="how long to measure hub CPU and ingest lag, s")
    p.add_argument("--threads", type=int, default=2, help="transport threads of the simulator")
    p.add_argument("--md", type=Path, help="also write the table to this markdown file")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    BrokerAddress.parse("mqtt://127.0.0.1:1883")  # the simulator's config imports cleanly
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-scale-") as tmp:
        for n in (int(x) for x in a.agents.split(",")):
            r = run_one(n, a.blob_mib, a.telemetry_s, a.steady_s, a.threads, Path(tmp))
            print(json.dumps(r.__dict__ | {"ratio": r.ratio}), flush=True)
            results.append(r)
    text = table(results, a.blob_mib, a.telemetry_s)
    print(text)
    if a.md:
        a.md.write_text(text + "\n")


if __name__ == "__main__":
    main()

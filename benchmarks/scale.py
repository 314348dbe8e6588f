"""Scale benchmark (issue 7): hub + Mosquitto + simulated agents on this machine.

For each N it measures, in one run:
  online   - seconds from starting the simulator process until the hub has seen N agents online;
  ingest   - hub CPU (% of one core; the hub, or the leader, with its telemetry writer process) and telemetry
             ingest lag with every agent sending a window every --telemetry-s seconds, over --steady-s seconds.
             Lag = window visible to the hub (product hub: row readable in its store; stand-in: message parsed)
             minus the window's end;
  raw      - the model's bytes published once (256 KiB chunks, QoS 1) to N plain subscribers that only count
             messages: the broker's and the client library's raw fan-out, same process layout as the agents;
  rollout  - the same bytes as a signed desired state to all N agents (want, chunk rounds, every agent verifying
             every chunk, activation, reported `active` seen by the hub), and its ratio to raw;
  RSS      - resident memory of the hub, the broker and the simulator at the end.

    .venv/bin/python benchmarks/scale.py [--agents 100,500,2000] [--hub product|stand-in] [--md FILE]

`--hub product` runs the real hub (hub.runtime.Hub + its REST API) in its own process: agents are enrolled
through POST /api/v1/devices, the model is pushed through the API and deployed by label selector.
`--hub stand-in` uses tests/support/sim_hub.MiniHub in this process (no store, no API).

`--replicas 2 --postgres` (or `--database-url postgresql://...`) adds, for each N, a run with that many product
hubs sharing one PostgreSQL database (a fresh one per run), telemetry split by a shared subscription (`$share`,
over MQTT 5 or, with `--replica-mqtt 3.1.1`, over 3.1.1 as docs/scale.md recommends), the leader (the first replica
up) serving chunks, blobs in one directory all replicas see; the single-hub SQLite run of the same N comes first,
and the lines under the table compare the two rollouts. `--rounds K` runs both K times, alternating which goes
first (ABBA...), and prints each round's ratio and their median.

`--pin` gives the fleet's process (the simulator, and the raw receivers in the raw phase) the first CPU alone
and every other process (hubs, broker, PostgreSQL, this script) the others, as if devices and hubs were separate
hosts. Without it every process shares every CPU, so whatever a hub spends comes out of the simulator's time,
which sets a rollout's pace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from agent.settings import DownloadSettings  # noqa: E402
from fleet.chunks import (  # noqa: E402
    chunk_of,
    decode_frame,
    encode_frame,
)
from fleet.codec import decode  # noqa: E402
from fleet.messages import BlobManifest, ModelRef, ReportedState, TelemetryWindow, Want  # noqa: E402
from fleet.plan import plan_file  # noqa: E402
from fleet.topics import TopicKind, Topics  # noqa: E402
from hubclient import HubApiError, HubClient  # noqa: E402
from sim.actions import Action, Publish, Subscribe  # noqa: E402
from sim.enrol import direct_identities, enrol_via_hub  # noqa: E402
from sim.transport import Transport  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.mqtt import TestClient  # noqa: E402
from tests.support.procs import stop  # noqa: E402
from tests.support.sim_hub import MiniHub  # noqa: E402

PREFIX = "fleet/v1"
LABEL = {"bench": "scale"}


class BenchBroker(Broker):
    """The test broker with a bounded in-flight window per client (see docs/scale.md: unbounded in-flight
    makes Mosquitto copy every queued chunk into every slow subscriber's packet list)."""

    inflight: int = 20

    def config(self) -> str:
        return super().config().replace("max_inflight_messages 0", f"max_inflight_messages {self.inflight}")


# -- raw receivers (their own process: `scale.py _raw ...`) ----------------------------------------------
class RawReceiver:
    """A transport endpoint that subscribes to one topic and counts messages; says ready and done."""

    def __init__(self, device_id: str, topic: str, signal_topic: str, count: int) -> None:
        self.device_id = device_id
        self.connected = False
        self.topic, self.signal_topic, self.count = topic, signal_topic, count
        self.got = 0

    def will(self, now: float) -> Publish | None:
        return None

    def on_connect(self, now: float) -> list[Action]:
        self.connected = True
        return [Subscribe(self.topic), Publish(f"{self.signal_topic}/ready", self.device_id.encode(), qos=1)]

    def on_disconnect(self) -> None:
        self.connected = False

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]:
        self.got += 1
        if self.got == self.count:
            return [Publish(f"{self.signal_topic}/done", self.device_id.encode(), qos=1)]
        return []

    def tick(self, now: float) -> list[Action]:
        return []


def _wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


def raw_worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    for name in ("--broker", "--topic", "--signal"):
        p.add_argument(name, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    identities = direct_identities(a.broker, "A" * 43, a.n, id_prefix="raw")  # raw receivers verify nothing
    transport = Transport(threads=a.threads, connect_rate=1000)
    for ident in identities:
        transport.add(RawReceiver(ident.device_id, a.topic, a.signal, a.count), ident)
    transport.start()
    _wait_for_signal()
    transport.stop(timeout=5)


def hub_worker(argv: list[str]) -> None:
    """Run the product hub (needs the `hub` package) on an external broker; print its API URL and token."""
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--database-url", default=None, help="a PostgreSQL store shared with other replicas")
    p.add_argument("--replica", default=None, help="this replica's name (its own broker session)")
    p.add_argument("--group", default=None)
    p.add_argument("--mqtt", default="5", choices=["3.1.1", "5"], help="--group: the replicas' MQTT version")
    p.add_argument("--token", default=None)
    p.add_argument("--settings", default="{}", help="JSON merged into the hub settings")
    a = p.parse_args(argv)
    if os.environ.get("EDGEFLEET_BENCH_HUB_ROOT"):  # measure another hub checkout (not EDGEFLEET_HUB_*: a setting)
        sys.path.insert(0, os.environ["EDGEFLEET_BENCH_HUB_ROOT"])
    from hub.api.server import api_server  # noqa: PLC0415
    from hub.runtime import Hub, init_hub  # noqa: PLC0415
    from hub.settings import HubSettings  # noqa: PLC0415

    broker: dict[str, Any] = {"url": a.broker}
    if a.group:
        broker |= {"mqtt_version": a.mqtt, "shared_group": a.group}
    if a.replica:
        broker["replica"] = a.replica
    store = {"database_url": a.database_url} if a.database_url else {}
    settings = HubSettings.model_validate(store | {
        "data_dir": a.data, "topic_prefix": PREFIX, "broker": broker, "api": {"host": "127.0.0.1", "port": 0},
        "retention": {"sweep_interval_s": 3600},
    } | json.loads(a.settings))  # fmt: skip
    token = a.token or init_hub(settings)
    hub = Hub(settings)
    hub.start()
    api = api_server(hub)
    api.start()
    print(json.dumps({"api": api.url, "token": token, "db": str(settings.db_path)}), flush=True)
    _wait_for_signal()
    api.stop()
    hub.stop()


# -- what was published against the minimum ---------------------------------------------------------------
class Probe:
    """Watches one blob's chunk and want topics through its own broker connection.

    The broker queues both topics for this client in the order it received the messages, so the probe sees
    exactly which chunks were published before each device's first want. A device subscribes to the chunk
    topic just before that want, so a chunk first published earlier was truly missed by it: the minimum is
    one pass plus, for each chunk first published before the last device's first want, one more publish
    (a slight overestimate: a chunk published between a device's subscribe and its want did reach it).
    """

    def __init__(self, broker: Broker, topics: Topics, sha256: str) -> None:
        self.client = TestClient(broker.host, broker.port)
        self.sha256 = sha256
        self.active: set[str] = set()  # devices that reported the blob's model active
        self.want_times: list[float] = []  # s since the probe started, of each device's first want
        self.first_chunk_s = float("nan")
        self.last_chunk_s = float("nan")
        self.all_active_s = float("nan")  # when the last device reported the model active
        self.expected = 0  # devices the rollout tells (set before the deploy)
        self.chunks = 0
        self.first_seen: dict[int, int] = {}  # chunk index -> position in the stream of its first publish
        self.first_want: dict[str, int] = {}  # device -> position of its first want
        self.rewants: list[tuple[float, str, int]] = []  # (s since the probe started, device, chunks) of later wants
        self.republished: list[tuple[float, int]] = []  # (s since the probe started, index) of repeated publishes
        self._t0 = time.monotonic()
        self._position = 0
        self._chunk_topic, self._want_topic = topics.chunk(sha256), topics.want(sha256)
        self.client.client.on_message = self._on_message
        reported = topics.subscription(TopicKind.REPORTED)
        self._reported_suffix = reported.split("+")[-1]
        desired = topics.subscription(TopicKind.DESIRED)
        self._desired_suffix = desired.split("+")[-1]
        self.desired_times: list[float] = []  # s since the probe started, of each desired state after `mark()`
        self._mark = float("inf")
        self.client.subscribe(self._want_topic)
        self.client.subscribe(self._chunk_topic)
        self.client.subscribe(reported)
        self.client.subscribe(desired)

    def mark(self) -> None:
        """Desired states from now on are the rollout's (the ones before are the broker's retained copies)."""
        self._mark = time.monotonic()

    def _on_reported(self, payload: bytes) -> None:
        """Note a device reporting the model active (progress reports, most of them, are skipped unparsed)."""
        if b'"active":{' not in payload or self.sha256.encode() not in payload:
            return
        state = decode(payload, ReportedState)
        if any(m.active is not None and m.active.sha256 == self.sha256 for m in state.models):
            self.active.add(state.device_id)
            if len(self.active) == self.expected:
                self.all_active_s = round(time.monotonic() - self._t0, 1)

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        if msg.topic.endswith(self._reported_suffix):
            self._on_reported(msg.payload)
            return
        if msg.topic.endswith(self._desired_suffix):
            if time.monotonic() >= self._mark:
                self.desired_times.append(round(time.monotonic() - self._t0, 2))
            return
        self._position += 1
        now = round(time.monotonic() - self._t0, 1)
        if msg.topic == self._chunk_topic:
            if not self.chunks:
                self.first_chunk_s = now
            self.last_chunk_s = now
            self.chunks += 1
            index = decode_frame(msg.payload).index
            if index in self.first_seen:
                self.republished.append((now, index))
            self.first_seen.setdefault(index, self._position)
        else:
            want = decode(msg.payload, Want)
            if want.device_id in self.first_want:
                self.rewants.append((now, want.device_id, sum(b - a for a, b in want.missing)))
            else:
                self.want_times.append(now)
            self.first_want.setdefault(want.device_id, self._position)

    def minimum(self, count: int) -> int:
        last_join = max(self.first_want.values(), default=0)
        return count + sum(1 for position in self.first_seen.values() if position < last_join)

    def close(self) -> None:
        self.client.close()


class CpuMeter:
    """CPU seconds (user + system) of named processes between creation and `stop()`, and of the whole machine.

    Where a rollout's time goes on a shared machine: the broker, the hub (or the leader and each follower
    replica), PostgreSQL, the agents (or raw receivers), this process (publisher, probe, API polling), and
    `other` = every core's busy time not spent by those (the other jobs on the machine). Each name counts its
    process and every descendant that is not another name's (a hub's telemetry writer process, PostgreSQL's
    backends): the kernel adds a child's CPU to its parent's only once the child has exited and been reaped,
    so a live writer process was not in its hub's figure before session 5. `wall` is the interval, so
    `x / wall` is cores used.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.roots = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.t0 = time.monotonic()
        self.start = {name: {p.pid: self._cpu(p) for p in procs} for name, procs in self._trees().items()}
        self.machine0 = self._busy()

    def _trees(self) -> dict[str, list[psutil.Process]]:
        """Each name's process and its descendants, a descendant that is itself named counting for its own name
        (the benchmark started the broker, the hubs and the simulator)."""
        named = {p.pid for p in self.roots.values()}
        trees: dict[str, list[psutil.Process]] = {}
        for name, root in self.roots.items():
            procs, todo = [], [root]
            while todo:
                proc = todo.pop()
                procs.append(proc)
                with contextlib.suppress(psutil.Error):
                    todo += [c for c in proc.children() if c.pid not in named]
            trees[name] = procs
        return trees

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        """The process's CPU and its exited, reaped children's."""
        try:
            t = proc.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except psutil.Error:
            return float("nan")

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))

    def stop(self) -> dict[str, float]:
        """CPU seconds per name, `other` and `wall`. A descendant that exited meanwhile counts through its
        parent's reaped-children time, its whole life there: its CPU before the interval is taken off again."""
        used: dict[str, float] = {}
        for name, procs in self._trees().items():
            before = self.start.get(name, {})
            now = {p.pid: self._cpu(p) for p in procs}
            live = sum(v - before.get(pid, 0.0) for pid, v in now.items() if v == v)
            gone = sum(v for pid, v in before.items() if pid not in now and v == v)
            used[name] = round(live - gone, 2)
        busy = self._busy() - self.machine0
        distinct = {root.pid: used[name] for name, root in self.roots.items()}  # the stand-in hub is this process
        used["other"] = round(busy - sum(distinct.values()), 2)
        used["wall"] = round(time.monotonic() - self.t0, 2)
        return used


class RssSampler:
    """Peak resident memory of a process, sampled every `interval_s` until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        self._thread.join(5)
        return self.peak / 2**20


# -- the hubs under test ----------------------------------------------------------------------------------
class StandInHub:
    name = "stand-in (tests/support/sim_hub.py)"

    def __init__(self, broker: Broker, work: Path) -> None:
        self.hub = MiniHub(broker.host, broker.port, PREFIX, batch_s=0.2, resend_s=1.0)
        self.pid = os.getpid()
        self.manifest: BlobManifest | None = None
        self._mark = 0

    def sim_args(self, n: int, work: Path, broker: Broker) -> list[str]:
        return ["--agents", str(n), "--broker", broker.url, "--hub-key", self.hub.public_key]

    def pids(self) -> dict[str, int]:
        """The processes `CpuMeter` names for this hub."""
        return {"hub": self.pid}

    def online(self) -> int:
        return self.hub.online()

    def start_lag_window(self) -> None:
        self._mark = len(self.hub.telemetry)

    def lags(self) -> list[float]:
        return [got - decode(p, TelemetryWindow).end for got, p in self.hub.telemetry[self._mark :]]

    def add_model(self, path: Path) -> str:
        self.manifest = self.hub.add_blob(path.read_bytes())
        return self.manifest.sha256

    def chunks_published(self) -> int:
        return self.hub.chunks_sent

    def deploy(self, n: int) -> None:
        assert self.manifest is not None
        model = ModelRef(name="bench", version="1.0.0", task="classification", blob=self.manifest)
        for i in range(n):
            self.hub.publish_desired(self.hub.desired(f"sim-{i:05d}", model))

    def active(self, *, fresh: bool = False) -> int:
        with self.hub._lock:
            return sum(1 for r in self.hub.reported.values() if any(m.active for m in r.models))

    def close(self) -> None:
        self.hub.close()


class ProductHub:
    name = "product (hub.runtime.Hub + REST API, SQLite)"

    def __init__(self, broker: Broker, work: Path, settings: str = "{}") -> None:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_hub",
            "--data",
            str(work / "hub"),
            "--broker",
            broker.url,
            "--settings",
            settings,
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        self._attach(proc, info["api"], info["token"], info["db"])

    def _attach(self, proc: subprocess.Popen[str], api: str, token: str, db: str) -> None:
        """Measure and drive the hub process `proc` through its API `api` and its database `db`."""
        self.proc, self.pid = proc, proc.pid
        self.api, self.token, self.db = api, token, db
        self.http = HubClient(self.api, self.token, timeout=120)
        self._listed: list[dict[str, Any]] = []
        self._listed_at = 0.0
        self._rowid = 0
        self._lags: list[float] = []
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    def pids(self) -> dict[str, int]:
        """The processes `CpuMeter` names for this hub (with its telemetry writer, a child process)."""
        return {"hub": self.pid}

    def sim_args(self, n: int, work: Path, broker: Broker) -> list[str]:
        bundles = work / "bundles"
        t = time.monotonic()
        enrol_via_hub(self.api, self.token, n, labels=LABEL, bundle_dir=bundles)
        print(f"  enrolled {n} devices through the API in {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
        return ["--bundles", str(bundles)]

    def _devices(self, max_age_s: float = 1.0) -> list[dict[str, Any]]:
        if time.monotonic() - self._listed_at >= max_age_s:  # listing thousands of devices costs the hub CPU
            self._listed, self._listed_at = list(self.http.request("GET", "/api/v1/devices")), time.monotonic()
        return self._listed

    def online(self) -> int:
        return sum(1 for d in self._devices() if d["status"] == "online")

    def _poll_db(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            while not self._stop.wait(0.2):
                rows = conn.execute('SELECT rowid, "end" FROM telemetry WHERE rowid > ?', (self._rowid,)).fetchall()
                now = time.time()
                for rowid, end in rows:
                    self._rowid = max(self._rowid, rowid)
                    self._lags.append(now - end)
        finally:
            conn.close()

    def start_lag_window(self) -> None:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            self._rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM telemetry").fetchone()[0]
        self._lags = []
        self._poller = threading.Thread(target=self._poll_db, daemon=True)
        self._poller.start()

    def lags(self) -> list[float]:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
        return list(self._lags)

    def add_model(self, path: Path) -> str:
        descriptor = json.loads((path.with_suffix(".json")).read_text())
        return str(self.http.push_model(path, descriptor)["sha256"])

    def chunks_published(self) -> int:
        try:
            t = self.http.request("GET", "/api/v1/ingest")["transfer"]
        except HubApiError:
            return -1
        print(f"  chunk server: {t}", file=sys.stderr, flush=True)
        return int(t["chunks_published"])

    def deploy(self, n: int) -> None:
        body = {"model": "bench", "version": "1.0.0", "selector": "bench=scale"}
        self.http.request("POST", "/api/v1/deployments", json=body)

    def active(self, *, fresh: bool = False) -> int:
        return sum(1 for d in self._devices(0.2 if fresh else 1.0) if "bench:1.0.0" in d["active_models"])

    def close(self) -> None:
        self.http.close()
        stop(self.proc)


class ReplicaHubs(ProductHub):
    """`replicas` product hubs sharing one PostgreSQL database (`database_url`, a fresh one per run): each its own
    process, data directory (a copy of the first's: the signing key) and broker session; telemetry split by a
    shared subscription; the first up takes the leader lease, so it runs the rollout controller and the chunk
    server; blobs in one directory all replicas see (a symlink here, NFS or object storage in production).
    The API of the first replica serves the benchmark; hub CPU and RSS are the first replica's."""

    def __init__(
        self, broker: Broker, work: Path, database_url: str, replicas: int, settings: str = "{}", mqtt: str = "5"
    ) -> None:
        self.name = f"{replicas}-replicas (hub.runtime.Hub x{replicas} + REST API, one PostgreSQL, MQTT {mqtt} $share)"
        self.database_url = database_url
        self.procs: list[subprocess.Popen[str]] = []
        self.apis: list[str] = []
        first = work / "hub-r0"
        token = None
        for r in range(replicas):
            data = work / f"hub-r{r}"
            if r:
                shutil.copytree(first, data, ignore=shutil.ignore_patterns("blobs", "*.lock"))
                (data / "blobs").symlink_to(first / "blobs")
            cmd = [sys.executable, str(Path(__file__).resolve()), "_hub", "--data", str(data), "--broker", broker.url,
                   "--group", "hubs", "--mqtt", mqtt, "--replica", f"r{r}", "--database-url", database_url,
                   "--settings", settings]  # fmt: skip
            if token is not None:
                cmd += ["--token", token]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            token = info["token"]
            (first / "blobs").mkdir(exist_ok=True)
            self.apis.append(info["api"])
        self._attach(self.procs[0], self.apis[0], str(token), database_url)

    def pids(self) -> dict[str, int]:
        """The leader (the first replica up takes the lease), each follower and the PostgreSQL server (its
        postmaster, whose children are the backends serving the replicas), when it runs on this machine."""
        names = ["leader", *(f"follower {r}" if len(self.procs) > 2 else "follower" for r in range(1, len(self.procs)))]
        pids = {name: proc.pid for name, proc in zip(names, self.procs, strict=True)}
        port = urlsplit(self.database_url).port or 5432
        with contextlib.suppress(psutil.Error):
            for conn in psutil.net_connections("tcp"):
                if conn.status == psutil.CONN_LISTEN and getattr(conn.laddr, "port", None) == port and conn.pid:
                    pids["postgres"] = conn.pid
                    break
        return pids

    def _poll_db(self) -> None:
        import psycopg  # noqa: PLC0415 - only this hub needs it

        seen: set[int] = set()  # ids commit out of order across replicas: look back, count each row once
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.wait(0.2):
                rows = conn.execute('SELECT id, "end" FROM telemetry WHERE id > %s', (self._rowid,)).fetchall()
                now = time.time()
                for rowid, end in rows:
                    if rowid not in seen:
                        seen.add(rowid)
                        self._lags.append(now - end)
                if rows:
                    self._rowid = max(self._rowid, max(r[0] for r in rows) - 5000)

    def start_lag_window(self) -> None:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            self._rowid = int(conn.execute("SELECT coalesce(max(id), 0) FROM telemetry").fetchone()[0])  # type: ignore[index]
        self._lags = []
        self._poller = threading.Thread(target=self._poll_db, daemon=True)
        self._poller.start()

    def chunks_published(self) -> int:
        total = 0
        for api in self.apis:  # the leader publishes; a takeover mid-run would split the count
            with HubClient(api, self.token, timeout=120) as http:
                try:
                    total += int(http.request("GET", "/api/v1/ingest")["transfer"]["chunks_published"])
                except HubApiError:
                    return -1
        return total

    def close(self) -> None:
        self.http.close()
        stop(*self.procs)


def bench_model(work: Path, mib: int) -> Path:
    """A valid classifier padded with an unused initializer to `mib` MiB (the hub validates what it stores)."""
    import numpy as np  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    from models.samples import build_classifier, classifier_descriptor  # noqa: PLC0415

    model = build_classifier()
    base = len(model.SerializeToString())
    floats = max(0, ((mib << 20) - base) // 4 - 16)
    pad = np.random.default_rng(0).standard_normal(floats, dtype=np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "bench_padding"))
    path = work / "bench.onnx"
    path.write_bytes(model.SerializeToString())
    descriptor = classifier_descriptor().to_json() | {"name": "bench", "version": "1.0.0"}
    path.with_suffix(".json").write_text(json.dumps(descriptor))
    return path


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
    active: int
    hub_rss_mib: float
    broker_rss_mib: float
    sim_rss_mib: float
    sim_gib_in: float = 0.0
    duplicate_chunks: int = 0
    chunks_minimum: int = 0
    chunks_seen: int = 0
    broker_peak_rss_mib: float = 0.0
    chunk_count: int = 0
    raw_cpu: dict[str, float] = field(default_factory=dict)
    rollout_cpu: dict[str, float] = field(default_factory=dict)

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
        if progress is not None and now - last >= 10:
            last = now
            print(f"  {what}: {now - start:.0f}s {progress()}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    return time.monotonic() - start


def raw_fan_out(
    broker: Broker, model: Path, n: int, threads: int, pids: dict[str, int], fleet: list[str]
) -> tuple[float, dict[str, float]]:
    """Seconds for the model's chunks, published once, to reach N plain subscribers, and the CPU seconds
    of the processes `pids` and of the receivers meanwhile (`CpuMeter`). `fleet` prefixes the receivers'
    command (`_fleet_prefix`), as it does the simulator's."""
    manifest = plan_file(model)
    topic = Topics(PREFIX).chunk(manifest.sha256)  # the blob's own topic; no agent listens yet
    signal_topic = f"bench/{uuid.uuid4().hex[:8]}"
    listener = TestClient(broker.host, broker.port)
    publisher = TestClient(broker.host, broker.port)
    listener.subscribe(f"{signal_topic}/#")
    ready: set[str] = set()
    done: set[str] = set()
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "_raw", "--n", str(n), "--broker", broker.url, "--topic", topic,
        "--signal", signal_topic, "--count", str(manifest.count), "--threads", str(threads),
    ]  # fmt: skip
    proc = subprocess.Popen([*fleet, *cmd], cwd=ROOT)

    def drained(count: set[str]) -> int:
        """Take the listener's messages, then how many receivers are in `count` (`ready` or `done`)."""
        while not listener.messages.empty():
            msg = listener.messages.get_nowait()
            (ready if msg.topic.endswith("/ready") else done).add(msg.payload.decode())
        return len(count)

    try:
        _wait(lambda: drained(ready) >= n, 120 + n / 10, "raw receivers subscribed")
        data = model.read_bytes()
        meter = CpuMeter(pids | {"receivers": proc.pid})
        start = time.monotonic()
        infos = []
        for i in range(manifest.count):
            chunk = chunk_of(data, manifest, i)
            infos.append(
                publisher.client.publish(topic, encode_frame(manifest.sha256, i, manifest.count, chunk), qos=1)
            )
        _wait(lambda: drained(done) >= n, 900, "raw fan-out", lambda: f"{len(done)} done")
        return time.monotonic() - start, meter.stop()
    finally:
        listener.close()
        publisher.close()
        stop(proc)


def _stop_sim(sim: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Stop the simulator (SIGINT) and return its JSON summary ({} if it printed none)."""
    sim.send_signal(signal.SIGINT)
    try:
        out, _ = sim.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        sim.kill()
        return {}
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return dict(json.loads(lines[-1])) if lines else {}
    except ValueError:
        return {}


def run_one(n: int, kind: str, args: argparse.Namespace, work: Path) -> Result:
    work.mkdir(parents=True)
    broker = BenchBroker(find_mosquitto() or "mosquitto", work / "mq", free_port(), max_packet_size=16 << 20)
    broker.inflight = args.broker_inflight
    broker.start()
    assert broker.proc is not None
    hub: StandInHub | ProductHub
    if kind == "replicas":
        hub = ReplicaHubs(broker, work, args.databases.new(), args.replicas, args.hub_settings, args.replica_mqtt)
    else:
        hub = StandInHub(broker, work) if kind == "stand-in" else ProductHub(broker, work, args.hub_settings)
    sim: subprocess.Popen[bytes] | None = None
    hub_proc = psutil.Process(hub.pid)
    try:
        model = bench_model(work, args.blob_mib)
        hub.add_model(model)
        boot = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from sim.cli import app; app()"
        sim_cmd = [
            sys.executable, "-c", boot,
            *hub.sim_args(n, work, broker), "--json", "--telemetry-s", str(args.telemetry_s),
            "--want-retry-s", str(args.want_retry_s),
            "--threads", str(args.threads), "--connect-rate", "1000", "--seed", "1", "--cache", str(work / "cache"),
            *args.sim_args.split(),
        ]  # fmt: skip
        t0 = time.monotonic()
        sim = subprocess.Popen([*args.fleet, *sim_cmd], cwd=ROOT, stdout=subprocess.PIPE)
        _wait(lambda: hub.online() >= n, 120 + n / 5, f"{n} agents online", lambda: f"{hub.online()} online")
        online_s = time.monotonic() - t0

        time.sleep(min(args.telemetry_s, 5))  # the first windows are spread over one period
        hub.start_lag_window()
        # the hub (the leader, with replicas) with its telemetry writer process: CpuMeter counts children
        steady_pids = {"broker": broker.proc.pid, **hub.pids(), "agents": sim.pid}
        meter = CpuMeter(steady_pids)
        time.sleep(args.steady_s)
        steady = meter.stop()
        cpu_pct = 100 * steady[next(iter(hub.pids()))] / steady["wall"]
        lags = sorted(hub.lags())

        pids = {"broker": broker.proc.pid, **hub.pids(), "bench": os.getpid(), "agents": sim.pid}
        raw_s, raw_cpu = raw_fan_out(broker, model, n, args.threads, pids, args.fleet)
        print(f"  raw CPU s: {raw_cpu}", file=sys.stderr, flush=True)
        published_before = hub.chunks_published()
        manifest = plan_file(model)
        probe = Probe(broker, Topics(PREFIX), manifest.sha256)
        sampler = RssSampler(broker.proc.pid)
        meter = CpuMeter(pids)
        t_roll = time.monotonic()
        probe.expected = n
        probe.mark()
        hub.deploy(n)
        try:
            # Watching the reported topic is cheap; listing 2000 devices through the API every second took a
            # fifth of the hub's CPU during the rollout. The end is still when the hub's API lists all N.
            _wait(lambda: len(probe.active) >= n, args.rollout_timeout_s, "rollout",
                  lambda: f"{len(probe.active)} reported active")  # fmt: skip
            _wait(lambda: hub.active(fresh=True) >= n, 120, "rollout listed by the hub")
            rollout_s = time.monotonic() - t_roll
        except TimeoutError:
            rollout_s = float("nan")
        broker_peak = sampler.stop()
        rollout_cpu = meter.stop()
        joins, told = sorted(probe.want_times), sorted(probe.desired_times)
        print(
            f"  desired states published at {told[:1]} .. median {told[len(told) // 2 :][:1]} .. {told[-1:]}s; "
            f"first chunk at {probe.first_chunk_s}s, last at {probe.last_chunk_s}s, all {n} active at "
            f"{probe.all_active_s}s, listed by the hub at {rollout_s:.1f}s; first wants at {joins[:1]} .. median "
            f"{joins[len(joins) // 2 :][:1]} .. {joins[-1:]}s; 10%-steps of the first wants: "
            f"{[joins[len(joins) * k // 10] for k in range(10)] if joins else []}",
            file=sys.stderr,
            flush=True,
        )
        print(f"  first wants: {len(probe.first_want)}, later wants (s, device, chunks): {probe.rewants[:20]} "
              f"({len(probe.rewants)}), republished (s, index): {probe.republished[:40]} ({len(probe.republished)})",
              file=sys.stderr, flush=True)  # fmt: skip
        print(f"  rollout CPU s: {rollout_cpu}", file=sys.stderr, flush=True)
        probe.close()
        active = hub.active()
        sim_rss = psutil.Process(sim.pid).memory_info().rss / 2**20
        summary = _stop_sim(sim)
        return Result(
            n=n, hub=hub.name, online_s=online_s, hub_cpu_pct=cpu_pct,
            lag_p50_s=statistics.median(lags) if lags else float("nan"),
            lag_p99_s=lags[int(0.99 * (len(lags) - 1))] if lags else float("nan"),
            lag_max_s=lags[-1] if lags else float("nan"), windows=len(lags), raw_s=raw_s, rollout_s=rollout_s,
            chunks_published=hub.chunks_published() - published_before, active=active,
            hub_rss_mib=hub_proc.memory_info().rss / 2**20,
            broker_rss_mib=psutil.Process(broker.proc.pid).memory_info().rss / 2**20,
            sim_rss_mib=sim_rss, sim_gib_in=summary.get("transport", {}).get("bytes_in", 0) / 2**30,
            duplicate_chunks=summary.get("stats", {}).get("duplicate_chunks", 0),
            chunks_minimum=probe.minimum(manifest.count), chunks_seen=probe.chunks, broker_peak_rss_mib=broker_peak,
            chunk_count=manifest.count, raw_cpu=raw_cpu, rollout_cpu=rollout_cpu,
        )  # fmt: skip
    finally:
        if sim is not None:
            stop(sim, timeout=60, sig=signal.SIGINT)
        hub.close()
        broker.stop()


def _rollout(r: Result, args: argparse.Namespace) -> str:
    if r.rollout_s == r.rollout_s:  # not NaN
        return f"{r.rollout_s:.1f}"
    return f"> {args.rollout_timeout_s:.0f} ({r.active}/{r.n} active)"


def _ratio(r: Result) -> str:
    return "-" if r.ratio != r.ratio else f"{r.ratio:.2f}x"


def _published_ratio(r: Result) -> str:
    return f"{r.chunks_published / r.chunks_minimum:.2f}x" if r.chunks_minimum else "-"


def table(results: list[Result], args: argparse.Namespace) -> str:
    head = (
        f"| agents | hub | online s | hub CPU % | ingest lag p50 / p99 / max s | raw fan-out {args.blob_mib} MiB s "
        "| rollout s | rollout / raw | chunks published | agents received GiB (duplicate chunks) "
        "| broker peak RSS MiB | RSS hub / broker / sim MiB | rollout CPU s (`CpuMeter`: each process with its "
        "children; bench = this script, other = the rest of the machine) |"
    )
    cpus = (
        f"CPUs: the fleet's process (simulator, raw receivers) on CPU {args.fleet[-1]} alone, everything else on the "
        "others (--pin)"
        if args.fleet
        else "CPUs: every process shares every CPU"
    )
    lines = [cpus, "", head, "|" + " --- |" * 13]
    for r in results:
        lines.append(
            f"| {r.n} | {r.hub.split(' ')[0]} | {r.online_s:.1f} | {r.hub_cpu_pct:.0f} | {r.lag_p50_s:.2f} / "
            f"{r.lag_p99_s:.2f} / {r.lag_max_s:.2f} | {r.raw_s:.1f} | {_rollout(r, args)} | {_ratio(r)} | "
            f"{r.chunks_published} / {r.chunks_minimum} = {_published_ratio(r)} | {r.sim_gib_in:.1f} "
            f"({r.duplicate_chunks}) | {r.broker_peak_rss_mib:.0f} | "
            f"{r.hub_rss_mib:.0f} / {r.broker_rss_mib:.0f} / {r.sim_rss_mib:.0f} | {_cpu_split(r.rollout_cpu)} |"
        )
    return "\n".join(lines)


def _cpu_split(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.1f}" for name, v in cpu.items() if name != "wall") or "-"


def replica_comparison(results: list[Result]) -> str:
    """For each N run both ways: the replicas' rollout time over the single hub's (issue 24: within 1.1x), per
    round (the k-th replicas run against the k-th single-hub run of the same N) and, over rounds, the median."""
    lines = []
    for n in dict.fromkeys(r.n for r in results):
        single = [r for r in results if r.n == n and r.hub.startswith("product")]
        replicas = [r for r in results if r.n == n and r.hub.endswith("$share)")]
        ratios = []
        for k, (base, r) in enumerate(zip(single, replicas, strict=False)):
            ratios.append(r.rollout_s / base.rollout_s)
            lines.append(f"- {n} agents{f', round {k + 1}' if len(single) > 1 else ''}: rollout with "
                         f"{r.hub.split(' ')[0]} {_rollout_s(r)} s vs one hub on SQLite {_rollout_s(base)} s = "
                         f"{ratios[-1]:.2f}x; against each run's own raw fan-out ({r.raw_s:.1f} / {base.raw_s:.1f} s): "
                         f"{_ratio(r)} vs {_ratio(base)} = {r.ratio / base.ratio:.2f}x")  # fmt: skip
        if len(ratios) > 1:
            lines.append(f"- {n} agents: median over {len(ratios)} rounds {statistics.median(ratios):.2f}x "
                         f"({', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    return "\n\n" + "\n".join(lines) if lines else ""


def _rollout_s(r: Result) -> str:
    return f"{r.rollout_s:.1f}"


@contextlib.contextmanager
def _databases(p: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[Any]:
    """Fresh PostgreSQL databases for the replica runs, on the server named or one started for the run (the
    PostgreSQL helpers `benchmarks/ingest.py` uses)."""
    from benchmarks.ingest import postgres_databases  # noqa: PLC0415 - PostgreSQL only when asked for

    if not args.database_url and not args.postgres:
        p.error("--replicas needs --database-url or --postgres")
    with postgres_databases(p, args) as fresh:
        yield fresh


def _fleet_prefix(p: argparse.ArgumentParser, pin: bool) -> list[str]:
    """--pin: move this process (and so every process it starts from now on) off the first CPU, and return
    the command prefix that runs the fleet's process on that CPU alone; without --pin, no prefix."""
    if not pin:
        return []
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        p.error(f"--pin needs 2 or more CPUs, this process may use {len(cpus)}")
    taskset = shutil.which("taskset")
    if taskset is None:
        p.error("--pin needs taskset (util-linux)")
    os.sched_setaffinity(0, cpus[1:])
    return [taskset, "--cpu-list", str(cpus[0])]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_raw", "_hub"):
        (raw_worker if sys.argv[1] == "_raw" else hub_worker)(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="100,500,2000", help="comma-separated fleet sizes")
    p.add_argument("--hub", default="product", choices=["product", "stand-in"], help="which hub to measure")
    p.add_argument("--blob-mib", type=int, default=16, help="model size, MiB")
    p.add_argument("--telemetry-s", type=float, default=10.0, help="telemetry window of every agent, s")
    p.add_argument("--steady-s", type=float, default=30.0, help="how long hub CPU and ingest lag are measured, s")
    p.add_argument("--threads", type=int, default=2, help="transport threads of the simulator")
    p.add_argument("--broker-inflight", type=int, default=1, help="Mosquitto max_inflight_messages (0: unbounded)")
    p.add_argument(
        "--want-retry-s", type=float, default=DownloadSettings().rewant_after_s,
        help="agents re-want after this long without a chunk (default: the product agent's rewant_after_s)",
    )  # fmt: skip
    p.add_argument("--rollout-timeout-s", type=float, default=900.0, help="give up on a rollout after this long")
    p.add_argument("--sim-args", default="", help="extra `edgefleet sim` options, e.g. --slow-fraction 0.1")
    p.add_argument(
        "--hub-settings",
        default="{}",
        help='product hub: JSON merged into its settings, e.g. \'{"transfer": {"window_chunks": 0}}\'',
    )
    p.add_argument("--md", type=Path, help="also write the table to this markdown file")
    p.add_argument("--replicas", type=int, default=1, help="also run this many product hubs on one PostgreSQL "
                   "database after each single-hub run (needs --database-url or --postgres)")  # fmt: skip
    p.add_argument("--database-url", help="--replicas: the PostgreSQL server (a database per run is made and "
                   "dropped; the URL's own database is only used to do that)")  # fmt: skip
    p.add_argument("--replica-mqtt", default="5", choices=["3.1.1", "5"], help="--replicas: their MQTT version "
                   "(either shares telemetry through $share; paho parses every message's MQTT 5 properties in "
                   "Python)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="--replicas: run the single hub and the replicas this "
                   "many times each, alternating which goes first, and compare the k-th runs and their median "
                   "(the VM's speed drifts within minutes)")  # fmt: skip
    p.add_argument("--postgres", action="store_true", help="--replicas: start a PostgreSQL server for the run "
                   "(Debian's package, default durability settings) instead of naming one")  # fmt: skip
    p.add_argument("--pin", action="store_true", help="give the simulated fleet and the raw receivers the first "
                   "CPU and everything else (hubs, broker, PostgreSQL, this script) the others, as if devices and "
                   "hubs were separate hosts; without it all share every CPU (needs 2 or more)")  # fmt: skip
    args = p.parse_args()
    args.fleet = _fleet_prefix(p, args.pin)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    kinds = [args.hub]
    with contextlib.ExitStack() as stack:
        if args.replicas > 1:
            args.databases = stack.enter_context(_databases(p, args))
            kinds.append("replicas")
        results = []
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-scale-"))
        for n in (int(x) for x in args.agents.split(",")):
            for k in range(args.rounds):
                for kind in kinds if k % 2 == 0 else kinds[::-1]:
                    r = run_one(n, kind, args, Path(tmp) / f"n{n}-{kind}-{k}")
                    print(json.dumps(r.__dict__ | {"ratio": r.ratio}), flush=True)
                    results.append(r)
    text = table(results, args) + replica_comparison(results)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Telemetry ingestion: windows persisted per second by the hub vs the raw paho receive rate, same broker, same run.

N publisher processes send pre-encoded TelemetryWindow messages through one Mosquitto (QoS 0 by default, which
the protocol allows for telemetry; `--qos 1` for acknowledged delivery; both subscribers subscribe at QoS 1):
  raw - one plain paho subscriber on the telemetry wildcard that only counts messages;
  hub - a real Hub (its MQTT link, fleet.codec decoding, checks, batched writes into SQLite WAL with dedupe
        by (device, seq) and per-minute rollups), as `hub serve` runs it: telemetry decoded and written by
        the telemetry writer process (ingest.telemetry_process);
  hub in-process - the same with ingest.telemetry_process off (the telemetry writer is a thread of the hub);
  with --database-url: the same hub on PostgreSQL (telemetry by COPY), and --replicas `hub serve` processes
        sharing one PostgreSQL database, the telemetry split between them by a shared subscription (counted in
        the database); `--replicas 1,2` measures one `hub serve` on PostgreSQL too, the same way as two.
After each hub round the windows are counted in the database (not only in the hub's counters).
Rate = windows / (publishers released -> last message counted, or last window committed). Rounds alternate
raw and hub; the ratio is the median of the per-round ratios. Prints a markdown table.

    .venv/bin/python benchmarks/ingest.py [--publishers 2] [--windows 100000] [--rounds 3] [--qos 0]
        [--database-url postgresql://user:pw@host/postgres | --postgres] [--replicas 1,2] [--only-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from fleet.codec import encode
from fleet.histogram import LatencyRecorder
from fleet.messages import GpuSample, ModelWindow, TelemetryWindow
from fleet.topics import TopicKind, Topics
from hub.broker import LocalBroker
from hub.runtime import Hub, init_hub
from hub.settings import BrokerSettings, HubSettings, IngestSettings
from tests.support.broker import free_port
from tests.support.postgres import PostgresServer, find_postgres_bin
from tests.support.procs import stop

ROOT = Path(__file__).resolve().parent.parent
_STALLED_S = 10.0  # no new window for this long after the publishers finished: the rest was dropped


def _payloads(prefix: str, publisher: int, devices: int, count: int, run: str) -> list[tuple[str, bytes]]:
    topics = Topics(prefix)
    rec = LatencyRecorder()
    for i in range(50):
        rec.observe(1.0 + (i % 17) * 0.7)
    hist = rec.snapshot()
    out = []
    base = time.time() - 3600
    for i in range(count):
        device = f"bench-{publisher:02d}-{i % devices:04d}"
        model = ModelWindow(name="mobilenet-like", version="1.0.0", provider="CPUExecutionProvider", requests=50,
                            errors=i % 2, latency=hist, queue_depth=i % 5)  # fmt: skip
        w = TelemetryWindow(
            device_id=device, seq=i // devices, start=base + i // devices * 10, end=base + i // devices * 10 + 10,
            models=[model], cpu_percent=42.5, memory_bytes=123_456_789,
            gpus=[GpuSample(index=0, util_percent=33.0, memory_used_bytes=1 << 30)] if i % 4 == 0 else [],
        )  # fmt: skip
        out.append((topics.telemetry(device), encode(w)))
    return out


def _publisher(port: int, payloads: list[tuple[str, bytes]], qos: int, ready: Barrier, go: Event) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.wait()
    go.wait()
    info = None
    for topic, payload in payloads:
        info = c.publish(topic, payload, qos=qos)
    if info is not None:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def _run_publishers(port: int, batches: list[list[tuple[str, bytes]]], qos: int) -> tuple[list[BaseProcess], float]:
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(len(batches) + 1)
    go = ctx.Event()
    procs: list[BaseProcess] = [ctx.Process(target=_publisher, args=(port, b, qos, ready, go)) for b in batches]
    for p in procs:
        p.start()
    ready.wait()
    t0 = time.perf_counter()
    go.set()
    return procs, t0


def _wait_for_all(
    count: Callable[[], int], total: int, publishers: list[BaseProcess], who: str, pause: Callable[[int], float]
) -> int:
    """Wait until `count()` reaches `total` (sleeping `pause(count)` between looks) and return it. Raise, saying how
    many arrived, once the publishers have exited and the count has not moved for `_STALLED_S`: QoS 0 messages the
    broker dropped (a subscriber more than `max_queued_messages` behind) never come, so waiting longer is pointless.
    """
    seen, moved = -1, time.monotonic()
    while (n := count()) < total:
        now = time.monotonic()
        if n != seen:
            seen, moved = n, now
        elif now - moved > _STALLED_S and not any(p.is_alive() for p in publishers):
            raise RuntimeError(
                f"{who} got {n} of {total} windows and no more for {_STALLED_S:.0f} s after the publishers finished: "
                "the broker dropped QoS 0 messages it could not queue (fewer --windows, or --qos 1)"
            )
        time.sleep(pause(n))
    return n


def raw_rate(port: int, prefix: str, batches: list[list[tuple[str, bytes]]], qos: int) -> float:
    total = sum(len(b) for b in batches)
    count = 0
    last = 0.0

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal count, last
        count += 1
        if count == total:
            last = time.perf_counter()

    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}")
    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(Topics(prefix).subscription(TopicKind.TELEMETRY), 1)
    subscribed.wait(10)
    procs, t0 = _run_publishers(port, batches, qos)
    _wait_for_all(lambda: count, total, procs, "the raw subscriber", lambda _n: 0.01)
    for p in procs:
        p.join()
    c.disconnect()
    c.loop_stop()
    return total / (last - t0)


def hub_rate(
    broker_url: str,
    prefix: str,
    batches: list[list[tuple[str, bytes]]],
    devices: list[str],
    qos: int,
    *,
    telemetry_process: bool = True,
    database_url: str | None = None,
) -> float:
    total = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory(prefix="ef-bench-hub-") as d:
        settings = HubSettings(
            data_dir=Path(d), topic_prefix=prefix, broker=BrokerSettings(url=broker_url),
            ingest=IngestSettings(telemetry_process=telemetry_process), database_url=database_url,
        )  # fmt: skip
        init_hub(settings)
        hub = Hub(settings)
        hub.start()
        try:
            for device in devices:
                hub.devices.add(device, {"bench": "yes"}, actor="bench")
            stats = hub.store.ingest_stats
            before = stats().telemetry_persisted
            procs, t0 = _run_publishers(int(broker_url.rsplit(":", 1)[1]), batches, qos)
            _wait_for_all(lambda: stats().telemetry_persisted - before, total, procs, "the hub", lambda _n: 0.002)
            last = time.perf_counter()
            for p in procs:
                p.join()
            assert hub.ingest.rejected_total == 0, dict(hub.ingest.rejected)
            hub.store.flush()
            stored = sum(hub.store.telemetry_seq(dev, since=None, until=None).count for dev in devices)
            if stored != total:
                raise RuntimeError(f"the database holds {stored} windows, {total} were sent")
        finally:
            hub.stop()
    return total / (last - t0)


def replicas_rate(
    broker_url: str,
    prefix: str,
    batches: list[list[tuple[str, bytes]]],
    devices: list[str],
    qos: int,
    database_url: str,
    replicas: int,
    version: str = "5",
) -> float:
    """`replicas` `hub serve` processes sharing one PostgreSQL database, telemetry split by a $share subscription
    (MQTT `version`: Mosquitto, EMQX and HiveMQ accept `$share` from 3.1.1 clients too).

    Rate = windows / (publishers released -> the database counts them all)."""
    total = sum(len(b) for b in batches)
    broker = {"url": broker_url, "mqtt_version": version, "shared_group": "bench"}
    with tempfile.TemporaryDirectory(prefix="ef-bench-replicas-") as d:
        first = Path(d) / "r0"
        # as replica r0: a session under another name would keep a share of the telemetry queued (persistent)
        settings = HubSettings(
            data_dir=first, topic_prefix=prefix, broker={**broker, "replica": "r0"}, database_url=database_url
        )
        init_hub(settings)
        hub = Hub(settings)  # enrols the devices once, in the shared database
        hub.start()
        try:
            for device in devices:
                hub.devices.add(device, {"bench": "yes"}, actor="bench")
        finally:
            hub.stop()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for r in range(replicas):
                data_dir = Path(d) / f"r{r}"
                if r:
                    shutil.copytree(first, data_dir)  # the signing key travels to every replica
                env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
                env.update({
                    "PYTHONPATH": str(ROOT), "EDGEFLEET_HUB_TOPIC_PREFIX": prefix,
                    "EDGEFLEET_HUB_DATABASE_URL": database_url, "EDGEFLEET_HUB_BROKER_MQTT_VERSION": version,
                    "EDGEFLEET_HUB_BROKER_SHARED_GROUP": "bench", "EDGEFLEET_HUB_BROKER_REPLICA": f"r{r}",
                })  # fmt: skip
                port = free_port()
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "edgefleet_cli", "hub", "serve", "--data-dir", str(data_dir),
                     "--broker-url", broker_url, "--host", "127.0.0.1", "--port", str(port)],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(Path(d) / f"r{r}.log").open("wb"),
                ))  # fmt: skip
                _wait_healthy(f"http://127.0.0.1:{port}", procs[-1])
            with psycopg.connect(database_url, autocommit=True) as conn:

                def count() -> int:
                    row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
                    return int(row[0]) if row else 0

                pubs, t0 = _run_publishers(int(broker_url.rsplit(":", 1)[1]), batches, qos)
                # count(*) is not free (~5 ms per 100k rows): poll slowly, then often near the end
                stored = _wait_for_all(count, total, pubs, "the replicas", lambda n: 0.25 if n < 0.95 * total else 0.02)
                last = time.perf_counter()
                for p in pubs:
                    p.join()
                if stored != total:
                    raise RuntimeError(f"the database holds {stored} windows, {total} were sent")
        finally:
            stop(*procs)
    return total / (last - t0)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a replica exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json()["mqtt_connected"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the replica at {url} did not become healthy")


class FreshDatabases:
    """A new database per hub round on the PostgreSQL server of `url` (dropped afterwards)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def new(self) -> str:
        name = f"ef_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.made.append(name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def drop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_databases(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[FreshDatabases | None]:
    """Fresh databases on the PostgreSQL server of `--database-url`, or on one started for the run (`--postgres`;
    Debian's package, default durability); None when neither was asked for. Dropped (and stopped) at the end."""
    server = None
    if args.postgres:
        bindir = find_postgres_bin()
        if bindir is None:
            ap.error("--postgres: PostgreSQL is not installed (scripts/ensure-postgresql.sh)")
        server = PostgresServer(bindir, durable=True)
        server.start()
        args.database_url = server.url()
    fresh = FreshDatabases(args.database_url) if args.database_url else None
    try:
        yield fresh
    finally:
        if fresh is not None:
            fresh.drop()
        if server is not None:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1), help="QoS the publishers send at")
    ap.add_argument("--devices", type=int, default=250, help="devices per publisher")
    ap.add_argument("--windows", type=int, default=100_000, help="windows per round, all publishers together")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of raw then hub")
    ap.add_argument("--database-url", help="also measure on this PostgreSQL server (a database per round is made "
                    "and dropped; the URL's own database is only used to do that)")  # fmt: skip
    ap.add_argument("--postgres", action="store_true", help="start a PostgreSQL server for the run (Debian's "
                    "package, default durability settings) instead of naming one with --database-url")  # fmt: skip
    ap.add_argument("--replicas", default="2", help="hub serve processes on PostgreSQL (with --database-url or "
                    "--postgres); a comma-separated list measures each count")  # fmt: skip
    ap.add_argument("--replica-mqtt", default="5,3.1.1", help="MQTT versions the replicas speak, one path each")
    ap.add_argument("--only-postgres", action="store_true", help="skip the SQLite paths")
    args = ap.parse_args()
    per = args.windows // args.publishers
    with postgres_databases(ap, args) as fresh:
        measure(args, per, fresh)


RatePath = Callable[[str, list[list[tuple[str, bytes]]], list[str]], float]
"""A measured path: (broker URL, publisher batches, device ids) -> windows per second."""


def measure(args: argparse.Namespace, per: int, fresh: FreshDatabases | None) -> None:
    """Rounds of raw then every path; prints the table."""
    paths: dict[str, RatePath] = {}
    if not args.only_postgres:
        paths["hub: decode, check, persist (SQLite WAL, rollups), telemetry writer process (default)"] = (
            lambda url, b, devs: hub_rate(url, _prefix(b), b, devs, args.qos)
        )
        paths["hub, SQLite, writer thread (`ingest.telemetry_process` off)"] = lambda url, b, devs: hub_rate(
            url, _prefix(b), b, devs, args.qos, telemetry_process=False
        )
    if fresh is not None:

        def replicas_path(n: int, v: str) -> RatePath:
            return lambda url, b, devs: replicas_rate(url, _prefix(b), b, devs, args.qos, fresh.new(), n, v)

        paths["hub, PostgreSQL (COPY, rollups), telemetry writer process"] = lambda url, b, devs: hub_rate(
            url, _prefix(b), b, devs, args.qos, database_url=fresh.new()
        )
        for version in args.replica_mqtt.split(","):
            for count in (int(x) for x in args.replicas.split(",")):
                what = f"{count} hub replica{'s' if count > 1 else ''}"
                name = f"{what} (`hub serve`, MQTT {version} $share), one PostgreSQL"
                paths[name] = replicas_path(count, version)
    raws: list[float] = []
    rates: dict[str, list[float]] = {k: [] for k in paths}
    ratios: dict[str, list[float]] = {k: [] for k in paths}
    with tempfile.TemporaryDirectory(prefix="ef-bench-mq-") as d:
        broker = LocalBroker(BrokerSettings(local_port=0), Path(d))
        broker.start()
        try:
            for r in range(args.rounds):
                prefix = f"bench/{uuid.uuid4().hex[:8]}/fleet/v1"
                batches = [_payloads(prefix, p, args.devices, per, str(r)) for p in range(args.publishers)]
                devices = sorted({t.split("/")[-2] for b in batches for t, _ in b})
                raw = raw_rate(broker.port, prefix, batches, args.qos)
                raws.append(raw)
                line = [f"round {r + 1}: raw {raw:,.0f}/s"]
                for name, run in paths.items():
                    other = f"bench/{uuid.uuid4().hex[:8]}/fleet/v1"
                    rate = run(broker.url, [[(t.replace(prefix, other), p) for t, p in b] for b in batches], devices)
                    rates[name].append(rate)
                    ratios[name].append(rate / raw)
                    line.append(f"[{len(line)}] {rate:,.0f}/s ({rate / raw:.2f})")
                print("; ".join(line), f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        finally:
            broker.stop()
    size = len(batches[0][0][1])
    machine = f"{platform.machine()}, {mp.cpu_count()} cores, Mosquitto, publish QoS {args.qos}"
    print(f"## Telemetry ingestion ({machine})\n")
    print(f"{args.publishers} publisher processes, {args.publishers * args.devices} devices, "
          f"{per * args.publishers:,} windows of ~{size} B per round, {args.rounds} rounds (median).\n")  # fmt: skip
    print("| path | windows/s | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| raw paho subscriber (receive only) | {statistics.median(raws):,.0f} | 1.00 |")
    for i, name in enumerate(paths, 1):
        print(f"| [{i}] {name} | {statistics.median(rates[name]):,.0f} | {statistics.median(ratios[name]):.2f} |")


def _prefix(batches: list[list[tuple[str, bytes]]]) -> str:
    return batches[0][0][0].rsplit("/dev/", 1)[0]


if __name__ == "__main__":
    main()

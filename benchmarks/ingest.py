"""Telemetry ingestion: windows persisted per second by the hub vs the raw paho receive rate, same broker, same run.

N publisher processes send pre-encoded TelemetryWindow messages through one Mosquitto (QoS 0 by default, which
the protocol allows for telemetry; `--qos 1` for acknowledged delivery; both subscribers subscribe at QoS 1):
  raw - one plain paho subscriber on the telemetry wildcard that only counts messages;
  hub - a real Hub (its MQTT link, fleet.codec decoding, checks, batched writes into SQLite WAL with dedupe
        by (device, seq) and per-minute rollups), as `hub serve` runs it: telemetry decoded and written by
        the telemetry writer process (ingest.telemetry_process);
  hub in-process - the same with ingest.telemetry_process off (the telemetry writer is a thread of the hub).
After each hub round the windows are counted in the database (not only in the hub's counters).
Rate = windows / (publishers released -> last message counted, or last window committed). Rounds alternate
raw and hub; the ratio is the median of the per-round ratios. Prints a markdown table.

    .venv/bin/python benchmarks/ingest.py [--publishers 2] [--windows 100000] [--rounds 3] [--qos 0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.codec import encode
from fleet.histogram import LatencyRecorder
from fleet.messages import GpuSample, TelemetryWindow
from fleet.topics import TopicKind, Topics
from hub.broker import LocalBroker
from hub.runtime import Hub, init_hub
from hub.settings import BrokerSettings, HubSettings, IngestSettings


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
        w = TelemetryWindow(
            device_id=device, seq=i // devices, start=base + i // devices * 10, end=base + i // devices * 10 + 10,
            model="mobilenet-like", model_version="1.0.0", provider="CPUExecutionProvider", requests=50, errors=i % 2,
            latency=hist, queue_depth=i % 5, cpu_percent=42.5, memory_bytes=123_456_789,
            gpus=[GpuSample(index=0, util_percent=33.0, memory_used_bytes=1 << 30)] if i % 4 == 0 else [],
        )  # fmt: skip
        out.append((topics.telemetry(device), encode(w)))
    return out


def _publisher(port: int, payloads: list[tuple[str, bytes]], qos: int, ready: mp.Barrier, go: mp.Event) -> None:  # type: ignore[type-arg]
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


def _run_publishers(port: int, batches: list[list[tuple[str, bytes]]], qos: int) -> tuple[list[mp.Process], float]:
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(len(batches) + 1)
    go = ctx.Event()
    procs = [ctx.Process(target=_publisher, args=(port, b, qos, ready, go)) for b in batches]
    for p in procs:
        p.start()
    ready.wait()
    t0 = time.perf_counter()
    go.set()
    return procs, t0


def raw_rate(port: int, prefix: str, batches: list[list[tuple[str, bytes]]], qos: int) -> float:
    total = sum(len(b) for b in batches)
    done = threading.Event()
    count = 0
    last = 0.0

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal count, last
        count += 1
        if count == total:
            last = time.perf_counter()
            done.set()

    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}")
    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(Topics(prefix).subscription(TopicKind.TELEMETRY), 1)
    subscribed.wait(10)
    procs, t0 = _run_publishers(port, batches, qos)
    if not done.wait(300):
        raise RuntimeError(f"raw subscriber got {count} of {total}")
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
) -> float:
    total = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory(prefix="ef-bench-hub-") as d:
        settings = HubSettings(
            data_dir=Path(d), topic_prefix=prefix, broker=BrokerSettings(url=broker_url),
            ingest=IngestSettings(telemetry_process=telemetry_process),
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
            deadline = time.monotonic() + 300
            while stats().telemetry_persisted - before < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hub persisted {stats().telemetry_persisted - before} of {total}")
                time.sleep(0.002)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1), help="QoS the publishers send at")
    ap.add_argument("--devices", type=int, default=250, help="devices per publisher")
    ap.add_argument("--windows", type=int, default=100_000, help="windows per round, all publishers together")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of raw then hub")
    args = ap.parse_args()
    per = args.windows // args.publishers
    with tempfile.TemporaryDirectory(prefix="ef-bench-mq-") as d:
        broker = LocalBroker(BrokerSettings(local_port=0), Path(d))
        broker.start()
        try:
            raws, hubs, ratios, inprocs, inratios = [], [], [], [], []
            for r in range(args.rounds):
                prefix = f"bench/{uuid.uuid4().hex[:8]}/fleet/v1"
                batches = [_payloads(prefix, p, args.devices, per, str(r)) for p in range(args.publishers)]
                devices = sorted({t.split("/")[-2] for b in batches for t, _ in b})
                raw = raw_rate(broker.port, prefix, batches, args.qos)
                prefix2 = f"bench/{uuid.uuid4().hex[:8]}/fleet/v1"
                batches2 = [[(t.replace(prefix, prefix2), p) for t, p in b] for b in batches]
                hub = hub_rate(broker.url, prefix2, batches2, devices, args.qos)
                prefix3 = f"bench/{uuid.uuid4().hex[:8]}/fleet/v1"
                batches3 = [[(t.replace(prefix, prefix3), p) for t, p in b] for b in batches]
                inproc = hub_rate(broker.url, prefix3, batches3, devices, args.qos, telemetry_process=False)
                raws.append(raw)
                hubs.append(hub)
                ratios.append(hub / raw)
                inprocs.append(inproc)
                inratios.append(inproc / raw)
                print(f"round {r + 1}: raw {raw:,.0f}/s, hub {hub:,.0f}/s ({hub / raw:.2f}), "
                      f"hub in-process {inproc:,.0f}/s ({inproc / raw:.2f})", file=sys.stderr)  # fmt: skip
        finally:
            broker.stop()
    size = len(batches[0][0][1])
    print(f"## Telemetry ingestion ({platform.machine()}, {mp.cpu_count()} cores, Mosquitto, publish QoS {args.qos})\n")
    print(f"{args.publishers} publisher processes, {args.publishers * args.devices} devices, "
          f"{per * args.publishers:,} windows of ~{size} B per round, {args.rounds} rounds (median).\n")  # fmt: skip
    print("| path | windows/s | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| raw paho subscriber (receive only) | {statistics.median(raws):,.0f} | 1.00 |")
    print(f"| hub: decode, check, persist (SQLite WAL, rollups), telemetry writer process (default) "
          f"| {statistics.median(hubs):,.0f} | {statistics.median(ratios):.2f} |")  # fmt: skip
    print(f"| hub, writer thread (`ingest.telemetry_process` off) | {statistics.median(inprocs):,.0f} "
          f"| {statistics.median(inratios):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

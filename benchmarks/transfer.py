"""Blob fan-out over Mosquitto: fleet's chunk codec + verifying receiver vs plain paho, same bytes, same run.

For N receivers, a 16 MiB blob is published once as 256 KiB chunks (QoS 1) on one topic:
  raw   - plain paho subscribers that only count bytes;
  fleet - paho subscribers feeding fleet.ChunkReceiver (per-chunk sha256 against the manifest, pwrite into a
          partial file, resume bitmap, fsync and rename into place at the end);
  floor - paho subscribers that do only the hashing design.md requires of every receiver: one sha256 pass
          per received byte (each chunk against the signed list), no disk. No verifying receiver beats it.
Receivers live in a few worker processes (as agents would be separate processes) so one GIL is not the
bottleneck. Time = first publish to the last receiver done. Prints a markdown table with the ratio.

    .venv/bin/python benchmarks/transfer.py [--sizes-mib 16] [--receivers 1,10,50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import platform
import shutil
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

from fleet.chunks import ChunkReceiver, decode_frame, iter_frames
from fleet.messages import BlobManifest
from fleet.plan import plan_file
from fleet.topics import Topics
from tests.support.broker import Broker, find_mosquitto, free_port

WORKDIR: str | None = None


def _client(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"b-{uuid.uuid4().hex[:10]}")
    c.max_inflight_messages_set(64)
    c.connect("127.0.0.1", port)
    return c


def worker(
    port: int,
    topic: str,
    count: int,
    mode: str,
    manifest_json: str,
    workdir: str,
    ready: mp.Queue[bool],
    done: mp.Queue[float],
) -> None:
    manifest = BlobManifest.model_validate_json(manifest_json)
    clients = []
    finished = threading.Event()
    remaining = [count]
    lock = threading.Lock()

    def make(i: int) -> mqtt.Client:
        c = _client(port)
        if mode == "raw":
            state = {"n": 0, "bytes": 0}

            def on_raw(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
                state["n"] += 1
                state["bytes"] += len(msg.payload)
                if state["n"] == manifest.count:
                    assert state["bytes"] == manifest.size
                    finish()

            c.on_message = on_raw
        elif mode == "floor":
            seen = [0]

            def on_floor(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
                frame = decode_frame(bytes(msg.payload))
                assert hashlib.sha256(frame.data).hexdigest() == manifest.chunks[frame.index]
                seen[0] += 1
                if seen[0] == manifest.count:
                    finish()

            c.on_message = on_floor
        else:
            rx = ChunkReceiver(manifest, Path(workdir) / f"r{os.getpid()}-{i}")

            def on_chunk(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
                rx.accept(bytes(msg.payload))
                if rx.complete:
                    rx.finish(Path(workdir) / f"r{os.getpid()}-{i}" / "blob")
                    finish()

            c.on_message = on_chunk
        return c

    def finish() -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.put(time.perf_counter())
                finished.set()

    subscribed = threading.Semaphore(0)
    for i in range(count):
        c = make(i)
        c.on_subscribe = lambda *_a: subscribed.release()
        c.subscribe(topic, qos=1)
        c.loop_start()
        clients.append(c)
    for _ in range(count):
        subscribed.acquire(timeout=30)
    ready.put(True)
    finished.wait(300)
    for c in clients:
        c.disconnect()
        c.loop_stop()


def run_once(port: int, blob: Path, manifest: BlobManifest, n: int, mode: str, procs: int) -> float:
    topic = Topics(f"bench/{uuid.uuid4().hex[:8]}").chunk(manifest.sha256)
    workdir = tempfile.mkdtemp(prefix="transfer-", dir=WORKDIR or blob.parent)
    ctx = mp.get_context("fork")
    ready: mp.Queue[bool] = ctx.Queue()
    done: mp.Queue[float] = ctx.Queue()
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    shares = [s for s in shares if s]
    workers = [
        ctx.Process(target=worker, args=(port, topic, s, mode, manifest.model_dump_json(), workdir, ready, done))
        for s in shares
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60)
    pub = _client(port)
    pub.loop_start()
    if mode == "raw":
        payloads = []
        with blob.open("rb") as f:
            while chunk := f.read(manifest.chunk_size):
                payloads.append(chunk)
        start = time.perf_counter()
        infos = [pub.publish(topic, p, qos=1) for p in payloads]
    else:
        start = time.perf_counter()
        infos = [pub.publish(topic, frame, qos=1) for frame in iter_frames(blob, manifest)]
    for info in infos:
        info.wait_for_publish(60)
    end: float = max(done.get(timeout=300) for _ in workers)
    for w in workers:
        w.join(30)
    pub.disconnect()
    pub.loop_stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--receivers", default="1,10,50")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--procs", type=int, default=4, help="worker processes hosting the receivers")
    parser.add_argument("--workdir", default=None, help="where receivers write (default: a temp dir on disk)")
    args = parser.parse_args()
    global WORKDIR
    WORKDIR = args.workdir
    load_before = f"{os.getloadavg()[0]:.2f}"
    binary = find_mosquitto()
    if binary is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        broker = Broker(binary, Path(tmp) / "mosquitto", free_port(), max_packet_size=64 << 20)
        broker.start()
        try:
            blob = Path(tmp) / "blob.bin"
            blob.write_bytes(os.urandom(args.size_mib << 20))
            manifest = plan_file(blob, args.chunk_kib << 10, chunking="fixed")  # raw reads the same 256 KiB pieces
            rows = []
            for n in (int(x) for x in args.receivers.split(",")):
                raw, fleet, floor = [], [], []
                for _ in range(args.repeat):  # interleave so machine noise hits all alike
                    raw.append(run_once(broker.port, blob, manifest, n, "raw", args.procs))
                    fleet.append(run_once(broker.port, blob, manifest, n, "fleet", args.procs))
                    floor.append(run_once(broker.port, blob, manifest, n, "floor", args.procs))
                per_round = statistics.median(f / h for f, h in zip(fleet, floor, strict=True))
                rows.append((n, statistics.median(raw), statistics.median(fleet), statistics.median(floor), per_round))
        finally:
            broker.stop()
    print(f"# transfer: {args.size_mib} MiB blob, {args.chunk_kib} KiB chunks, QoS 1, median of {args.repeat}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(f"# receivers in {args.procs} worker processes")
    print(f"# load average before: {load_before}, after: {os.getloadavg()[0]:.2f}")
    print(
        "| receivers | raw paho (s) | one-pass floor (s) | floor / raw | fleet receiver (s) | fleet / raw "
        "| fleet / floor | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, r, f, h, ratio in rows:
        print(f"| {n} | {r:.2f} | {h:.2f} | {h / r:.2f} | {f:.2f} | {f / r:.2f} | {ratio:.2f} | <= 1.15 |")
    print("# fleet / floor: median of the per-round ratios (rounds interleave raw, fleet and floor)")


if __name__ == "__main__":
    main()

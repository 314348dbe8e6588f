"""Inference API benchmark (issue 6): raw session.run vs the HTTP API, at 1 and 16 clients, and during swaps.

    python benchmarks/serve.py [--size 128] [--seconds 3] [--intra-op 0] [--provider cpu|cuda]

The server runs in a child process (uvicorn + uvloop + httptools, as in the agent); the load generator is
this process (raw keep-alive HTTP/1.1 over sockets, request bytes prepared once), sharing the same cores.
Every ratio compares against raw `session.run` measured in the same run on the same model:

- p50 at 1 client for binary tensors, JSON tensors and the image endpoint (raw image = preprocess +
  session.run + top-k in-process);
- throughput at 16 clients (binary tensors, image endpoint) vs raw `session.run` at the batch size the
  server batches to (`--max-batch`, default 8; image raw adds preprocessing of each image);
- p99 at 16 clients while the server loads and activates new versions vs steady p99, with the sample
  model and with one ten times its size (`build_classifier(width=3.4)`, 16 MB);
- server-side time (Triton's statistics, `/v2/models/{name}/stats`) of a 1x3x320x320 FP32 input sent as
  JSON vs binary, and where one binary request's time goes (the statistics' parts, then HTTP).

`--provider cuda` needs onnxruntime-gpu with CUDAExecutionProvider; without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, percentile, tempdir
from models.cli import write_model
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions, available_providers
from models.postprocess import top_k
from models.preprocess import preprocess
from models.samples import build_classifier, classifier_descriptor
from tests.support.inference import binary_body, json_body, raw_post

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


# --- server child ------------------------------------------------------------------------------------


def _server(conn: Any, paths: list[str], options: dict[str, Any], settings: dict[str, Any]) -> None:
    from agent.api import ApiServer, ApiSettings, ModelRepository  # noqa: PLC0415
    from fleet.messages import AppliedModel  # noqa: PLC0415

    def load(i: int) -> tuple[Engine, AppliedModel, ModelDescriptor]:
        p = Path(paths[i % len(paths)])
        d = ModelDescriptor.load(p.with_suffix(".yaml"))
        assert d.sha256 is not None
        e = Engine.load(p, d, EngineOptions(**options))
        return e, AppliedModel(name=d.name, version=d.version, sha256=d.sha256, provider=e.active_provider), d

    slot = ModelRepository()
    server = ApiServer(ApiSettings(port=0, **settings), slot)
    server.start()
    preloaded = [load(0), load(1)]
    slot.activate(*preloaded[0])
    conn.send(server.url)
    swaps = 0
    while True:
        cmd = conn.recv()
        if cmd in ("swap", "reload"):
            swaps += 1
            if cmd == "swap":  # the serving side's part: activate an engine the agent already loaded
                slot.activate(*preloaded[swaps % 2])
            else:  # with the agent's part: load, warm up, golden-check, then activate
                slot.activate(*load(swaps))
            conn.send("ok")
        else:
            server.stop()
            conn.send("stopped")
            return


# --- raw HTTP/1.1 client -----------------------------------------------------------------------------


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


class SyncClient:
    """One keep-alive connection; `call` sends prepared bytes and returns (status, body)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, req: bytes) -> tuple[int, bytes]:
        self.sock.sendall(req)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        n = _content_length(head)
        while len(rest) < n:
            rest += self.sock.recv(1 << 20)
        self.buf = rest[n:]
        return int(head[9:12]), rest[:n]

    def close(self) -> None:
        self.sock.close()


async def _async_client(url: str, req: bytes, until: float, lat: list[tuple[float, float, int]]) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_content_length(head))
        lat.append((t0, time.perf_counter() - t0, int(head[9:12])))
    writer.close()


def load(url: str, req: bytes, clients: int, seconds: float, during: Any = None) -> list[tuple[float, float, int]]:
    """`clients` concurrent connections for `seconds`; (start, latency s, status) per request."""
    import uvloop  # noqa: PLC0415

    lat: list[tuple[float, float, int]] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        tasks = [asyncio.create_task(_async_client(url, req, until, lat)) for _ in range(clients)]
        if during is not None:
            await asyncio.get_running_loop().run_in_executor(None, during)
        await asyncio.gather(*tasks)

    uvloop.run(main())
    return lat


# --- measurements ------------------------------------------------------------------------------------


def server_stats(client: SyncClient, name: str) -> dict[str, dict[str, int]]:
    """The model's cumulative inference statistics (Triton's `inference_stats`) from the server."""
    status, body = client.call(f"GET /v2/models/{name}/stats HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    assert status == 200, body
    stats: dict[str, dict[str, int]] = orjson.loads(body)["model_stats"][-1]["inference_stats"]
    return stats


def server_ms(client: SyncClient, name: str, req: bytes, n: int) -> dict[str, float]:
    """Mean server-side milliseconds per request of `n` requests, in total and by part, and the client's mean
    ("client": send to last byte received) over the same requests."""
    for _ in range(3):
        client.call(req)
    before = server_stats(client, name)
    t0 = time.perf_counter()
    for _ in range(n):
        status, _ = client.call(req)
        assert status == 200, status
    seen = (time.perf_counter() - t0) * 1e3 / n
    after = server_stats(client, name)
    count = after["success"]["count"] - before["success"]["count"]
    out = {k: (after[k]["ns"] - before[k]["ns"]) / count / 1e6 for k in after if after[k]["count"]}
    out["client"] = seen
    return out


def binary_request(path: str, x: np.ndarray) -> bytes:
    return raw_post(path, *binary_body({"image": x}, binary_outputs=["logits"]))


def json_request(path: str, x: np.ndarray) -> bytes:
    return raw_post(path, json_body({"image": x}))


def batch_sizes(metrics: bytes) -> dict[str, int]:
    """Engine runs per batch-size bucket (le=N), summed over versions, from the server's /metrics."""
    total: dict[str, float] = {}
    for line in metrics.decode().splitlines():
        if line.startswith("edgefleet_api_batch_size_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            total[le] = total.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    out, prev = {}, 0.0
    for le, cum in total.items():  # cumulative buckets in increasing order
        if cum - prev:
            out[f"<={le}"] = int(cum - prev)
        prev = cum
    return out


def throughput(lat: list[tuple[float, float, int]]) -> float:
    ok = [t for t in lat if t[2] == 200]
    if len(ok) < 2:
        return 0.0
    return len(ok) / (max(s + d for s, d, _ in ok) - min(s for s, _, _ in ok))


def runs_for(fn: Any, seconds: float) -> int:
    fn()
    n = 0
    until = time.perf_counter() + seconds
    while True:  # at least one timed run
        fn()
        n += 1
        if time.perf_counter() >= until:
            return n


def p50_raw(fn: Any, n: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def p50_api(client: SyncClient, req: bytes, n: int) -> float:
    for _ in range(10):
        status, _ = client.call(req)
        assert status == 200, status
    return p50_raw(lambda: client.call(req), n)


def jpeg(width: int, height: int) -> bytes:
    from PIL import Image  # noqa: PLC0415

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def profile_rows(parts: dict[str, float]) -> list[str]:
    """Where one binary request's time goes: the server's parts, then what is outside the handler."""
    api = parts["client"]
    names = {
        "compute_input": "read body done -> tensors (parse)",
        "queue": "waiting for the engine (batcher)",
        "compute_infer": "engine run (session.run)",
        "compute_output": "response body (encode)",
    }
    rows = [f"| {label} | {parts.get(k, 0.0):.3f} | {parts.get(k, 0.0) / api:.0%} |" for k, label in names.items()]
    inside = parts.get("success", 0.0)
    rest = inside - sum(parts.get(k, 0.0) for k in names)
    rows.append(f"| rest of the handler (body read, slot, metrics, counters) | {rest:.3f} | {rest / api:.0%} |")
    outside = api - inside
    rows.append(f"| outside the handler: HTTP parsing, ASGI, loopback, client | {outside:.3f} | {outside / api:.0%} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="model input height and width (pixels)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each 16-client run")
    parser.add_argument("--iterations", type=int, default=300, help="timed requests per 1-client measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for throughput and swap")
    parser.add_argument("--max-batch", type=int, default=8, help="server dynamic batching: largest batch")
    parser.add_argument("--intra-op", type=int, default=0, help="onnxruntime intra-op threads (0 = one per core)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu", help="execution provider")
    parser.add_argument("--rounds", type=int, default=5, help="raw/API alternations (medians are compared)")
    parser.add_argument("--swaps", type=int, default=4, help="versions loaded and activated during the swap run")
    args = parser.parse_args(argv)

    provider = PROVIDERS[args.provider]
    if provider not in available_providers():
        print(f"{provider} is not available in this onnxruntime build ({available_providers()}); nothing to measure.")
        return 0
    options = {"providers": (provider,), "intra_op_threads": args.intra_op}
    with tempdir() as tmp:
        sample = classifier_descriptor(height=args.size, width=args.size)
        paths = [
            str(
                write_model(
                    build_classifier(seed=i),
                    sample.model_copy(update={"version": f"{i + 1}.0.0"}),
                    Path(tmp),
                    f"v{i + 1}",
                )[0]
            )
            for i in range(2)
        ]
        d = ModelDescriptor.load(Path(paths[0]).with_suffix(".yaml"))
        engine = Engine.load(paths[0], d, EngineOptions(**options))
        session = engine.session
        x1 = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        xb = np.repeat(x1, args.max_batch, axis=0)
        image = jpeg(640, 480)

        def raw_image() -> None:
            t, _ = preprocess(image, d.input)
            top_k(session.run(None, {"image": t})[0], 5, labels=d.labels)

        def raw_image_batch() -> None:
            t = np.concatenate([preprocess(image, d.input)[0] for _ in range(args.max_batch)])
            top_k(session.run(None, {"image": t})[0], 5, labels=d.labels)

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        settings = {"max_batch": args.max_batch, "max_queue": 1024}
        proc = ctx.Process(target=_server, args=(child, paths, options, settings), daemon=True)
        proc.start()
        url = parent.recv()
        path = f"/v2/models/{d.name}/infer"
        binary, js = binary_request(path, x1), json_request(path, x1)
        img = raw_post(f"/v1/models/{d.name}:predict", image, {"Content-Type": "image/jpeg"})

        # 1 client: interleave raw and API in rounds so background load hits both alike
        client = SyncClient(url)
        rows: dict[str, list[float]] = {k: [] for k in ("raw", "binary", "json", "raw_img", "image")}
        n = max(args.iterations // args.rounds, 20)
        for _ in range(args.rounds):
            rows["raw"].append(p50_raw(lambda: session.run(None, {"image": x1}), n))
            rows["binary"].append(p50_api(client, binary, n))
            rows["json"].append(p50_api(client, js, n))
            rows["raw_img"].append(p50_raw(raw_image, n))
            rows["image"].append(p50_api(client, img, n))
        med = {k: statistics.median(v) for k, v in rows.items()}
        # where one binary request's time goes (server-side parts), and JSON vs binary at 1x3x320x320
        profile = server_ms(client, d.name, binary, n)
        x320 = np.random.default_rng(1).standard_normal((1, 3, 320, 320)).astype(np.float32)
        big: dict[str, list[float]] = {"binary": [], "json": [], "json_parse": [], "binary_run": []}
        for _ in range(args.rounds):
            b320 = server_ms(client, d.name, binary_request(path, x320), 10)
            j320 = server_ms(client, d.name, json_request(path, x320), 10)
            big["binary"].append(b320["success"])
            big["binary_run"].append(b320["compute_infer"])
            big["json"].append(j320["success"])
            big["json_parse"].append(j320["compute_input"])
        big_ms = {k: statistics.median(v) for k, v in big.items()}
        client.close()

        # throughput: raw and API alternate in rounds, medians compared
        part = args.seconds / args.rounds
        tputs: dict[str, list[float]] = {k: [] for k in ("raw", "api", "raw_img", "api_img")}
        cpu: dict[str, list[float]] = {k: [] for k in tputs}  # CPU ms (every process involved) per image
        steady: list[tuple[float, float, int]] = []
        steady_img: list[tuple[float, float, int]] = []
        server = psutil.Process(proc.pid)

        def cpu_now() -> float:
            t = server.cpu_times()
            return time.process_time() + float(t.user + t.system)

        for _ in range(args.rounds):
            for kind, raw_fn, req, into in (
                ("", lambda: session.run(None, {"image": xb}), binary, steady),
                ("_img", raw_image_batch, img, steady_img),
            ):
                c0 = time.process_time()
                n = args.max_batch * runs_for(raw_fn, part)
                cpu["raw" + kind].append((time.process_time() - c0) * 1e3 / n)
                tputs["raw" + kind].append(n / part)
                c0 = cpu_now()
                lat = load(url, req, args.clients, part)
                cpu["api" + kind].append((cpu_now() - c0) * 1e3 / max(len(lat), 1))
                into.extend(lat)
                tputs["api" + kind].append(throughput(lat))
        tput = {k: statistics.median(v) for k, v in tputs.items()}
        cpu_ms = {k: statistics.median(v) for k, v in cpu.items()}

        windows: dict[str, list[tuple[float, float]]] = {"swap": [], "reload": []}

        def swapper(cmd: str, n: int, seconds: float) -> Any:
            def run() -> None:
                time.sleep(seconds * 0.1)
                for _ in range(n):
                    t0 = time.perf_counter()
                    parent.send(cmd)
                    parent.recv()
                    windows[cmd].append((t0, time.perf_counter() + 0.1))
                    time.sleep(seconds * 0.8 / n)

            return run

        # steady and swap runs alternate in rounds, so background load hits all of them alike
        base: list[tuple[float, float, int]] = []
        during: dict[str, list[tuple[float, float, int]]] = {"swap": [], "reload": []}
        for _ in range(2):
            base += load(url, binary, args.clients, args.seconds / 2)
            for cmd in during:
                during[cmd] += load(
                    url, binary, args.clients, args.seconds / 2, during=swapper(cmd, args.swaps // 2, args.seconds / 2)
                )
        probe = SyncClient(url)
        _, metrics = probe.call(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        probe.close()
        parent.send("stop")
        parent.recv()
        proc.join(10)

        # load + warm-up + activate with a model ten times the sample's size, steady and reload alternating
        desc = classifier_descriptor(height=args.size, width=args.size)
        large = [
            str(write_model(build_classifier(seed=i, width=3.4), desc.model_copy(update={"version": f"{i + 1}.1.0"}),
                            Path(tmp), f"large{i + 1}")[0])
            for i in range(2)
        ]  # fmt: skip
        large_mb = Path(large[0]).stat().st_size / 1e6
        proc = ctx.Process(target=_server, args=(child, large, options, settings), daemon=True)
        proc.start()
        url = parent.recv()
        small_windows = {k: list(v) for k, v in windows.items()}
        windows["reload"].clear()
        large_base: list[tuple[float, float, int]] = []
        large_reload: list[tuple[float, float, int]] = []
        for _ in range(2):
            large_base += load(url, binary, args.clients, args.seconds / 2)
            large_reload += load(
                url, binary, args.clients, args.seconds / 2, during=swapper("reload", args.swaps // 2, args.seconds / 2)
            )
        parent.send("stop")
        parent.recv()
        proc.join(10)

    def around(lat: list[tuple[float, float, int]], spans: list[tuple[float, float]]) -> list[float]:
        """Latencies of requests in flight during a swap or started up to 100 ms after it."""
        return [d for s, d, _ in lat if any(s <= b and s + d >= a for a, b in spans)]

    large_steady_p99 = percentile([d for _, d, _ in large_base], 99) * 1e3
    large_lat = around(large_reload, windows["reload"])
    large_p99 = percentile(large_lat, 99) * 1e3 if large_lat else float("nan")
    everything = steady + steady_img + base + during["swap"] + during["reload"] + large_base + large_reload
    failed = sum(1 for t in everything if t[2] != 200)
    steady_p99 = percentile([d for _, d, _ in base], 99) * 1e3
    swap_lat = {k: around(v, small_windows[k]) for k, v in during.items()}
    swap_p99 = {k: percentile(v, 99) * 1e3 if v else float("nan") for k, v in swap_lat.items()}
    d_bin, d_json, d_img = med["binary"] - med["raw"], med["json"] - med["raw"], med["image"] - med["raw_img"]
    r_bin, r_img = tput["api"] / tput["raw"], tput["api_img"] / tput["raw_img"]
    lines = [
        f"## Inference API (sample classifier 3x{args.size}x{args.size}, {provider}, intra-op {args.intra_op})",
        "",
        f"{machine()}; server max_batch {args.max_batch}, max_queue_delay 2 ms; load generator on the same cores",
        "",
        "| 1 client, p50 | raw | API | API - raw | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| binary tensors | {med['raw']:.2f} ms | {med['binary']:.2f} ms | {d_bin:+.2f} ms | <= +0.3 ms |",
        f"| JSON tensors | {med['raw']:.2f} ms | {med['json']:.2f} ms | {d_json:+.2f} ms | <= +2.0 ms |",
        f"| image (640x480 JPEG) | {med['raw_img']:.2f} ms | {med['image']:.2f} ms | {d_img:+.2f} ms | <= +1.0 ms |",
        "",
        "| 1x3x320x320 FP32, server-side time (Triton statistics) | binary | JSON | JSON / binary | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| mean of 10 requests, median of {args.rounds} rounds | {big_ms['binary']:.2f} ms | {big_ms['json']:.2f} ms "
        f"| {big_ms['json'] / big_ms['binary']:.2f}x | <= 3x |",
        f"| of which: engine run (binary), JSON parse | {big_ms['binary_run']:.2f} ms "
        f"| {big_ms['json_parse']:.2f} ms | | |",
        "",
        f"| where one binary request's time goes (3x{args.size}x{args.size}, 1 client, mean of {n}) | ms | share |",
        "| --- | --- | --- |",
        *profile_rows(profile),
        "",
        f"| {args.clients} clients, throughput | raw batch {args.max_batch} | API | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| binary tensors | {tput['raw']:.0f} img/s | {tput['api']:.0f} req/s | {r_bin:.2f}x | >= 0.8x |",
        f"| image endpoint | {tput['raw_img']:.0f} img/s | {tput['api_img']:.0f} req/s | {r_img:.2f}x | >= 0.9x |",
        "",
        "| CPU per image (all processes) | raw | API: server + load generator | raw / API |",
        "| --- | --- | --- | --- |",
        f"| binary tensors | {cpu_ms['raw']:.2f} ms | {cpu_ms['api']:.2f} ms | {cpu_ms['raw'] / cpu_ms['api']:.2f}x |",
        f"| image endpoint | {cpu_ms['raw_img']:.2f} ms | {cpu_ms['api_img']:.2f} ms "
        f"| {cpu_ms['raw_img'] / cpu_ms['api_img']:.2f}x |",
        "",
        f"| {args.clients} clients, binary tensors, p99 | steady | around swaps (requests) | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cmd, what in (("swap", "activate a loaded version"), ("reload", "load + warm-up + golden + activate")):
        lines.append(
            f"| {args.swaps} swaps: {what} | {steady_p99:.2f} ms | {swap_p99[cmd]:.2f} ms ({len(swap_lat[cmd])}) "
            f"| {swap_p99[cmd] / steady_p99:.2f}x | <= 3x |"
        )
    lines.append(
        f"| {args.swaps} swaps, model {large_mb:.0f} MB (10x): load + warm-up + golden + activate "
        f"| {large_steady_p99:.2f} ms | {large_p99:.2f} ms ({len(large_lat)}) | {large_p99 / large_steady_p99:.2f}x "
        "| <= 1.5x |"
    )
    lines += ["", f"Failed requests: {failed} of {len(everything)}. Engine runs by batch size: {batch_sizes(metrics)}."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

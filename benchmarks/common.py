"""Shared measurement helpers for the engine benchmarks (raw session.run, engine, batcher)."""

from __future__ import annotations

import asyncio
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.batcher import Batcher, BatcherOptions, fill_rows  # noqa: E402
from models.cli import build_samples  # noqa: E402
from models.descriptor import ClassificationOutput, InputSpec, ModelDescriptor, Task  # noqa: E402
from models.engine import Engine, EngineOptions  # noqa: E402
from models.golden import golden_input  # noqa: E402
from models.validate import validate  # noqa: E402


@dataclass
class Row:
    model: str
    mode: str
    batch: int
    p50_ms: float
    p99_ms: float
    img_per_s: float
    ratio: float | None = None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_raw(engine: Engine, batch: int, iterations: int, warmup: int = 5) -> tuple[float, float, float]:
    """p50 ms, p99 ms, images/s of the bare session.run on one fixed batch."""
    d = engine.descriptor
    x = np.concatenate([golden_input(d.input, i) for i in range(batch)])
    feed = {d.input.name: x}
    session = engine.session
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    return percentile(times, 50) * 1e3, percentile(times, 99) * 1e3, batch / mean


def time_batcher(
    engine: Engine, callers: int, requests_per_caller: int, options: BatcherOptions, *, fill_to: int | None = None
) -> tuple[float, float, float, dict[int, int]]:
    """p50 ms, p99 ms per request, images/s, and batch-size counts with `callers` concurrent callers of one image.

    `fill_to`: each image is sent filled to that many rows with copies of itself (how the batcher ran a graph
    with a fixed batch before it combined requests: every request alone in a run of the fixed batch).
    """
    d = engine.descriptor
    xs = [golden_input(d.input, 100 + i) for i in range(callers)]
    if fill_to is not None:
        xs = [fill_rows(x, fill_to) for x in xs]

    async def caller(b: Batcher, x: np.ndarray, lat: list[float]) -> None:
        for _ in range(requests_per_caller):
            t0 = time.perf_counter()
            await b.infer({d.input.name: x})
            lat.append(time.perf_counter() - t0)

    async def main() -> tuple[list[float], float, dict[int, int]]:
        async with Batcher(engine, options) as b:
            warm: list[float] = []
            await asyncio.gather(*(caller(b, x, warm) for x in xs[:2]))
            before = b.stats().batch_sizes
            lat: list[float] = []
            t0 = time.perf_counter()
            await asyncio.gather(*(caller(b, x, lat) for x in xs))
            elapsed = time.perf_counter() - t0
            after = b.stats().batch_sizes
            return lat, elapsed, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    lat, elapsed, sizes = asyncio.run(main())
    return (
        percentile(lat, 50) * 1e3,
        percentile(lat, 99) * 1e3,
        callers * requests_per_caller / elapsed,
        sizes,
    )


def sample_classifier(workdir: Path) -> tuple[Path, ModelDescriptor]:
    build_samples(workdir)
    return workdir / "mobilenet-like.onnx", ModelDescriptor.load(workdir / "mobilenet-like.yaml")


def torchvision_models(workdir: Path) -> list[tuple[str, Path, ModelDescriptor]]:
    """mobilenet_v3_small and resnet18 exported to ONNX (random weights) when the bench extra is installed."""
    try:
        import torch  # noqa: PLC0415
        import torchvision  # noqa: PLC0415
    except ImportError:
        return []
    out = []
    for name in ("mobilenet_v3_small", "resnet18"):
        net = getattr(torchvision.models, name)(weights=None).eval()
        path = workdir / f"{name}.onnx"
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
        desc = ModelDescriptor(
            name=name.replace("_", "-"),
            version="1.0.0",
            task=Task.CLASSIFICATION,
            input=InputSpec(name="input", height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            output=ClassificationOutput(kind="classification", output="logits"),
        )
        out.append((name, path, validate(path, desc).descriptor))
    return out


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    import os  # noqa: PLC0415

    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}"


def table(rows: list[Row]) -> str:
    head = "| model | mode | batch | p50 ms | p99 ms | img/s | ratio vs raw |\n" + "| --- " * 7 + "|"
    body = [
        f"| {r.model} | {r.mode} | {r.batch} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.img_per_s:.0f} | "
        f"{'' if r.ratio is None else f'{r.ratio:.2f}x'} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="edgefleet-bench-")


__all__ = [
    "BatcherOptions",
    "Engine",
    "EngineOptions",
    "Row",
    "machine",
    "sample_classifier",
    "table",
    "tempdir",
    "time_batcher",
    "time_raw",
    "torchvision_models",
]

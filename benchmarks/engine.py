"""Engine benchmark on CPU: raw session.run vs engine vs engine-with-batcher (issue 3).

    python benchmarks/engine.py [--iterations N] [--requests N]

Prints a markdown table (copy it into docs/benchmarks.md). Ratios compare against the raw session.run
baseline measured in the same run: the batcher at 16 callers against raw throughput at the batcher's
max batch size. Measured with onnxruntime intra-op spinning off and on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BatcherOptions,
    Engine,
    EngineOptions,
    Row,
    machine,
    sample_classifier,
    table,
    tempdir,
    time_batcher,
    time_raw,
    torchvision_models,
)


def bench_model(name: str, path: Path, desc: object, args: argparse.Namespace, spinning: bool) -> list[Row]:
    from models.descriptor import ModelDescriptor  # noqa: PLC0415

    assert isinstance(desc, ModelDescriptor)
    engine = Engine.load(path, desc, EngineOptions(allow_spinning=spinning))
    label = f"{name} (spin {'on' if spinning else 'off'})"
    rows = []
    raw: dict[int, float] = {}
    for batch in (1, args.max_batch):
        p50, p99, ips = time_raw(
            engine, batch, args.iterations if batch == 1 else max(args.iterations // 4, 5)
        )
        raw[batch] = ips
        rows.append(Row(label, "raw session.run", batch, p50, p99, ips, 1.0))
    p50, p99, ips = time_raw_engine(engine, args.iterations)
    rows.append(Row(label, "engine.infer", 1, p50, p99, ips, ips / raw[1]))
    opts = BatcherOptions(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms)
    p50, p99, ips, sizes = time_batcher(engine, args.callers, args.requests, opts)
    mode = f"batcher, {args.callers} callers (batches {sizes})"
    rows.append(Row(label, mode, args.max_batch, p50, p99, ips, ips / raw[args.max_batch]))
    engine.close()
    return rows


def time_raw_engine(engine: Engine, iterations: int) -> tuple[float, float, float]:
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from models.golden import golden_input  # noqa: PLC0415

    d = engine.descriptor
    feed = {d.input.name: golden_input(d.input, 0)}
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        engine.infer(feed)
        times.append(time.perf_counter() - t0)
    a = np.asarray(times)
    return float(np.percentile(a, 50) * 1e3), float(np.percentile(a, 99) * 1e3), 1.0 / float(a.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200, help="timed session.run calls at batch 1")
    parser.add_argument("--requests", type=int, default=40, help="requests per caller through the batcher")
    parser.add_argument("--callers", type=int, default=16, help="concurrent batcher callers")
    parser.add_argument("--max-batch", type=int, default=8, help="batcher max batch (and raw batch compared)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="batcher max queue delay")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempdir() as tmp:
        work = Path(tmp)
        path, desc = sample_classifier(work)
        models = [("sample classifier", path, desc)]
        extra = torchvision_models(work)
        models += [(name, p, d) for name, p, d in extra]
        for spinning in (False, True):
            for name, p, d in models:
                rows += bench_model(name, p, d, args, spinning)
    print(f"Machine: {machine()}")
    if not extra:
        print("torchvision models skipped: install the bench extra (torch) to include them")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

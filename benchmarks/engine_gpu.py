"""Engine benchmark on CUDA: raw session.run, IOBinding, CUDA graphs, and the batcher (issue 3).

    python benchmarks/engine_gpu.py [--iterations N] [--requests N]

Needs onnxruntime-gpu with CUDAExecutionProvider. Without it the script says so and exits 0, so CI on
CPU hosts can run it. Ratios compare against raw CUDA session.run measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
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
from models.engine import available_providers

CUDA = "CUDAExecutionProvider"


def time_engine(engine: Engine, batch: int, iterations: int) -> tuple[float, float, float]:
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from models.golden import golden_input  # noqa: PLC0415

    d = engine.descriptor
    feed = {d.input.name: np.concatenate([golden_input(d.input, i) for i in range(batch)])}
    for _ in range(5):
        engine.infer(feed)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        engine.infer(feed)
        times.append(time.perf_counter() - t0)
    a = np.asarray(times)
    return float(np.percentile(a, 50) * 1e3), float(np.percentile(a, 99) * 1e3), batch / float(a.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="timed runs per configuration")
    parser.add_argument("--requests", type=int, default=50, help="requests per caller through the batcher")
    parser.add_argument("--callers", type=int, default=16, help="concurrent batcher callers")
    parser.add_argument("--max-batch", type=int, default=8, help="batcher max batch (and raw batch compared)")
    args = parser.parse_args(argv)
    providers = available_providers()
    if CUDA not in providers:
        print(
            f"CUDAExecutionProvider is not available (this onnxruntime offers {list(providers)}): "
            "install onnxruntime-gpu on a CUDA host to run this benchmark. Nothing measured."
        )
        return 0
    rows: list[Row] = []
    with tempdir() as tmp:
        work = Path(tmp)
        path, desc = sample_classifier(work)
        models = [("sample classifier", path, desc), *torchvision_models(work)]
        for name, p, d in models:
            base = Engine.load(p, d, EngineOptions(providers=("cuda", "cpu")))
            raw: dict[int, float] = {}
            for batch in (1, args.max_batch):
                p50, p99, ips = time_raw(base, batch, args.iterations)
                raw[batch] = ips
                rows.append(Row(name, f"raw session.run ({base.active_provider})", batch, p50, p99, ips, 1.0))
            for label, opts in (
                ("engine + IOBinding", EngineOptions(providers=("cuda",), io_binding=True)),
                ("engine + CUDA graphs", EngineOptions(providers=("cuda",), cuda_graphs=True)),
            ):
                eng = Engine.load(p, d, opts)
                for batch in (1, args.max_batch):
                    p50, p99, ips = time_engine(eng, batch, args.iterations)
                    rows.append(Row(name, label, batch, p50, p99, ips, ips / raw[batch]))
                eng.close()
            opts_b = BatcherOptions(max_batch=args.max_batch, max_delay_ms=1.0)
            p50, p99, ips, sizes = time_batcher(base, args.callers, args.requests, opts_b)
            rows.append(
                Row(
                    name,
                    f"batcher, {args.callers} callers ({sizes})",
                    args.max_batch,
                    p50,
                    p99,
                    ips,
                    ips / raw[args.max_batch],
                )
            )
            base.close()
    print(f"Machine: {machine()}")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

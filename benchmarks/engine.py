"""Engine benchmark on CPU: raw session.run vs engine vs engine-with-batcher (issue 3).

    python benchmarks/engine.py [--iterations N] [--requests N] [--rounds N]

Prints a markdown table (copy it into docs/benchmarks.md). Ratios compare against the raw session.run
baseline measured in the same run, round by round (medians of paired ratios): the batcher at 16 callers
against raw throughput at the batcher's max batch size. Measured with intra-op spinning off and on.
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


def bench_model(name: str, path: Path, desc: object, args: argparse.Namespace, spinning: bool) -> list[Row]:
    """Interleaved rounds (raw b1, raw bN, engine b1, batcher) so load from other processes hits all alike.

    Throughput is the median over rounds; ratios are medians of per-round ratios (paired measurements).
    """
    import statistics  # noqa: PLC0415

    from models.descriptor import ModelDescriptor  # noqa: PLC0415

    assert isinstance(desc, ModelDescriptor)
    engine = Engine.load(path, desc, EngineOptions(allow_spinning=spinning))
    label = f"{name} (spin {'on' if spinning else 'off'})"
    per_round = max(args.iterations // args.rounds, 5)
    opts = BatcherOptions(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms)
    keys = ("raw1", "rawN", "engine1", "batcher")
    p50s: dict[str, list[float]] = {k: [] for k in keys}
    p99s: dict[str, list[float]] = {k: [] for k in keys}
    ips: dict[str, list[float]] = {k: [] for k in keys}
    sizes: dict[int, int] = {}
    for _ in range(args.rounds):
        for key, result in (
            ("raw1", time_raw(engine, 1, per_round)),
            ("rawN", time_raw(engine, args.max_batch, max(per_round // 4, 5))),
            ("engine1", time_raw_engine(engine, per_round)),
        ):
            p50s[key].append(result[0])
            p99s[key].append(result[1])
            ips[key].append(result[2])
        b50, b99, bips, bsizes = time_batcher(engine, args.callers, args.requests // args.rounds or 1, opts)
        p50s["batcher"].append(b50)
        p99s["batcher"].append(b99)
        ips["batcher"].append(bips)
        for k, v in bsizes.items():
            sizes[k] = sizes.get(k, 0) + v
    engine.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    def ratio(a: str, b: str) -> float:
        return med([x / y for x, y in zip(ips[a], ips[b], strict=True)])

    n = args.max_batch
    return [
        Row(label, "raw session.run", 1, med(p50s["raw1"]), med(p99s["raw1"]), med(ips["raw1"]), 1.0),
        Row(label, "raw session.run", n, med(p50s["rawN"]), med(p99s["rawN"]), med(ips["rawN"]), 1.0),
        Row(
            label,
            "engine.infer",
            1,
            med(p50s["engine1"]),
            med(p99s["engine1"]),
            med(ips["engine1"]),
            ratio("engine1", "raw1"),
        ),
        Row(
            label,
            f"batcher, {args.callers} callers (batches {dict(sorted(sizes.items()))})",
            n,
            med(p50s["batcher"]),
            med(p99s["batcher"]),
            med(ips["batcher"]),
            ratio("batcher", "rawN"),
        ),
    ]


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="timed session.run calls at batch 1")
    parser.add_argument("--requests", type=int, default=50, help="requests per caller through the batcher, in all")
    parser.add_argument("--callers", type=int, default=16, help="concurrent batcher callers")
    parser.add_argument("--max-batch", type=int, default=8, help="batcher max batch (and raw batch compared)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="batcher max queue delay")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (medians reported)")
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

"""A model exported with a fixed batch of 4, 16 concurrent one-image callers: each request alone in its own
padded run of 4 (before) vs runs filled with the rows of several requests (now), measured in the same run.

    python benchmarks/fixed_batch.py [--rounds N] [--requests N]

"Before" is reproduced by sending each image filled to 4 rows with copies of itself, which is what the batcher
did to it (`fill_rows` of one request, then a run of that request alone). Rounds interleave the two modes and
raw `session.run` at batch 4 (the ceiling: 4 images per run); throughput is the median over rounds and the
ratio the median of per-round ratios. Prints a markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx

from benchmarks.common import (
    BatcherOptions,
    Engine,
    Row,
    machine,
    sample_classifier,
    table,
    tempdir,
    time_batcher,
    time_raw,
)
from models.descriptor import GoldenCheck, ModelDescriptor
from models.validate import validate


def fixed_model(work: Path, rows: int) -> tuple[Path, ModelDescriptor]:
    """The sample classifier with its batch axis fixed to `rows`, validated."""
    path, desc = sample_classifier(work)
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = rows
    fixed = work / f"fixed{rows}.onnx"
    onnx.save(model, str(fixed))
    unrecorded = desc.model_copy(
        update={"name": f"fixed{rows}", "sha256": None, "size": None, "golden": GoldenCheck(seed=0)}
    )
    return fixed, validate(fixed, unrecorded).descriptor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="the graph's fixed batch")
    parser.add_argument("--callers", type=int, default=16, help="concurrent one-image callers")
    parser.add_argument("--requests", type=int, default=60, help="requests per caller in each round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians reported)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="batcher max queue delay")
    args = parser.parse_args(argv)
    n = args.batch
    with tempdir() as tmp:
        path, desc = fixed_model(Path(tmp), n)
        engine = Engine.load(path, desc)
        assert engine.max_batch == n
        opts = BatcherOptions(max_delay_ms=args.max_delay_ms)
        ips: dict[str, list[float]] = {"raw": [], "before": [], "now": []}
        p50: dict[str, list[float]] = {k: [] for k in ips}
        p99: dict[str, list[float]] = {k: [] for k in ips}
        sizes: dict[str, dict[int, int]] = {"before": {}, "now": {}}
        for _ in range(args.rounds):
            r50, r99, rips = time_raw(engine, n, args.requests)
            ips["raw"].append(rips)
            p50["raw"].append(r50)
            p99["raw"].append(r99)
            for key, fill in (("before", n), ("now", None)):
                b50, b99, bips, bsizes = time_batcher(engine, args.callers, args.requests, opts, fill_to=fill)
                ips[key].append(bips)
                p50[key].append(b50)
                p99[key].append(b99)
                for k, v in bsizes.items():
                    sizes[key][k] = sizes[key].get(k, 0) + v
        engine.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    def ratio(a: str, b: str) -> float:
        return med([x / y for x, y in zip(ips[a], ips[b], strict=True)])

    label = f"sample classifier, fixed batch {n}"
    rows = [
        Row(label, "raw session.run (4 images a run)", n, med(p50["raw"]), med(p99["raw"]), med(ips["raw"]), 1.0),
        Row(label, f"before: each request alone, padded (rows a run {dict(sorted(sizes['before'].items()))})", n,
            med(p50["before"]), med(p99["before"]), med(ips["before"]), ratio("before", "raw")),
        Row(label, f"now: requests combined (rows a run {dict(sorted(sizes['now'].items()))})", n,
            med(p50["now"]), med(p99["now"]), med(ips["now"]), ratio("now", "raw")),
    ]  # fmt: skip
    print(f"Machine: {machine()}; {args.callers} callers, {args.requests} requests each a round, {args.rounds} rounds")
    print()
    print(table(rows))
    print()
    print(f"now / before (median of per-round ratios): {ratio('now', 'before'):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

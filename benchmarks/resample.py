"""Resampling benchmark: our numpy reproduction of cv2.resize against OpenCV itself and Pillow (issue 17).

    python benchmarks/resample.py [--rounds N] [--sizes 640x480,1920x1080,4000x3000]

The raw baseline is `cv2.resize` on one thread (what a model's reference pipeline runs), measured in the
same rounds, interleaved with ours; ratios are medians of per-round ratios. Pillow's antialiased filter
(the `antialias: true` path) is listed beside it. Each image is resized to `--side` (320) on its long side.
Prints a markdown table (copy it into docs/benchmarks.md). Needs the test extras (OpenCV).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.descriptor import Interpolation
from models.resample import resize_pixels

FLAGS = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.BILINEAR: cv2.INTER_LINEAR,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}


def _once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _row(src: np.ndarray, dst: tuple[int, int], kind: Interpolation, rounds: int) -> tuple[float, ...]:
    """Median ms of ours, cv2 and Pillow, and the median per-round ratio ours / cv2."""
    img = Image.fromarray(src)
    flag = FLAGS[kind]
    ours, raw, pil, ratios = [], [], [], []
    for _ in range(rounds):
        o = _once(lambda: resize_pixels(src, dst, kind, antialias=False))
        b = _once(lambda: cv2.resize(src, dst, interpolation=flag))
        pil.append(_once(lambda: resize_pixels(img, dst, kind, antialias=True)))
        ours.append(o)
        raw.append(b)
        ratios.append(o / b)
    return tuple(statistics.median(v) for v in (ours, raw, ratios, pil))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="Interleaved rounds per row (median reported).")
    parser.add_argument("--sizes", default="640x480,1920x1080,4000x3000", help="Source sizes WxH, comma-separated.")
    parser.add_argument("--side", type=int, default=320, help="Long side of the result (a model input size).")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    print("| source | filter | numpy (OpenCV arithmetic) ms | cv2.resize 1 thread ms | ratio | Pillow antialiased ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        sw, sh = (int(v) for v in size.split("x"))
        src = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        r = args.side / max(sw, sh)
        dst = (max(1, round(sw * r)), max(1, round(sh * r)))
        for kind in FLAGS:
            ours, raw, ratio, pil = _row(src, dst, kind, args.rounds)
            print(f"| {size} | {kind.value} | {ours:.1f} | {raw:.2f} | {ratio:.1f}x | {pil:.1f} |")


if __name__ == "__main__":
    main()

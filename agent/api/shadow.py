"""Shadow comparison: does a candidate model's answer agree with the active model's answer?

Classification: the top-1 class of each row agrees. Detection: every box of one answer is matched by a
box of the other with the same class and IoU >= 0.5 (one-to-one, greedy by score), and both answers have
the same number of boxes; two empty answers agree. Boxes are compared in model-input pixels, so no
image transform is needed. One row (image) is one sample.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.messages import ShadowStats
from models.descriptor import ClassificationOutput, ModelDescriptor
from models.postprocess import Detections, decode_detections, iou

Array = npt.NDArray[Any]
MATCH_IOU = 0.5


def _top1(outputs: dict[str, Array], d: ModelDescriptor) -> Array | None:
    spec = d.output
    assert isinstance(spec, ClassificationOutput)
    scores = outputs.get(spec.output)
    if scores is None or scores.ndim != 2:
        return None
    top: Array = np.asarray(scores).argmax(axis=1)
    return top


def detections_match(a: Detections, b: Detections, iou_threshold: float = MATCH_IOU) -> bool:
    """True when both have the same number of boxes and each box of `a` has its own same-class match in `b`."""
    if len(a.scores) != len(b.scores):
        return False
    free = np.ones(len(b.scores), dtype=bool)
    for i in np.argsort(-a.scores, kind="stable"):
        cand = np.flatnonzero(free & (b.classes == a.classes[i]))
        if cand.size == 0:
            return False
        overlaps = iou(a.boxes[i], b.boxes[cand])
        best = int(overlaps.argmax())
        if overlaps[best] < iou_threshold:
            return False
        free[cand[best]] = False
    return True


def agreement(
    active: dict[str, Array], active_d: ModelDescriptor, candidate: dict[str, Array], candidate_d: ModelDescriptor
) -> list[bool]:
    """Per row of the batch: whether the candidate's answer agrees with the active model's."""
    if isinstance(active_d.output, ClassificationOutput):
        if not isinstance(candidate_d.output, ClassificationOutput):
            return []
        a, c = _top1(active, active_d), _top1(candidate, candidate_d)
        if a is None:
            return []
        if c is None or c.shape != a.shape:
            return [False] * len(a)
        return [bool(x) for x in (a == c)]
    if isinstance(candidate_d.output, ClassificationOutput):
        return []
    da = decode_detections(active, active_d.output, active_d.input)
    dc = decode_detections(candidate, candidate_d.output, candidate_d.input)
    if len(da) != len(dc):
        return [False] * len(da)
    return [detections_match(x, y) for x, y in zip(da, dc, strict=True)]


class ShadowTally:
    """Thread-safe counters of one candidate: samples, agreements, candidate-minus-active latency."""

    def __init__(self, candidate_version: str) -> None:
        self.candidate_version = candidate_version
        self._lock = threading.Lock()
        self._samples = self._agreements = self._errors = 0
        self._delta_sum = 0.0
        self._delta_n = 0
        self.total_samples = self.total_agreements = 0

    def add(self, agrees: list[bool], delta_ms: float) -> None:
        """Record one compared request (its rows) and its latency difference."""
        n, k = len(agrees), sum(agrees)
        with self._lock:
            self._samples += n
            self._agreements += k
            self.total_samples += n
            self.total_agreements += k
            self._delta_sum += delta_ms
            self._delta_n += 1

    def error(self) -> None:
        """The candidate failed on a sampled request (not counted as a sample)."""
        with self._lock:
            self._errors += 1

    def take(self) -> ShadowStats:
        """Counters since the previous call, then reset them."""
        with self._lock:
            stats = ShadowStats(
                candidate_version=self.candidate_version,
                samples=self._samples,
                agreements=self._agreements,
                latency_delta_ms=self._delta_sum / self._delta_n if self._delta_n else None,
            )
            self._samples = self._agreements = self._delta_n = 0
            self._delta_sum = 0.0
            return stats

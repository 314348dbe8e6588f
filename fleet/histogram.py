"""A latency histogram with fixed bucket bounds, so windows from any device merge by adding counts."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.limits import Count

# Upper bounds in milliseconds; one more bucket catches everything above the last bound. Fixed for the
# whole protocol version: changing them is a schema change. Dense below 20 ms, where edge inference lives.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000,
)  # fmt: skip
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1


class Histogram(BaseModel):
    """Counts per fixed bucket (`LATENCY_BOUNDS_MS`, plus overflow) and the sum of observations in ms."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    counts: tuple[Count, ...] = Field(
        default=(0,) * N_BUCKETS, description="observations per bucket; len(LATENCY_BOUNDS_MS) + 1 entries"
    )
    sum_ms: float = Field(default=0.0, ge=0, le=1e15, description="sum of all observations, milliseconds")

    @model_validator(mode="after")
    def _check(self) -> Histogram:
        if len(self.counts) != N_BUCKETS:
            raise ValueError(f"histogram needs {N_BUCKETS} counts, got {len(self.counts)}")
        return self

    @classmethod
    def of_sums(cls, counts: Iterable[int], sum_ms: float) -> Histogram:
        """The histogram of many windows summed: the bucket count is checked, the per-window bounds are not.

        A sum over a fleet may exceed what one window may carry (`Count`), and must not fail because of it.
        """
        counts = tuple(int(c) for c in counts)
        if len(counts) != N_BUCKETS:
            raise ValueError(f"histogram needs {N_BUCKETS} counts, got {len(counts)}")
        return cls.model_construct(counts=counts, sum_ms=max(float(sum_ms), 0.0))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both windows together."""
        return Histogram.of_sums((a + b for a, b in zip(self.counts, other.counts, strict=True)),
                                 self.sum_ms + other.sum_ms)  # fmt: skip

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile (0 < q <= 1) in ms by linear interpolation inside its bucket."""
        if not 0 < q <= 1:
            raise ValueError("q must be in (0, 1]")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
                hi = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 2
                return lo + (hi - lo) * (rank - seen) / c
            seen += c
        return LATENCY_BOUNDS_MS[-1] * 2

    @property
    def mean_ms(self) -> float | None:
        return self.sum_ms / self.count if self.count else None


def merge_all(histograms: Iterable[Histogram]) -> Histogram:
    """Merge any number of histograms (the empty histogram for none)."""
    counts = [0] * N_BUCKETS
    total = 0.0
    for h in histograms:
        for i, c in enumerate(h.counts):
            counts[i] += c
        total += h.sum_ms
    return Histogram.of_sums(counts, total)


class LatencyRecorder:
    """The mutable, not thread-safe counterpart that an agent observes into, then snapshots per window."""

    __slots__ = ("_counts", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * N_BUCKETS
        self._sum = 0.0

    def observe(self, ms: float) -> None:
        self._counts[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
        self._sum += max(ms, 0.0)

    def snapshot(self, *, reset: bool = False) -> Histogram:
        h = Histogram(counts=tuple(self._counts), sum_ms=self._sum)
        if reset:
            self._counts = [0] * N_BUCKETS
            self._sum = 0.0
        return h

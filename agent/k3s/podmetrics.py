"""What the serving pods served, from their Prometheus `/metrics`: parsed, checked, and turned into windows.

Pure (no network): `read_counters` parses one pod's exposition into the `PodCounters` of one model;
`WindowBook` keeps each pod's counters from the previous scrape and turns the next ones into the increase since
then, summed over the model's pods as one `agent.ports.ServingWindow`, the same counts single-device mode reports:

- requests: `edgefleet_api_requests_total` of the model (every version, both inference endpoints, every code);
- errors: those with code >= 500 (single-device mode counts server errors only: `ModelSlot.record`);
- latency: `edgefleet_api_request_duration_seconds`, whose buckets are `fleet.histogram.LATENCY_BOUNDS_MS`;
- queue depth: `edgefleet_api_queue_depth` of the active role, now (a gauge), summed over the pods.

A new process in a pod (a container restart) is told by its series' `_created` times (prometheus_client sets
them when a series is first counted), or by a counter lower than at the previous scrape: its increase is then
counted from zero, as Prometheus' `rate()` does (the requests the old process answered after its last scrape are
lost with it). A pod seen for the first time counts from zero when
it was created after the book (this agent process) started (within `CREATED_SLACK_S`: creation times have whole
seconds), and is only a baseline when it is older: its earlier requests were counted by the agent process before
this one. A pod that did not answer keeps its last counters, so
its next answer covers both windows; a pod that is gone takes the increase since its last scrape with it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from agent.ports import ServingWindow
from fleet.histogram import LATENCY_BOUNDS_MS, N_BUCKETS, Histogram
from fleet.limits import MAX_COUNT

REQUESTS = "edgefleet_api_requests_total"
LATENCY = "edgefleet_api_request_duration_seconds"
QUEUE = "edgefleet_api_queue_depth"
CREATED = (f"{REQUESTS[: -len('_total')]}_created", f"{LATENCY}_created")
MAX_VALUE = 2.0**53  # above this a float no longer counts single requests: a pod that says so is not believed
CREATED_SLACK_S = 2.0  # creationTimestamp has whole seconds (and the API server's clock): new if this close
MAX_SUM_MS = 1e15  # what a window's histogram may carry (fleet.histogram.Histogram.sum_ms)


class BadMetrics(ValueError):
    """A pod's /metrics cannot be believed (not the exposition format, absurd values, unknown buckets)."""


@dataclass(frozen=True)
class PodCounters:
    """One model's counters in one pod at one scrape (counters since the pod's process started)."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = (0,) * N_BUCKETS  # cumulative, one per LATENCY_BOUNDS_MS bound and +Inf
    sum_ms: float = 0.0
    queue_depth: int = 0
    started: float | None = None  # the earliest `_created` of the model's series: changes with a new process

    def increase_since(self, before: PodCounters | None) -> PodCounters:
        """What was counted since `before` (None, or any counter lower: a new process, so all of it)."""
        if before is None or self._reset_since(before):
            return self
        return PodCounters(
            requests=self.requests - before.requests,
            errors=self.errors - before.errors,
            buckets=tuple(a - b for a, b in zip(self.buckets, before.buckets, strict=True)),
            sum_ms=self.sum_ms - before.sum_ms,
            queue_depth=self.queue_depth,
            started=self.started,
        )

    def _reset_since(self, before: PodCounters) -> bool:
        return (
            (self.started is not None and before.started is not None and self.started != before.started)
            or self.requests < before.requests
            or self.errors < before.errors
            or self.sum_ms < before.sum_ms
            or any(a < b for a, b in zip(self.buckets, before.buckets, strict=True))
        )


def _number(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0 or value > MAX_VALUE:
        raise BadMetrics(f"{what} is {value!r}: not a count")
    return value


def _bucket_index(le: str) -> int:
    """Index in LATENCY_BOUNDS_MS (len for +Inf) of a bucket's `le` label, in seconds."""
    try:
        seconds = float(le)
    except ValueError as e:
        raise BadMetrics(f"bucket le={le[:40]!r} is not a number") from e
    if math.isinf(seconds) and seconds > 0:
        return len(LATENCY_BOUNDS_MS)
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if math.isclose(seconds * 1e3, bound, rel_tol=1e-9):
            return i
    raise BadMetrics(f"bucket le={le[:40]!r} is not one of fleet.histogram.LATENCY_BOUNDS_MS (another agent version?)")


def read_counters(text: str, model: str) -> PodCounters:
    """Model `model`'s counters in one pod's /metrics text (zeros when it served none of its requests yet).

    Raises:
        BadMetrics: not the Prometheus text format, or a value that is not a count (negative, NaN, infinite,
            above 2**53), a code that is not an HTTP status, buckets other than ours or not cumulative.
    """
    requests = errors = queue = 0.0
    series: dict[tuple[tuple[str, str], ...], list[float | None]] = {}  # histogram series -> cumulative buckets
    sum_s = 0.0
    started: float | None = None
    try:
        for family in text_string_to_metric_families(text):  # by sample name: a TYPE line is optional
            for s in family.samples:
                if s.labels.get("model") != model:
                    continue
                if s.name == REQUESTS:
                    n = _number(s.value, REQUESTS)
                    code = s.labels.get("code", "")
                    if not (code.isascii() and code.isdigit() and 100 <= int(code) <= 599):
                        raise BadMetrics(f"{REQUESTS} has code={code[:20]!r}: not an HTTP status")
                    requests += n
                    if int(code) >= 500:
                        errors += n
                elif s.name == f"{LATENCY}_bucket":
                    key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    row = series.setdefault(key, [None] * N_BUCKETS)
                    row[_bucket_index(s.labels.get("le", ""))] = _number(s.value, f"{LATENCY}_bucket")
                elif s.name == f"{LATENCY}_sum":
                    sum_s += _number(s.value, f"{LATENCY}_sum")
                elif s.name in CREATED:
                    created = _number(s.value, s.name)
                    started = created if started is None else min(started, created)
                elif s.name == QUEUE and s.labels.get("role") == "active":
                    queue += _number(s.value, QUEUE)
    except BadMetrics:
        raise
    except Exception as e:  # the parser raises ValueError, and more on some malformed input
        raise BadMetrics(f"not the Prometheus text format: {type(e).__name__}: {str(e)[:200]}") from e
    buckets = [0.0] * N_BUCKETS
    for row in series.values():
        if any(v is None for v in row):
            raise BadMetrics(f"{LATENCY} lacks buckets of fleet.histogram.LATENCY_BOUNDS_MS (another agent version?)")
        values = [float(v or 0.0) for v in row]
        if any(b < a for a, b in itertools.pairwise(values)):
            raise BadMetrics(f"{LATENCY} buckets are not cumulative")
        buckets = [a + b for a, b in zip(buckets, values, strict=True)]
    total = (requests, errors, sum_s, *buckets)
    if any(v > MAX_VALUE for v in total):
        raise BadMetrics(f"{model}'s counters sum above 2**53: not counts")
    return PodCounters(
        requests=int(requests),
        errors=int(errors),
        buckets=tuple(int(b) for b in buckets),
        sum_ms=sum_s * 1e3,
        queue_depth=int(min(queue, MAX_COUNT)),
        started=started,
    )


@dataclass(frozen=True)
class Pod:
    """A serving pod as the Kubernetes API lists it: `uid` tells a new pod from an old one of the same name."""

    name: str
    uid: str
    ip: str
    created: float | None  # creationTimestamp, seconds since the epoch (None: not given)
    ready: bool = True


@dataclass
class WindowBook:
    """Each pod's counters at its last scrape, per model; turns a round of scrapes into windows."""

    started: float = field(default_factory=time.time)
    last: dict[tuple[str, str], PodCounters] = field(default_factory=dict)  # (model, pod uid) -> counters

    def forget_models_but(self, models: Sequence[str]) -> None:
        """Drop the counters of pods of models not in `models` (no longer active here)."""
        keep = set(models)
        self.last = {k: v for k, v in self.last.items() if k[0] in keep}

    def window(self, model: str, scraped: dict[Pod, PodCounters | None]) -> tuple[PodCounters, int]:
        """The increase over every pod of `model` listed now (None: it did not answer), and how many answered.

        Pods no longer listed are forgotten. Returns the summed increase (requests, errors, buckets, sum) with
        the queue depth of the pods that answered.
        """
        listed = {p.uid for p in scraped}
        for key in [k for k in self.last if k[0] == model and k[1] not in listed]:
            del self.last[key]
        requests = errors = queue = 0
        buckets = [0] * N_BUCKETS
        sum_ms = 0.0
        answered = 0
        for pod, now in scraped.items():
            if now is None:
                continue
            answered += 1
            key = (model, pod.uid)
            before = self.last.get(key)
            self.last[key] = now
            if before is None and (pod.created is None or pod.created + CREATED_SLACK_S < self.started):
                before = now  # older than this agent process: its requests so far were counted before us
            inc = now.increase_since(before)
            requests += inc.requests
            errors += inc.errors
            sum_ms += inc.sum_ms
            queue += inc.queue_depth
            buckets = [a + b for a, b in zip(buckets, inc.buckets, strict=True)]
        total = PodCounters(requests, errors, tuple(buckets), sum_ms, queue)
        return total, answered


def serving_window(total: PodCounters) -> ServingWindow:
    """The window of a model's summed increases, clamped to what a telemetry window carries (`Count`), errors
    at most requests: however hostile a pod, the window stays valid."""
    counts: list[int] = []
    below = 0
    for cumulative in total.buckets:
        counts.append(min(max(cumulative - below, 0), MAX_COUNT))
        below = max(below, cumulative)
    requests = min(total.requests, MAX_COUNT)
    return ServingWindow(
        requests=requests,
        errors=min(total.errors, requests),
        latency=Histogram(counts=tuple(counts), sum_ms=min(max(total.sum_ms, 0.0), MAX_SUM_MS)),
        queue_depth=min(max(total.queue_depth, 0), MAX_COUNT),
    )

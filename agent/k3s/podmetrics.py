"""What the serving pods served, from their Prometheus `/metrics`: parsed, checked, and turned into windows.

Pure (no network): `read_counters` parses one pod's exposition into the `PodScrape` of one model (its
`PodCounters` per `version` label, and its queue depth); `WindowBook` keeps each pod's counters from the previous
scrape and turns the next ones into the increase since then, summed over the model's pods as one
`agent.ports.ServingWindow`, the same counts single-device mode reports:

- requests: `edgefleet_api_requests_total` of the model (both inference endpoints, every code);
- errors: those with code >= 500 (single-device mode counts server errors only: `ModelSlot.record`);
- latency: `edgefleet_api_request_duration_seconds`, whose buckets are `fleet.histogram.LATENCY_BOUNDS_MS`;
- queue depth: `edgefleet_api_queue_depth` of the active role, now (a gauge), summed over the pods;
- shadow: `edgefleet_api_shadow_samples`, `_agreements` and `_incomparable` of the model's shadow candidate
  (their `version` label names it): totals since the candidate started in the pod, turned into increases like
  the counters (a lower total: the candidate started again, counted from zero).

A window counts the version the control agent reports as active, and nothing another version served: every
series carries the `version` that answered (`unknown` for a request of the model that reached no version, as
the slot counts it), and a pod's follower swaps versions some seconds after the control agent moved the model's
pointer, or never when the new version fails to load in that pod. Requests a pod's other versions served are
left out of the window (counted in `Tally.other_versions` and logged): a version that serves nothing cannot pass
a rollout's gates on the requests of the version before it.

A new process in a pod (a container restart) is told by its series' `_created` times (prometheus_client sets
them when a series is first counted), or by a counter lower than at the previous scrape: its increase is then
counted from zero, as Prometheus' `rate()` does (the requests the old process answered after its last scrape are
lost with it). Each version's series are followed on their own, so the first series of a version that a known
pod starts serving is counted whole. A pod seen for the first time counts from zero when
it was created after the book (this agent process) started (within `CREATED_SLACK_S`: creation times have whole
seconds), and is only a baseline when it is older: its earlier requests were counted by the agent process before
this one. A pod that did not answer keeps its last counters, so
its next answer covers both windows; a pod that is gone takes the increase since its last scrape with it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from agent.ports import ServingWindow
from fleet.histogram import LATENCY_BOUNDS_MS, N_BUCKETS, Histogram
from fleet.limits import MAX_COUNT
from fleet.messages import ShadowStats

REQUESTS = "edgefleet_api_requests_total"
LATENCY = "edgefleet_api_request_duration_seconds"
QUEUE = "edgefleet_api_queue_depth"
SHADOW = {  # shadow totals (gauges) -> ShadowCounts field
    "edgefleet_api_shadow_samples": "samples",
    "edgefleet_api_shadow_agreements": "agreements",
    "edgefleet_api_shadow_incomparable": "incomparable",
}
CREATED = (f"{REQUESTS[: -len('_total')]}_created", f"{LATENCY}_created")
_PER_VERSION = frozenset({REQUESTS, f"{LATENCY}_bucket", f"{LATENCY}_sum", *CREATED})  # what `_Sums` reads
MAX_VALUE = 2.0**53  # above this a float no longer counts single requests: a pod that says so is not believed
CREATED_SLACK_S = 2.0  # creationTimestamp has whole seconds (and the API server's clock): new if this close
MAX_SUM_MS = 1e15  # what a window's histogram may carry (fleet.histogram.Histogram.sum_ms)
UNKNOWN_VERSION = "unknown"  # agent.api.metrics.UNKNOWN: a request of the model that reached no version of it
MAX_VERSIONS = 64  # version labels of one model in one pod (a process serves a few in its life; 1 MiB bounds it)


class BadMetrics(ValueError):
    """A pod's /metrics cannot be believed (not the exposition format, absurd values, unknown buckets)."""


@dataclass(frozen=True)
class PodCounters:
    """One model's counters in one pod at one scrape, of one version or summed (since the pod's process started)."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = (0,) * N_BUCKETS  # cumulative, one per LATENCY_BOUNDS_MS bound and +Inf
    sum_ms: float = 0.0
    queue_depth: int = 0
    started: float | None = None  # the earliest `_created` of the counted series: changes with a new process

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
            self.started is not None and before.started is not None and self.started != before.started
        ) or _started_again(self._totals(), before._totals())

    def _totals(self) -> tuple[float, ...]:
        return self.requests, self.errors, self.sum_ms, *self.buckets


def _started_again(now: Iterable[float], before: Iterable[float]) -> bool:
    """Whether totals read now count from zero again since `before`: any one of them is lower (the process or
    the candidate started again; its increase is then all of `now`, as Prometheus' `rate()` counts). The one
    rule `PodCounters` and `ShadowCounts` both turn totals into increases by."""
    return any(a < b for a, b in zip(now, before, strict=True))


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


@dataclass(frozen=True)
class ShadowCounts:
    """Rows a shadow candidate compared, agreed on, and could not compare (totals, or an increase)."""

    samples: int = 0
    agreements: int = 0
    incomparable: int = 0

    def increase_since(self, before: ShadowCounts | None) -> ShadowCounts:
        """What was counted since `before` (None, or any total lower: the candidate started again, so all)."""
        if before is None or _started_again(self._values(), before._values()):
            return self
        return ShadowCounts(*(a - b for a, b in zip(self._values(), before._values(), strict=True)))

    def __add__(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[int, int, int]:
        return self.samples, self.agreements, self.incomparable


@dataclass(frozen=True)
class PodScrape:
    """One model's share of one pod's /metrics: its counters per `version` label, its queue depth now, and its
    shadow candidates' totals per candidate version."""

    versions: dict[str, PodCounters] = field(default_factory=dict)
    queue_depth: int = 0
    shadow: dict[str, ShadowCounts] = field(default_factory=dict)


def read_counters(text: str, model: str) -> PodScrape:
    """Model `model`'s counters in one pod's /metrics text, per version label (none when it served none yet).

    Raises:
        BadMetrics: not the Prometheus text format, or a value that is not a count (negative, NaN, infinite,
            above 2**53), a code that is not an HTTP status, buckets other than ours or not cumulative, more
            than `MAX_VERSIONS` versions.
    """
    found: dict[str, _Sums] = {}
    shadow: dict[str, dict[str, float]] = {}
    queue = 0.0
    try:
        for family in text_string_to_metric_families(text):  # by sample name: a TYPE line is optional
            for s in family.samples:
                if s.labels.get("model") != model:
                    continue
                if s.name == QUEUE:
                    if s.labels.get("role") == "active":
                        queue += _number(s.value, QUEUE)
                    continue
                if s.name in SHADOW:
                    candidate = s.labels.get("version", UNKNOWN_VERSION)
                    if candidate not in shadow and len(shadow) >= MAX_VERSIONS:
                        raise BadMetrics(f"{model} has shadow series of over {MAX_VERSIONS} versions in one pod")
                    totals = shadow.setdefault(candidate, {})
                    totals[SHADOW[s.name]] = totals.get(SHADOW[s.name], 0.0) + _number(s.value, s.name)
                    continue
                if s.name not in _PER_VERSION:  # other series carry `version` too: no group for what is not read
                    continue
                version = s.labels.get("version", UNKNOWN_VERSION)
                sums = found.get(version)
                if sums is None:
                    if len(found) >= MAX_VERSIONS:
                        raise BadMetrics(f"{model} has series of over {MAX_VERSIONS} versions in one pod")
                    sums = found[version] = _Sums()
                sums.add(s.name, s.labels, s.value)
    except BadMetrics:
        raise
    except Exception as e:  # the parser raises ValueError, and more on some malformed input
        raise BadMetrics(f"not the Prometheus text format: {type(e).__name__}: {str(e)[:200]}") from e
    shadows = {v: ShadowCounts(**{k: int(n) for k, n in totals.items()}) for v, totals in shadow.items()}
    return PodScrape({v: sums.counters(model) for v, sums in found.items()}, int(min(queue, MAX_COUNT)), shadows)


@dataclass
class _Sums:
    """One version's series of one model in one pod, as they are read."""

    requests: float = 0.0
    errors: float = 0.0
    sum_s: float = 0.0
    started: float | None = None
    series: dict[tuple[tuple[str, str], ...], list[float | None]] = field(default_factory=dict)  # -> cumulative

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        if name == REQUESTS:
            n = _number(value, REQUESTS)
            code = labels.get("code", "")
            if not (code.isascii() and code.isdigit() and 100 <= int(code) <= 599):
                raise BadMetrics(f"{REQUESTS} has code={code[:20]!r}: not an HTTP status")
            self.requests += n
            if int(code) >= 500:
                self.errors += n
        elif name == f"{LATENCY}_bucket":
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            row = self.series.setdefault(key, [None] * N_BUCKETS)
            row[_bucket_index(labels.get("le", ""))] = _number(value, f"{LATENCY}_bucket")
        elif name == f"{LATENCY}_sum":
            self.sum_s += _number(value, f"{LATENCY}_sum")
        elif name in CREATED:
            created = _number(value, name)
            self.started = created if self.started is None else min(self.started, created)

    def counters(self, model: str) -> PodCounters:
        buckets = [0.0] * N_BUCKETS
        for row in self.series.values():
            if any(v is None for v in row):
                raise BadMetrics(
                    f"{LATENCY} lacks buckets of fleet.histogram.LATENCY_BOUNDS_MS (another agent version?)"
                )
            values = [float(v or 0.0) for v in row]
            if any(b < a for a, b in itertools.pairwise(values)):
                raise BadMetrics(f"{LATENCY} buckets are not cumulative")
            buckets = [a + b for a, b in zip(buckets, values, strict=True)]
        total = (self.requests, self.errors, self.sum_s, *buckets)
        if any(v > MAX_VALUE for v in total):
            raise BadMetrics(f"{model}'s counters sum above 2**53: not counts")
        return PodCounters(
            requests=int(self.requests),
            errors=int(self.errors),
            buckets=tuple(int(b) for b in buckets),
            sum_ms=self.sum_s * 1e3,
            started=self.started,
        )


@dataclass(frozen=True)
class Pod:
    """A serving pod as the Kubernetes API lists it: `uid` tells a new pod from an old one of the same name."""

    name: str
    uid: str
    ip: str
    created: float | None  # creationTimestamp, seconds since the epoch (None: not given)
    ready: bool = True


@dataclass(frozen=True)
class Tally:
    """A model's round of scrapes: what its active version (and its shadow candidate) did since the previous one."""

    total: PodCounters  # summed increases of the active version (and `unknown`), queue depth of the pods now
    answered: int  # pods that answered
    other_versions: int = 0  # requests other versions served meanwhile (pods that had not swapped, or could not)
    shadow: ShadowCounts | None = None  # the candidate's increase; None: no pod that answered runs it


@dataclass
class WindowBook:
    """Each pod's counters at its last scrape, per model and version; turns a round of scrapes into windows."""

    started: float = field(default_factory=time.time)
    last: dict[tuple[str, str], PodScrape] = field(default_factory=dict)  # (model, pod uid) -> its last scrape

    def forget_models_but(self, models: Iterable[str]) -> None:
        """Drop the counters of pods of models not in `models` (no longer active here)."""
        keep = set(models)
        self.last = {k: v for k, v in self.last.items() if k[0] in keep}

    def window(
        self, model: str, version: str, scraped: Mapping[Pod, PodScrape | None], shadow: str | None = None
    ) -> Tally:
        """The increase of `model`'s `version` over every pod listed now (None: it did not answer), and of its
        shadow candidate `shadow`'s comparisons.

        Pods no longer listed are forgotten. Every version's counters are kept (a rollback counts on from them);
        only `version`'s and `unknown`'s increases are summed into the window.
        """
        listed = {p.uid for p in scraped}
        for key in [k for k in self.last if k[0] == model and k[1] not in listed]:
            del self.last[key]
        requests = errors = queue = other = 0
        buckets = [0] * N_BUCKETS
        sum_ms = 0.0
        answered = 0
        compared: ShadowCounts | None = None
        counted = {version, UNKNOWN_VERSION}
        for pod, now in scraped.items():
            if now is None:
                continue
            answered += 1
            queue += now.queue_depth
            key = (model, pod.uid)
            before = self.last.get(key)
            self.last[key] = now
            # a pod older than this agent process: its requests so far were counted before us
            baseline = before is None and (pod.created is None or pod.created + CREATED_SLACK_S < self.started)
            for label, counters in now.versions.items():
                inc = counters.increase_since(counters if baseline else before.versions.get(label) if before else None)
                if label not in counted:
                    other += inc.requests
                    continue
                requests += inc.requests
                errors += inc.errors
                sum_ms += inc.sum_ms
                buckets = [a + b for a, b in zip(buckets, inc.buckets, strict=True)]
            totals = now.shadow.get(shadow) if shadow is not None else None
            if totals is not None:
                was = totals if baseline else before.shadow.get(shadow) if before and shadow else None
                compared = (compared or ShadowCounts()) + totals.increase_since(was)
        return Tally(PodCounters(requests, errors, tuple(buckets), sum_ms, queue), answered, other, compared)


def serving_window(total: PodCounters, shadow: tuple[str, ShadowCounts] | None = None) -> ServingWindow:
    """The window of a model's summed increases (and of its shadow candidate, named, if one ran), clamped to what
    a telemetry window carries (`Count`), errors at most requests, agreements at most samples: however hostile a
    pod, the window stays valid. Pods do not export the shadow's latency difference: `latency_delta_ms` is None."""
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
        shadow=None if shadow is None else _shadow_stats(*shadow),
    )


def _shadow_stats(candidate: str, counts: ShadowCounts) -> ShadowStats | None:
    try:
        samples = min(counts.samples, MAX_COUNT)
        return ShadowStats(
            candidate_version=candidate,
            samples=samples,
            agreements=min(counts.agreements, samples),
            incomparable=min(counts.incomparable, MAX_COUNT),
        )
    except ValidationError:  # not a version (the control side names it, so never in practice)
        return None

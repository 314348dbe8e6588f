"""Prometheus metrics of the inference API, in a registry of its own (one per server).

Counters and the latency histogram are updated in batches through cached label children (the hot path only
notes each request; every scrape counts all requests answered before it); queue depth, batch sizes, the
active provider and shadow counts are read from each model's slot only when `/metrics` is scraped. Every
series carries the `model` label (a device serves several).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.histogram import LATENCY_BOUNDS_MS

if TYPE_CHECKING:
    from agent.api.budget import BodyBudget
    from agent.serving import ModelRepository

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FOLD_EVERY = 256  # requests noted before they are counted (see `ApiMetrics.observe`)
UNKNOWN = "unknown"  # model/version label for requests that named no served model (bounded cardinality)


class ApiMetrics:
    """The API's metric families and the cached children the hot path increments."""

    def __init__(self, repo: ModelRepository, budget: BodyBudget | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgefleet_api_requests",
            "Inference requests by model, version, endpoint and HTTP status code.",
            ["model", "version", "endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_api_request_duration_seconds",
            "Inference request latency (body read to response built) by model and version.",
            ["model", "version", "endpoint"],
            buckets=[b / 1e3 for b in LATENCY_BOUNDS_MS],
            registry=self.registry,
        )
        self.registry.register(_SlotCollector(repo))
        if budget is not None:
            self.registry.register(_BudgetCollector(budget))
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._pending: list[tuple[str, str, str, int, float]] = []

    def observe(self, model: str, version: str, endpoint: str, code: int, seconds: float) -> None:
        """Count one request and its latency (event loop only).

        Requests are noted and counted in batches (of `FOLD_EVERY`, and before every scrape): prometheus_client
        takes a lock and walks the buckets per call, which cost ~10 us a request on the hot path here.
        """
        self._pending.append((model, version, endpoint, code, seconds))
        if len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        counts: dict[tuple[str, str, str, int], int] = {}
        for model, version, endpoint, code, seconds in pending:
            key = (model, version, endpoint, code)
            pair = self._children.get(key)
            if pair is None:
                pair = (
                    self.requests.labels(model, version, endpoint, str(code)),
                    self.latency.labels(model, version, endpoint),
                )
                self._children[key] = pair
            counts[key] = counts.get(key, 0) + 1
            pair[1].observe(seconds)
        for key, n in counts.items():
            self._children[key][0].inc(n)

    def render(self) -> bytes:
        """The text exposition of every metric (event loop only)."""
        self._fold()
        return generate_latest(self.registry)


class _BudgetCollector(Collector):
    """The device-wide budget of request-body bytes in flight (`agent.api.budget`), read at scrape time."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        b = self.budget
        yield GaugeMetricFamily(
            "edgefleet_api_body_bytes_in_flight", "Request-body bytes held by requests in progress.", value=b.in_use
        )
        yield GaugeMetricFamily(
            "edgefleet_api_body_bytes_budget", "Most request-body bytes held at once (max_body_bytes_in_flight).",
            value=b.limit,
        )  # fmt: skip
        refused = CounterMetricFamily(
            "edgefleet_api_body_budget_refusals",
            "Requests whose body did not fit the budget: 503 (others held it) or 413 (larger than all of it).",
            labels=["code"],
        )
        for code, n in sorted(b.refused.items()):
            refused.add_metric([str(code)], n)
        yield refused


class _SlotCollector(Collector):
    """Reads queue depth, batch sizes, provider and shadow counters from every model's slot at scrape time."""

    def __init__(self, repo: ModelRepository, budget: BodyBudget | None = None) -> None:
        self.repo = repo

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "edgefleet_api_queue_depth", "Requests waiting for the engine.", labels=["model", "version", "role"]
        )
        inflight = GaugeMetricFamily(
            "edgefleet_api_in_progress", "Requests in progress.", labels=["model", "version", "role"]
        )
        provider = GaugeMetricFamily(
            "edgefleet_api_active_provider",
            "1 for the execution provider of each loaded model.",
            labels=["model", "version", "role", "provider"],
        )
        batches = HistogramMetricFamily(
            "edgefleet_api_batch_size", "Rows per engine run (dynamic batching).", labels=["model", "version"]
        )
        slots = sorted(self.repo.slots.items())
        for _name, slot in slots:
            for role, s in slot.loaded():
                labels = [s.model.name, s.model.version, role]
                depth.add_metric(labels, s.queue_depth())
                inflight.add_metric(labels, s.inflight)
                provider.add_metric([*labels, str(getattr(s.engine, "active_provider", UNKNOWN))], 1)
        sized = [(key, sizes) for _name, slot in slots for key, sizes in slot.batch_sizes().items()]
        for (model, version), sizes in sized:
            bounds = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
            buckets: list[tuple[str, float]] = []
            for b in bounds:
                buckets.append((str(b), float(sum(n for k, n in sizes.items() if k <= b))))
            buckets.append(("+Inf", float(sum(sizes.values()))))
            batches.add_metric([model, version], buckets, float(sum(k * n for k, n in sizes.items())))
        yield depth
        yield inflight
        yield provider
        yield batches
        tallies = [(name, t) for name, slot in slots if (t := slot.shadow_tally()) is not None]
        if tallies:
            labels = ["model", "version"]
            samples = GaugeMetricFamily(
                "edgefleet_api_shadow_samples", "Rows compared with the shadow candidate.", labels=labels
            )
            agree = GaugeMetricFamily(
                "edgefleet_api_shadow_agreements", "Compared rows where the candidate agreed.", labels=labels
            )
            incomparable = GaugeMetricFamily(
                "edgefleet_api_shadow_incomparable",
                "Sampled rows the candidate could not take (shapes or dtypes it does not accept): not compared.",
                labels=labels,
            )
            dropped = GaugeMetricFamily(
                "edgefleet_api_shadow_dropped",
                "Sampled rows the candidate never answered, by reason: its queue was full (queue_full), it did "
                "not answer within the request timeout (timeout), it was being swapped out (swapped). Not compared.",
                labels=[*labels, "reason"],
            )
            for name, tally in tallies:
                samples.add_metric([name, tally.candidate_version], tally.total_samples)
                agree.add_metric([name, tally.candidate_version], tally.total_agreements)
                incomparable.add_metric([name, tally.candidate_version], tally.total_incomparable)
                for reason, rows in tally.total_dropped.items():
                    dropped.add_metric([name, tally.candidate_version, reason], rows)
            yield samples
            yield agree
            yield incomparable
            yield dropped

"""Telemetry queries: per device, per model version and fleet-wide, over time ranges, with latency quantiles."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet.histogram import Histogram
from hub.store import Store, TelemetryPoint

Point = TelemetryPoint  # one minute of telemetry, summed (what `series` returns)


class TelemetrySummary(BaseModel):
    """Telemetry summed over a time range; latency quantiles from the merged histogram.

    The REST API and the dashboard serve it as it is (`hub.views` declares it as a response model).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    windows: int = Field(description="telemetry windows summed")
    requests: int = Field(description="inference requests in those windows")
    errors: int = Field(description="requests that failed")
    error_rate: float | None = Field(description="errors / requests; null without requests")
    p50_ms: float | None = Field(description="median latency estimated from the merged histogram")
    p95_ms: float | None = Field(description="95th percentile latency")
    p99_ms: float | None = Field(description="99th percentile latency")
    mean_ms: float | None = Field(description="mean latency")


def summarise(points: list[TelemetryPoint]) -> TelemetrySummary:
    """Sum points and estimate latency quantiles from the merged histogram."""
    counts = [0] * len(points[0].latency_counts) if points else [0]
    windows = requests = errors = 0
    total_ms = 0.0
    for p in points:
        windows += p.windows
        requests += p.requests
        errors += p.errors
        total_ms += p.latency_sum_ms
        for i, c in enumerate(p.latency_counts):
            counts[i] += c
    h = Histogram.of_sums(counts, total_ms) if points else Histogram()
    return TelemetrySummary(
        windows=windows, requests=requests, errors=errors, error_rate=errors / requests if requests else None,
        p50_ms=h.quantile(0.5), p95_ms=h.quantile(0.95), p99_ms=h.quantile(0.99), mean_ms=h.mean_ms,
    )  # fmt: skip


class TelemetryQueries:
    """What the API, the dashboard and rollout gates ask about telemetry."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def series(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[TelemetryPoint]:
        """Per-minute points for a device, a model (version) or the whole fleet (no filter)."""
        return self.store.telemetry_series(
            device_id=device_id, model=model, model_version=version, since=since, until=until
        )

    def summary(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> TelemetrySummary:
        """The series summed over the range (rollout gates compare these between versions)."""
        return summarise(self.series(device_id=device_id, model=model, version=version, since=since, until=until))

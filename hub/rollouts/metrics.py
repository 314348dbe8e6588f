"""Prometheus metrics of the rollout engine (collected by hub.metrics at scrape time)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hub.rollouts.engine import RolloutEngine
from hub.rollouts.model import Rollout, RolloutState


def rollout_metrics(engine: RolloutEngine, active: list[Rollout] | None) -> Iterator[Metric]:
    """Active rollouts by state and each one's current wave (`active`, read from the store: None leaves them
    out), failed ticks and publishes."""
    if active is not None:
        by_state = Counter(r.state for r in active)
        states = GaugeMetricFamily("edgefleet_hub_rollouts_active", "active rollouts by state", labels=["state"])
        for state in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.ROLLING_BACK):
            states.add_metric([state.value], by_state.get(state, 0))
        yield states
        wave = GaugeMetricFamily(
            "edgefleet_hub_rollout_wave",
            "index of the wave in progress",
            labels=["rollout", "model", "version", "state"],
        )
        for r in active:
            wave.add_metric([r.id, r.spec.model, r.spec.version, r.state.value], r.current)
        yield wave
    yield CounterMetricFamily("edgefleet_hub_rollout_tick_errors", "controller ticks that failed", engine.tick_errors)
    yield CounterMetricFamily(
        "edgefleet_hub_rollout_publish_errors", "desired-state groups that could not be signed", engine.publish_errors
    )

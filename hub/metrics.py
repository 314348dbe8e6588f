"""Prometheus metrics of one hub, collected at scrape time from the counters the parts keep anyway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.errors import DatabaseUnavailable
from hub.rollouts.metrics import rollout_metrics

if TYPE_CHECKING:
    from hub.services import HubServices


class HubCollector(Collector):
    """Reads ingest, store, transfer and fleet figures from a running hub."""

    def __init__(self, hub: HubServices) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        accepted_counts, rejected_counts, clamped_counts = hub.ingest.snapshot()
        accepted = CounterMetricFamily("edgefleet_hub_ingest_accepted", "messages accepted by kind", labels=["kind"])
        for kind, n in sorted(accepted_counts.items()):
            accepted.add_metric([kind], n)
        yield accepted
        rejected = CounterMetricFamily(
            "edgefleet_hub_ingest_rejected", "messages refused by kind and reason", labels=["kind", "reason"]
        )
        for (kind, reason), n in sorted(rejected_counts.items()):
            rejected.add_metric([kind, reason], n)
        yield rejected
        clamped = CounterMetricFamily(
            "edgefleet_hub_ingest_clock_clamped",
            "messages taken with device timestamps set back to the clock-skew bound, by kind (a device clock ahead)",
            labels=["kind"],
        )
        for kind, n in sorted(clamped_counts.items()):
            clamped.add_metric([kind], n)
        yield clamped
        st = hub.views.store_counters()
        yield CounterMetricFamily("edgefleet_hub_telemetry_persisted", "windows written", st.telemetry_persisted)
        yield CounterMetricFamily("edgefleet_hub_telemetry_duplicates", "duplicates dropped", st.telemetry_duplicates)
        yield CounterMetricFamily("edgefleet_hub_store_write_errors", "failed ingest batches", st.write_errors)
        yield CounterMetricFamily(
            "edgefleet_hub_store_database_waits", "tries of an ingest batch that found the database away (it waits)",
            st.database_waits,
        )  # fmt: skip
        yield CounterMetricFamily(
            "edgefleet_hub_telemetry_journal_errors", "windows acknowledged on receipt (MQTT 3.1.1) that could not be "
            "journaled (disk full): lost if the hub process dies before they are stored", st.journal_errors,
        )  # fmt: skip
        yield CounterMetricFamily(
            "edgefleet_hub_telemetry_writer_restarts", "telemetry writers found dead (killed, crashed) and replaced",
            st.writer_restarts,
        )  # fmt: skip
        yield CounterMetricFamily(
            "edgefleet_hub_telemetry_lost", "windows sent to a telemetry writer that died before committing "
            "them, with no journal to send them again (MQTT 5): not stored", st.telemetry_lost,
        )  # fmt: skip
        yield GaugeMetricFamily("edgefleet_hub_store_queue", "messages waiting for the writer", hub.views.queue_depth())
        t = hub.chunks.stats
        yield CounterMetricFamily("edgefleet_hub_chunks_published", "chunks published", t.chunks_published)
        yield CounterMetricFamily("edgefleet_hub_chunk_bytes_published", "chunk bytes published", t.bytes_published)
        yield CounterMetricFamily("edgefleet_hub_chunk_wants", "want messages accepted", t.wants)
        yield CounterMetricFamily(
            "edgefleet_hub_chunks_corrupt", "chunks read from this host's blob files not matching their digest",
            t.corrupt_chunks,
        )  # fmt: skip
        yield CounterMetricFamily(
            "edgefleet_hub_chunk_read_errors", "chunks not published: no good copy of their blob", t.read_errors
        )
        yield GaugeMetricFamily("edgefleet_hub_mqtt_connected", "1 when connected to the broker", hub.mqtt_connected)
        yield GaugeMetricFamily(
            "edgefleet_hub_mqtt_unacknowledged", "messages received, acknowledged once stored (MQTT 5)",
            hub.mqtt_unacknowledged,
        )  # fmt: skip
        adopted = hub.sessions_adopted
        yield CounterMetricFamily(
            "edgefleet_hub_sessions_adopted", "broker sessions of stopped replicas drained and ended", adopted.adopted
        )
        yield CounterMetricFamily(
            "edgefleet_hub_sessions_adopted_messages", "messages those sessions held (stored here)", adopted.messages
        )
        try:  # figures read from the database: while it is away they are left out, and the rest is served
            counts, active = hub.views.state_counts(), hub.rollouts.active()
        except DatabaseUnavailable:
            counts, active = None, None
        yield GaugeMetricFamily(
            "edgefleet_hub_database_up", "1 when the store's database answered this scrape (0: device and rollout "
            "figures left out)", int(counts is not None),
        )  # fmt: skip
        if counts is not None:
            states = GaugeMetricFamily("edgefleet_hub_devices", "enrolled devices by derived state", labels=["state"])
            for state, n in sorted(counts.items()):
                states.add_metric([state.value], n)
            yield states
        yield from rollout_metrics(hub.rollouts, active)


def metrics_text(hub: HubServices) -> bytes:
    """The Prometheus exposition text of `hub`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return generate_latest(registry)

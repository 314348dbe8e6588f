"""The hub's store: the `Store` interface and its SQLite backend (the only place that speaks SQL)."""

from __future__ import annotations

from pathlib import Path

from hub.store.base import (
    Desired,
    DesiredSummary,
    Device,
    Event,
    IngestStats,
    ModelVersion,
    SeqStats,
    Store,
    StoredWindow,
    TelemetryPoint,
    TelemetryTotals,
    Token,
)
from hub.store.sqlite import SqliteStore


def open_store(
    path: Path,
    *,
    max_batch: int = 5000,
    max_queue: int = 200_000,
    max_delay_s: float = 0.05,
    telemetry_process: bool = True,
) -> SqliteStore:
    """Open (creating and migrating) the SQLite store at `path`.

    `telemetry_process`: decode and write telemetry in a writer process of its own (what `hub serve` does by
    default), or in a writer thread of this process (False).
    """
    return SqliteStore(
        path, max_batch=max_batch, max_queue=max_queue, max_delay_s=max_delay_s, telemetry_process=telemetry_process
    )


__all__ = [
    "Desired", "DesiredSummary", "Device", "Event", "IngestStats", "ModelVersion", "SeqStats", "SqliteStore", "Store",
    "StoredWindow", "TelemetryPoint", "TelemetryTotals", "Token", "open_store",
]  # fmt: skip

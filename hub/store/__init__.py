"""The hub's store: the `Store` interface and its SQL backend, on SQLite or PostgreSQL (the only place that speaks
SQL)."""

from __future__ import annotations

from pathlib import Path

from hub.store.base import (
    Desired,
    DesiredSlot,
    DesiredSummary,
    Device,
    DeviceTelemetryRead,
    Event,
    Fence,
    IngestStats,
    ModelVersion,
    SeqStats,
    Store,
    StoredWindow,
    TelemetryPoint,
    TelemetryTotals,
    Token,
)
from hub.store.connection import Database
from hub.store.journal import TelemetryJournal
from hub.store.sql import SqlStore


def open_store(
    database: Database | Path,
    *,
    max_batch: int = 5000,
    max_queue: int = 200_000,
    max_delay_s: float = 0.05,
    telemetry_process: bool = True,
    away_retry_s: float = 5.0,
    journal: TelemetryJournal | None = None,
) -> SqlStore:
    """Open (creating and migrating) the store in `database` (a path is an SQLite file).

    `telemetry_process`: decode and write telemetry in a writer process of its own (what `hub serve` does by
    default), or in a writer thread of this process (False). `away_retry_s`: the longest wait between tries of
    an ingest batch (telemetry, statuses, reports) while the database is away (the batch waits for it).
    `journal`: where telemetry windows wait on disk until stored (`hub.store.journal`; None: in memory only).
    """
    db = Database.sqlite(database) if isinstance(database, Path) else database
    return SqlStore(
        db, max_batch=max_batch, max_queue=max_queue, max_delay_s=max_delay_s, telemetry_process=telemetry_process,
        away_retry_s=away_retry_s, journal=journal,
    )  # fmt: skip


__all__ = [
    "Database", "Desired", "DesiredSlot", "DesiredSummary", "Device", "DeviceTelemetryRead", "Event", "Fence",
    "IngestStats", "ModelVersion", "SeqStats", "SqlStore", "Store", "StoredWindow", "TelemetryJournal",
    "TelemetryPoint",
    "TelemetryTotals", "Token", "open_store",
]  # fmt: skip

"""Telemetry totals over a set of devices and a time range, in one statement (a mixin of SqliteStore).

Rollout gates compare a wave against its control cohort; reading every window of thousands of devices one
device at a time costs a query each. This sums the raw windows that overlap the range, grouped by model
version and shadow candidate, in SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from hub.store.base import TelemetryTotals
from hub.store.migrations import BUCKETS

_TOTALS = (
    "SELECT model_version, json_extract(extra, '$.shadow.candidate_version') AS sv, count(DISTINCT device_id), "  # noqa: S608
    "count(*), sum(requests), sum(errors), sum(sum_ms), "
    "sum(coalesce(json_extract(extra, '$.shadow.samples'), 0)), "
    "sum(coalesce(json_extract(extra, '$.shadow.agreements'), 0)), "
    "sum(json_extract(extra, '$.shadow.latency_delta_ms') * json_extract(extra, '$.shadow.samples')), "
    "sum(coalesce(json_extract(extra, '$.shadow.incomparable'), 0)), "
    + ", ".join(f"sum({b})" for b in BUCKETS)
    + " FROM telemetry WHERE device_id IN (SELECT value FROM json_each(?)) AND start >= ? AND start < ? "
    "GROUP BY model_version, sv ORDER BY model_version, sv"
)


class TotalsQueries:
    """`telemetry_totals` for the SQLite store."""

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    def telemetry_totals(self, device_ids: Sequence[str], *, since: float, until: float) -> list[TelemetryTotals]:
        """Windows of `device_ids` that start in [since, until), summed per (model version, shadow candidate).

        A window that started before `since` is left out even if it ends inside: it may mix what ran before.
        """
        if not device_ids:
            return []
        rows = self._read().execute(_TOTALS, (json.dumps(list(device_ids)), since, until))
        return [
            TelemetryTotals(
                model_version=r[0] or None,
                shadow_version=r[1] if isinstance(r[1], str) else None,
                devices=r[2],
                windows=r[3],
                requests=r[4] or 0,
                errors=r[5] or 0,
                latency_sum_ms=float(r[6] or 0.0),
                shadow_samples=int(r[7] or 0),
                shadow_agreements=int(r[8] or 0),
                shadow_delta_ms_sum=float(r[9] or 0.0),
                shadow_incomparable=int(r[10] or 0),
                latency_counts=tuple(int(c or 0) for c in r[11:]),
            )
            for r in rows
        ]

"""Telemetry totals over a set of devices and a time range, in one statement (a mixin of SqlStore).

Rollout gates compare a wave against its control cohort; reading every window of thousands of devices one
device at a time costs a query each. This sums the raw windows that overlap the range, grouped by model
version and shadow candidate, in the database.
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.store.base import TelemetryTotals
from hub.store.connection import Conn, Dialect
from hub.store.migrations import BUCKETS


def _totals_sql(d: Dialect) -> str:
    def shadow(field: str) -> str:
        return d.json_number("extra", "shadow", field)

    return (
        f"SELECT model_version, {d.json_text('extra', 'shadow', 'candidate_version')} AS sv, "  # noqa: S608
        "count(DISTINCT device_id), count(*), CAST(sum(requests) AS BIGINT), CAST(sum(errors) AS BIGINT), "
        f"sum(sum_ms), sum(coalesce({shadow('samples')}, 0)), sum(coalesce({shadow('agreements')}, 0)), "
        f"sum({shadow('latency_delta_ms')} * {shadow('samples')}), sum(coalesce({shadow('incomparable')}, 0)), "
        f"sum(CASE WHEN {shadow('latency_delta_ms')} IS NULL THEN 0 ELSE coalesce({shadow('samples')}, 0) END), "
        + ", ".join(f"CAST(sum({b}) AS BIGINT)" for b in BUCKETS)
        + f" FROM telemetry WHERE {d.in_list('device_id')} AND start >= ? AND start < ? AND (? = '' OR model = ?) "
        "GROUP BY model_version, sv ORDER BY model_version, sv NULLS FIRST"
    )


class TotalsQueries:
    """`telemetry_totals` of the store."""

    def _read(self) -> Conn:
        raise NotImplementedError

    def telemetry_totals(
        self, device_ids: Sequence[str], *, since: float, until: float, model: str | None = None
    ) -> list[TelemetryTotals]:
        """Windows of `device_ids` that start in [since, until), summed per (model version, shadow candidate);
        only model `model`'s share of each window when given (a rollout's gates judge its model alone).

        A window that started before `since` is left out even if it ends inside: it may mix what ran before.
        """
        if not device_ids:
            return []
        conn = self._read()
        name = model or ""
        rows = conn.execute(_totals_sql(conn.dialect), (conn.dialect.list_param(device_ids), since, until, name, name))
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
                shadow_timed_samples=int(r[11] or 0),
                latency_counts=tuple(int(c or 0) for c in r[12:]),
            )
            for r in rows
        ]

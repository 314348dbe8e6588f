"""Chart data for uPlot: aligned columns over a regular time grid, gaps as null.

Every chart endpoint answers `{"x": [unix seconds...], "partial_from": x or null, "charts": {key: [{"label",
"unit", "values"}...]}}`. `partial_from` is the first grid slot that is not over yet (the one holding "now"): its
sums are partial, and the browser draws it as such (dashed, shaded) instead of as a drop at the right edge.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hub.errors import InvalidInput
from hub.telemetry import summarise

if TYPE_CHECKING:
    from hub.services import HubServices
    from hub.telemetry import Point
    from hub.views import UtilizationPoint

RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
MAX_WINDOWS = 5000


def range_seconds(name: str) -> int:
    """Seconds of a named range (1h, 6h, 24h, 7d); InvalidInput otherwise."""
    try:
        return RANGES[name]
    except KeyError:
        raise InvalidInput(f"unknown range {name!r}: use one of {', '.join(RANGES)}") from None


def _step(seconds: int) -> int:
    """Grid step: minutes up to 6 h, 5 minutes up to a day, 30 minutes beyond."""
    if seconds <= 6 * 3600:
        return 60
    return 300 if seconds <= 86400 else 1800


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def minute_grid(points: list[Point], since: float, until: float, step: int = 60) -> dict[str, Any]:
    """Requests/s, error rate (%), p50/p95/p99 latency (ms) and errors/min on a regular grid."""
    start = int(since // step) * step
    xs = list(range(start, int(until // step) * step + step, step))
    index = {x: i for i, x in enumerate(xs)}
    n = len(xs)
    cols: dict[str, list[float | None]] = {k: [None] * n for k in ("rps", "err", "p50", "p95", "p99", "errors")}
    buckets: dict[int, list[Point]] = {}
    for p in points:
        slot = int(p.minute // step) * step
        if slot in index:
            buckets.setdefault(slot, []).append(p)
    for slot, ps in buckets.items():
        i = index[slot]
        sm = summarise(ps)
        cols["rps"][i] = round(sm.requests / step, 3)
        cols["errors"][i] = float(sm.errors) * 60 / step
        cols["err"][i] = None if sm.error_rate is None else round(sm.error_rate * 100, 3)
        cols["p50"][i] = _r(sm.p50_ms)
        cols["p95"][i] = _r(sm.p95_ms)
        cols["p99"][i] = _r(sm.p99_ms)
    return {"x": xs, "partial_from": xs[-1] if xs and xs[-1] + step > until else None, **cols}


def fleet_charts(hub: HubServices, range_name: str, now: float | None = None) -> dict[str, Any]:
    """Fleet-wide request rate, error rate and p95 latency over the range."""
    now = time.time() if now is None else now
    seconds = range_seconds(range_name)
    since = now - seconds
    grid = minute_grid(hub.telemetry.series(since=since), since, now, _step(seconds))
    return {
        "x": grid["x"],
        "partial_from": grid["partial_from"],
        "charts": {
            "rps": [{"label": "requests/s", "unit": "req/s", "values": grid["rps"]}],
            "err": [{"label": "error rate", "unit": "%", "values": grid["err"]}],
            "p95": [{"label": "p95", "unit": "ms", "values": grid["p95"]}],
        },
    }


def _gpu_columns(windows: list[UtilizationPoint]) -> dict[int, list[float | None]]:
    cols: dict[int, list[float | None]] = {}
    for i, w in enumerate(windows):
        for idx, util in w.gpus.items():
            cols.setdefault(idx, [None] * len(windows))[i] = util
    return cols


def device_charts(hub: HubServices, device_id: str, range_name: str, now: float | None = None) -> dict[str, Any]:
    """One device: latency quantiles, throughput and errors per minute; CPU and GPU utilisation per window."""
    now = time.time() if now is None else now
    seconds = range_seconds(range_name)
    since = now - seconds
    grid = minute_grid(hub.telemetry.series(device_id=device_id, since=since), since, now, _step(seconds))
    windows = hub.views.utilization(device_id, since=since, limit=MAX_WINDOWS)  # oldest first
    util_x = [round(w.end, 3) for w in windows]
    util = [{"label": "CPU", "unit": "%", "values": [w.cpu_percent for w in windows]}]
    util += [{"label": f"GPU {i}", "unit": "%", "values": v} for i, v in sorted(_gpu_columns(windows).items())]
    return {
        "x": grid["x"],
        "partial_from": grid["partial_from"],
        "charts": {
            "latency": [
                {"label": "p50", "unit": "ms", "values": grid["p50"]},
                {"label": "p95", "unit": "ms", "values": grid["p95"]},
                {"label": "p99", "unit": "ms", "values": grid["p99"]},
            ],
            "rps": [{"label": "requests/s", "unit": "req/s", "values": grid["rps"]}],
            "errors": [{"label": "error rate", "unit": "%", "values": grid["err"]}],
        },
        "util": {"x": util_x, "series": util},
    }

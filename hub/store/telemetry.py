"""Telemetry SQL: raw windows (deduplicated by device, seq and model), per-minute rollups, queries, retention.

A window carries one entry per model the device serves: it is stored as one row per model (model and version
columns, the model's counts and histogram), the device's host metrics and spool counters on its first row
only (so sums over rows stay true); a window of a device serving nothing is one row with an empty model.

Writing differs per backend. SQLite (one writer at a time, `BEGIN IMMEDIATE`): insert the rows, then roll up
the ids above the largest id before the insert. PostgreSQL (writers run concurrently, ids commit out of
order): `COPY` the rows into a temporary table, then one statement inserts them and rolls up exactly the rows
that statement inserted (`INSERT ... RETURNING` feeding the rollup), so any number of writers on any number of
hub replicas each roll up their own rows once.
"""

from __future__ import annotations

import json
from typing import Any

from fleet.messages import TelemetryWindow
from hub.store.base import EMPTY_COUNTS, SeqStats, StoredWindow, TelemetryPoint
from hub.store.connection import Conn, Dialect, lock_devices, to_json
from hub.store.migrations import BUCKETS

_COLS = [
    "device_id", "seq", "start", '"end"', "received_at", "model", "model_version", "provider", "requests", "errors",
    "sum_ms", "queue_depth", "cpu_percent", "memory_bytes", "spool_dropped", "spool_pending", "extra", *BUCKETS,
]  # fmt: skip
_RAW_COLS = ", ".join(_COLS)
_INSERT_RAW = f"INSERT INTO telemetry ({_RAW_COLS}) VALUES ({', '.join('?' * len(_COLS))}) ON CONFLICT DO NOTHING"  # noqa: S608
_ROLLED = ["minute", "device_id", "model", "model_version", "windows", "requests", "errors", "sum_ms",
           "queue_depth_max", *BUCKETS]  # fmt: skip


def _rollup(d: Dialect, source: str) -> str:
    """Add the windows of `source` (a table or CTE with telemetry's columns) to their per-minute rollups."""
    minute = "floor(start / 60) * 60" if d.postgres else "CAST(start / 60 AS INTEGER) * 60"
    sums = ", ".join(f"CAST(sum({b}) AS BIGINT)" for b in BUCKETS)
    adds = ", ".join(f"{b} = telemetry_minute.{b} + excluded.{b}" for b in BUCKETS)
    return f"""
        INSERT INTO telemetry_minute ({", ".join(_ROLLED)})
        SELECT {minute}, device_id, model, model_version, count(*), CAST(sum(requests) AS BIGINT),
               CAST(sum(errors) AS BIGINT), sum(sum_ms), max(queue_depth), {sums}
        FROM {source} GROUP BY 1, 2, 3, 4 ORDER BY 2, 1, 3, 4
        ON CONFLICT (minute, device_id, model, model_version) DO UPDATE SET
            windows = telemetry_minute.windows + excluded.windows,
            requests = telemetry_minute.requests + excluded.requests,
            errors = telemetry_minute.errors + excluded.errors, sum_ms = telemetry_minute.sum_ms + excluded.sum_ms,
            queue_depth_max = {d.greatest("telemetry_minute.queue_depth_max", "excluded.queue_depth_max")}, {adds}
    """  # noqa: S608


_SQLITE_ROLLUP = _rollup(Dialect("sqlite"), "telemetry WHERE id > ?")
_PG_STAGE = f"""
    CREATE TEMP TABLE IF NOT EXISTS telemetry_stage ON COMMIT DELETE ROWS
    AS SELECT {_RAW_COLS} FROM telemetry WITH NO DATA
"""  # noqa: S608
_PG_WRITE = f"""
    WITH ins AS (
        INSERT INTO telemetry ({_RAW_COLS}) SELECT {_RAW_COLS} FROM telemetry_stage ORDER BY device_id, seq
        ON CONFLICT (device_id, seq, model) DO NOTHING RETURNING *
    ), rolled AS ({_rollup(Dialect("postgresql"), "ins")})
    SELECT count(*) FROM ins
"""  # noqa: S608
_TOUCH = "UPDATE devices SET last_seen = {last_seen}, telemetry_at = ?, last_requests = ?, last_errors = ? WHERE id = ?"
# PostgreSQL touches a batch's devices in two statements instead of one per device (a statement per device cost
# the server ~10 us, a quarter of a window's whole write when a batch holds one window per device, as it does
# with real fleets): lock the rows in id order first, so writers on several replicas never deadlock on them,
# then update them all from arrays.
_PG_TOUCH = (
    "UPDATE devices AS d SET last_seen = greatest(coalesce(d.last_seen, 0), v.received_at), "
    "telemetry_at = v.received_at, last_requests = v.requests, last_errors = v.errors "
    "FROM unnest(?::text[], ?::float8[], ?::bigint[], ?::bigint[]) AS v(id, received_at, requests, errors) "
    "WHERE d.id = v.id"
)


def window_rows(w: TelemetryWindow, received_at: float) -> list[tuple[Any, ...]]:
    """The rows of one window, one per model (built by the telemetry writer before it writes them)."""
    rows = []
    for i, m in enumerate(w.models or [None]):
        extra: dict[str, Any] = {}
        if i == 0 and w.gpus:
            extra["gpus"] = [g.model_dump(mode="json") for g in w.gpus]
        if i == 0 and w.spool_capacity is not None:
            extra["spool_capacity"] = w.spool_capacity
        if m is not None and m.shadow is not None:
            extra["shadow"] = m.shadow.model_dump(mode="json")
        host = i == 0  # host metrics and spool counters belong to the window, not to a model: stored once
        latency = m.latency if m is not None else None
        rows.append(
            (
                w.device_id,
                w.seq,
                w.start,
                w.end,
                received_at,
                m.name if m else "",
                m.version if m else "",
                m.provider if m else None,
                m.requests if m else 0,
                m.errors if m else 0,
                latency.sum_ms if latency else 0.0,
                m.queue_depth if m else 0,
                w.cpu_percent if host else None,
                w.memory_bytes if host else None,
                w.spool_dropped if host else 0,
                w.spool_pending if host else 0,
                to_json(extra) if extra else None,
                *(latency.counts if latency else EMPTY_COUNTS),
            )
        )
    return rows


_WINDOWS = (
    'SELECT device_id, seq, start, "end", received_at, model, model_version, requests, errors, sum_ms, '
    "queue_depth, spool_dropped, spool_pending, " + ", ".join(BUCKETS) + ", provider, cpu_percent, memory_bytes, extra "
    "FROM telemetry WHERE device_id = ?"
)


def _shadow(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The window's shadow stats (candidate_version, samples, agreements, latency_delta_ms), if it has any."""
    shadow = extra.get("shadow")
    return dict(shadow) if isinstance(shadow, dict) else None


def write_windows(conn: Conn, rows: list[tuple[Any, ...]], *, more_follow: bool = False) -> int:
    """Insert rows (duplicates ignored), roll the new ones up, touch devices. Returns how many were new.

    Call inside a write transaction (`Conn.begin`). SQLite holds its write lock for the whole transaction, so
    the rollup takes exactly the rows this call inserted: the ids above the largest id before the insert.
    `more_follow`: more calls follow in this transaction (the writer's pass in parts), so PostgreSQL's staging
    table is emptied now, not at the commit; else each call would insert every earlier call's rows again.
    """
    if conn.dialect.postgres:
        inserted = _write_postgres(conn, rows)
        if more_follow:
            conn.execute("DELETE FROM telemetry_stage")
    else:
        before = int(conn.execute("SELECT coalesce(max(id), 0) FROM telemetry").fetchone()[0])
        inserted = conn.executemany(_INSERT_RAW, rows)
        if inserted:
            conn.execute(_SQLITE_ROLLUP, (before,))
    if inserted:
        latest: dict[str, tuple[float, int]] = {}  # device -> (end, seq) of its newest window in the batch
        for r in rows:
            prev = latest.get(r[0])
            if prev is None or (r[3], r[1]) >= prev:
                latest[r[0]] = (r[3], r[1])
        counts: dict[str, list[Any]] = {}  # device -> [received_at, requests, errors] over that window's models
        for r in rows:
            if latest[r[0]] == (r[3], r[1]):
                c = counts.setdefault(r[0], [r[4], 0, 0])
                c[1] += r[8]
                c[2] += r[9]
        ids = sorted(counts)  # in device order: writers on several replicas lock the same rows in the same order
        if conn.dialect.postgres:
            lock_devices(conn, ids)
            conn.execute(_PG_TOUCH, (ids, *([counts[d][i] for d in ids] for i in range(3))), binary=True)
        else:
            touch = _TOUCH.format(last_seen=conn.dialect.greatest("coalesce(last_seen, 0)", "?"))
            conn.executemany(touch, [(counts[d][0], counts[d][0], counts[d][1], counts[d][2], d) for d in ids])
    return inserted


def _write_postgres(conn: Conn, rows: list[tuple[Any, ...]]) -> int:
    if "telemetry_stage" not in conn.state:  # a temporary table lives as long as its connection
        conn.execute(_PG_STAGE)
        conn.state["telemetry_stage"] = True
    with conn.raw.cursor() as cur, cur.copy(f"COPY telemetry_stage ({_RAW_COLS}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(r)
    return int(conn.execute(_PG_WRITE).fetchone()[0])


def _overlapping(args: list[Any], since: float | None, until: float | None) -> str:
    """The conditions (` AND ...`) that keep the raw windows overlapping [since, until), their arguments
    appended to `args`: a window that ends at or after `since` and starts before `until` (None: no bound)."""
    sql = ""
    if since is not None:
        sql += ' AND "end" >= ?'
        args.append(since)
    if until is not None:
        sql += " AND start < ?"
        args.append(until)
    return sql


def query_windows(
    conn: Conn, device_id: str, *, since: float | None, until: float | None, limit: int
) -> list[StoredWindow]:
    """Raw windows of one device, newest first."""
    args: list[Any] = [device_id]
    sql = _WINDOWS + _overlapping(args, since, until)
    sql += " ORDER BY start DESC, seq DESC LIMIT ?"
    args.append(limit)
    out = []
    n = 13 + len(BUCKETS)
    for r in conn.execute(sql, args):
        extra = json.loads(r[n + 3]) if r[n + 3] else {}
        out.append(
            StoredWindow(
                device_id=r[0],
                seq=r[1],
                start=r[2],
                end=r[3],
                received_at=r[4],
                model=r[5] or None,
                model_version=r[6] or None,
                requests=r[7],
                errors=r[8],
                latency_sum_ms=r[9],
                latency_counts=tuple(r[13:n]),
                queue_depth=r[10],
                spool_dropped=r[11],
                spool_pending=r[12],
                provider=r[n],
                cpu_percent=r[n + 1],
                memory_bytes=r[n + 2],
                gpus=tuple(extra.get("gpus") or ()),
                shadow=_shadow(extra),
            )
        )
    return out


def query_series(
    conn: Conn,
    *,
    device_id: str | None,
    model: str | None,
    model_version: str | None,
    since: float | None,
    until: float | None,
) -> list[TelemetryPoint]:
    """Per-minute sums over the matching devices and model versions, oldest first."""
    where: list[str] = []
    args: list[Any] = []
    for col, value in (("device_id", device_id), ("model", model), ("model_version", model_version)):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if since is not None:
        where.append("minute >= ?")
        args.append(int(since // 60) * 60)
    if until is not None:
        where.append("minute < ?")
        args.append(until)
    sums = ", ".join(f"CAST(sum({b}) AS BIGINT)" for b in BUCKETS)
    filters = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (
        "SELECT minute, CAST(sum(windows) AS BIGINT), CAST(sum(requests) AS BIGINT), "  # noqa: S608
        f"CAST(sum(errors) AS BIGINT), sum(sum_ms), max(queue_depth_max), {sums} FROM telemetry_minute {filters} "
        "GROUP BY minute ORDER BY minute"
    )
    return [
        TelemetryPoint(
            minute=r[0],
            windows=r[1],
            requests=r[2],
            errors=r[3],
            latency_sum_ms=r[4],
            queue_depth_max=r[5],
            latency_counts=tuple(r[6:]),
        )
        for r in conn.execute(sql, args)
    ]


def seq_stats(conn: Conn, device_id: str, *, since: float | None, until: float | None) -> SeqStats:
    """First and last seq, count, and the windows missing between them (gaps), over stored windows."""
    sql = (  # one row per model of a window: windows are distinct seqs; spool counters are on one row each
        "SELECT min(seq), max(seq), count(DISTINCT seq), CAST(coalesce(sum(spool_dropped), 0) AS BIGINT) "
        "FROM telemetry WHERE device_id = ?"
    )
    args: list[Any] = [device_id]
    sql += _overlapping(args, since, until)
    first, last, count, dropped = conn.execute(sql, args).fetchone()
    missing = 0 if first is None else int(last) - int(first) + 1 - int(count)
    return SeqStats(first, last, int(count), missing, int(dropped))


def _first_id_received_after(conn: Conn, cutoff: float) -> int | None:
    """The smallest id whose window was received at or after `cutoff` (ids grow with arrival time).

    A binary search over ids (each probe is a rowid lookup) instead of an index on received_at, which would
    cost every insert on the ingest path.
    """
    lo_row = conn.execute("SELECT min(id), max(id) FROM telemetry").fetchone()
    if lo_row is None or lo_row[0] is None:
        return None
    lo, hi = int(lo_row[0]), int(lo_row[1]) + 1
    probe = "SELECT received_at FROM telemetry WHERE id >= ? ORDER BY id LIMIT 1"
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(probe, (mid,)).fetchone()
        if row is None or row[0] >= cutoff:
            hi = mid
        else:
            lo = mid + 1
    return lo


def sweep(conn: Conn, *, raw_before: float, rollup_before: float, raw_max_rows: int) -> int:
    """Delete raw windows older than `raw_before` or beyond `raw_max_rows`, and old rollups."""
    deleted = 0
    first_kept = _first_id_received_after(conn, raw_before)
    if first_kept is not None:
        deleted += conn.execute("DELETE FROM telemetry WHERE id < ?", (first_kept,)).rowcount
    row = conn.execute("SELECT max(id) - ? FROM telemetry", (raw_max_rows,)).fetchone()
    if row and row[0] is not None and row[0] > 0:
        deleted += conn.execute("DELETE FROM telemetry WHERE id <= ?", (row[0],)).rowcount
    deleted += conn.execute("DELETE FROM telemetry_minute WHERE minute < ?", (rollup_before,)).rowcount
    return int(deleted)

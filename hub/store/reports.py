"""Status and reported state, the store writer's ingest path: a batch of messages in a few statements.

During a rollout every agent reports its download progress (~130 000 reports for 2000 agents and a 16 MiB
model). Written one message at a time, a report cost three statements (read the previous phase, upsert,
touch the device): in-process calls on SQLite, but three round trips to PostgreSQL each, which made a hub on
PostgreSQL spend 27 s of CPU where one on SQLite spent 16. `write_batch` folds the batch in Python (the same
decisions as one message at a time, in the same order) and writes it in a fixed number of statements: one read
of the previous reports, one upsert, one device update per kind, the phase events. PostgreSQL takes each as one
statement over arrays; SQLite, whose calls are in-process, takes `executemany` of the per-message statements.

Status (birth, last will) is ordered too: every replica writes every status, so a replica running behind, or
a broker redelivering a retained status, would otherwise write an older status over a newer one. A status
replaces the stored one only when it is newer by `status_key`: the device clock's `ts`, and at equal `ts`
`offline` after `online`. That order is right because the agent stamps its birth and its last will with the
same time, that of the connect they belong to (`agent.runtime`): the will of a connection follows its birth,
the birth of the next connection follows that will, and the offline of a clean stop carries the stop time.
The condition is part of the UPDATE (`_STATUS`, `_PG_STATUS`), so two replicas writing at once cannot interleave a read
and a write; a batch keeps, per device, the newest of its statuses by the same key.

When a batch fails on a message the database refuses, the writer writes it again in parts, each a batch of its
own (`hub.store.connection.write_in_parts`), down to the messages that fail alone (`SqlStore._write_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.messages import DeviceStatus, ReportedState
from hub.store.connection import Conn, columns, lock_devices, to_json

_UPSERT = (
    "INSERT INTO applied (device_id, seq, ts, phase, received_at, doc) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, phase = excluded.phase, "
    "received_at = excluded.received_at, doc = excluded.doc "
    "WHERE excluded.seq > applied.seq OR excluded.ts > applied.ts"
)
_EVENT = "INSERT INTO events (ts, actor, action, subject, details) VALUES (?, ?, 'device.phase', ?, ?)"
# a status is newer than the stored one: a later `ts`, or at the same `ts` `offline` after `online` (or the
# same state again: a redelivery is applied, idempotently); a device with no ordered status takes any
_STATUS = (
    "UPDATE devices SET status = ?, status_at = ?, status_ts = ?, session = ?, "
    "capabilities = coalesce(?, capabilities), last_seen = {last_seen} WHERE id = ? AND (status_ts IS NULL "
    "OR ? > status_ts OR (? = status_ts AND (? = 'offline' OR coalesce(status, '') <> 'offline')))"
)
_SEEN = "UPDATE devices SET last_seen = {last_seen} WHERE id = ?"
# PostgreSQL: the same statements over arrays, one round trip each, after `lock_devices` (as the telemetry
# writer does), so the writers of several replicas never deadlock on the rows an UPDATE ... FROM touches.
_PG_UPSERT = (
    "INSERT INTO applied (device_id, seq, ts, phase, received_at, doc) "
    "SELECT * FROM unnest(?::text[], ?::bigint[], ?::float8[], ?::text[], ?::float8[], ?::text[]) "
    "ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, phase = excluded.phase, "
    "received_at = excluded.received_at, doc = excluded.doc "
    "WHERE excluded.seq > applied.seq OR excluded.ts > applied.ts RETURNING device_id"
)
_PG_STATUS = (
    "UPDATE devices AS d SET status = v.status, status_at = v.received, status_ts = v.ts, session = v.session, "
    "capabilities = coalesce(v.caps, d.capabilities), last_seen = greatest(coalesce(d.last_seen, 0), v.received) "
    "FROM unnest(?::text[], ?::text[], ?::float8[], ?::float8[], ?::text[], ?::text[]) "
    "AS v(id, status, received, ts, session, caps) WHERE d.id = v.id AND (d.status_ts IS NULL "
    "OR v.ts > d.status_ts OR (v.ts = d.status_ts AND (v.status = 'offline' OR coalesce(d.status, '') <> 'offline'))) "
    "RETURNING d.id"
)
_PG_SEEN = (
    "UPDATE devices AS d SET last_seen = greatest(coalesce(d.last_seen, 0), v.received) "
    "FROM unnest(?::text[], ?::float8[]) AS v(id, received) WHERE d.id = v.id"
)


def status_key(msg: DeviceStatus) -> tuple[float, bool]:
    """The order of a device's statuses (see the module's docstring): later `ts`, then `offline` after `online`."""
    return msg.ts, msg.state == "offline"


def _status_args(msg: DeviceStatus, received: float) -> tuple[Any, ...]:
    return (msg.state, received, msg.ts, msg.session, _caps(msg), received, msg.device_id, msg.ts, msg.ts, msg.state)


def _caps(msg: DeviceStatus) -> str | None:
    return to_json(msg.capabilities.model_dump(mode="json")) if msg.capabilities else None


def phase_details(msg: ReportedState, previous: str | None) -> str:
    """The details of a device's phase change (event `device.phase`): the phase, active version, transfer and
    error of each of its models."""
    details: dict[str, Any] = {"from": previous, "to": msg.phase.value, "desired_version": msg.desired_version}
    models: dict[str, Any] = {}
    for m in msg.models:
        entry: dict[str, Any] = {"phase": m.phase.value}
        if m.active is not None:
            entry["model"] = f"{m.name}:{m.active.version}"
            entry["provider"] = m.active.provider
        if m.download is not None:
            entry["sha256"] = m.download.sha256
            entry["bytes_total"] = m.download.bytes_total
        if m.error is not None:
            entry["error"] = {"code": m.error.code, "message": m.error.message}
        models[m.name] = entry
    if models:
        details["models"] = models
    if msg.error is not None:
        details["error"] = {"code": msg.error.code, "message": msg.error.message}
    return to_json(details)


def _event_row(msg: ReportedState, previous: str | None, received: float) -> tuple[Any, ...]:
    subject = f"device/{msg.device_id}"
    return (received, subject, subject, phase_details(msg, previous))


@dataclass
class _Device:
    """What a batch does to one device, folded in message order."""

    statuses: int = 0  # status messages as new as every one before them in the batch
    status: tuple[DeviceStatus, float] | None = None  # the newest one (`status_key`), and when it was received
    caps: str | None = None  # the capabilities of the newest birth that gave some
    report: tuple[ReportedState, float] | None = None  # the last report newer than the one stored before it
    applied: int = 0  # reports newer than the one stored before them
    seen: float = 0.0  # the latest reception of an applied report (a status sets last_seen itself)
    events: list[tuple[Any, ...]] = field(default_factory=list)  # phase changes (event row, batch position)


def write_batch(conn: Conn, items: Sequence[tuple[str, Any, float]]) -> tuple[int, int, int]:
    """Write a batch of ("status" | "reported", message, received_at) in the open transaction, with the effect
    of writing each in that order, one batch each: a status unless the stored one is newer (`status_key`), a
    report unless the stored one is as new (a phase change recorded as an event). Returns (statuses applied,
    reports applied, stale reports). Raises what the database raises; the caller rolls back (nothing is
    half-written).
    """
    pg = conn.dialect.postgres
    devices: dict[str, _Device] = {}
    for kind, msg, received in items:
        d = devices.setdefault(msg.device_id, _Device())
        if kind == "status" and (d.status is None or status_key(msg) >= status_key(d.status[0])):
            d.statuses += 1
            d.status = (msg, received)
            d.caps = _caps(msg) or d.caps
    ids = sorted(devices)  # in device order: writers on several replicas lock the same rows in the same order
    lock_devices(conn, ids)
    # the stored report of each reporting device, read after its device row is locked: every writer of
    # `applied` holds that lock, so what is read here is what the upsert below replaces
    reporting = sorted({msg.device_id for kind, msg, _ in items if kind == "reported"})
    stored: dict[str, tuple[int, float, str]] = {}
    if reporting:
        sql = "SELECT device_id, seq, ts, phase FROM applied WHERE " + conn.dialect.in_list("device_id")  # noqa: S608
        found = conn.execute(sql, (conn.dialect.list_param(reporting),), binary=True)
        stored = {r[0]: (r[1], r[2], r[3]) for r in found}
    stale = 0
    for n, (kind, msg, received) in enumerate(items):
        if kind != "reported":
            continue
        d = devices[msg.device_id]
        prev = stored.get(msg.device_id)
        if prev is not None and not (msg.seq > prev[0] or msg.ts > prev[1]):
            stale += 1
            continue
        if prev is None or prev[2] != msg.phase.value:
            d.events.append((*_event_row(msg, None if prev is None else prev[2], received), n))
        stored[msg.device_id] = (msg.seq, msg.ts, msg.phase.value)
        d.report = (msg, received)
        d.applied += 1
        d.seen = max(d.seen, received)
    rows = []  # the upsert: one row per device, its last applied report
    for i in ids:
        report = devices[i].report
        if report is not None:
            m, r = report
            rows.append((i, m.seq, m.ts, m.phase.value, r, m.model_dump_json()))
    if pg:
        written = {r[0] for r in conn.execute(_PG_UPSERT, columns(rows), binary=True)} if rows else set()
        for i, d in devices.items():
            if d.report is not None and i not in written:  # another writer stored one as new (not expected: locked)
                stale += d.applied
                d.applied, d.events = 0, []
        status_rows = []
        for i in ids:
            status = devices[i].status
            if status is not None:
                sm, sr = status
                status_rows.append((i, sm.state, sr, sm.ts, sm.session, devices[i].caps))
        applied_status = 0
        if status_rows:
            updated = conn.execute(_PG_STATUS, columns(status_rows), binary=True)
            applied_status = sum(devices[r[0]].statuses for r in updated)
        seen = [i for i in ids if devices[i].seen]
        if seen:
            conn.execute(_PG_SEEN, (seen, [devices[i].seen for i in seen]), binary=True)
    else:  # in-process calls: the per-message statements, once per status message and once per device
        status_sql = _STATUS.format(last_seen=conn.dialect.greatest("coalesce(last_seen, 0)", "?"))
        status_args = [_status_args(m, r) for kind, m, r in items if kind == "status"]
        applied_status = conn.executemany(status_sql, status_args) if status_args else 0
        if rows:
            conn.executemany(_UPSERT, rows)
            seen_sql = _SEEN.format(last_seen=conn.dialect.greatest("coalesce(last_seen, 0)", "?"))
            conn.executemany(seen_sql, [(r[4], r[0]) for r in rows])
    events = sorted((e for d in devices.values() for e in d.events), key=lambda e: e[-1])  # in message order
    if events:
        conn.executemany(_EVENT, [e[:-1] for e in events])
    return applied_status, sum(d.applied for d in devices.values()), stale

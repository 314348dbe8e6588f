"""Device and desired-state tables of the store (a mixin of SqlStore)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleet.messages import Capabilities, ReportedState
from hub.errors import Conflict, NotFound
from hub.store.base import Desired, DesiredSlot, DesiredSummary, Device, Fence
from hub.store.connection import Conn, Dialect, columns, lock_devices
from hub.store.coordination import check_fence

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def wanting_sql(d: Dialect) -> str:
    """Devices whose desired state names a model version, as a model slot or as a slot's shadow candidate."""
    return (
        "SELECT device_id FROM desired_models WHERE model_name = ? AND model_version = ? "
        "UNION SELECT device_id FROM desired_models WHERE shadow_name = ? AND shadow_version = ?"
    )


# devices whose desired state, issued at or after a time, names a blob: as a slot's model, or as a slot's shadow
# candidate (whose blob is that of its model version)
_TOLD = (
    "SELECT m.device_id FROM desired_models m JOIN desired d ON d.device_id = m.device_id "
    "WHERE m.sha256 = ? AND d.issued_at >= ? "
    "UNION SELECT m.device_id FROM model_versions v JOIN desired_models m "
    "ON m.shadow_name = v.name AND m.shadow_version = v.version JOIN desired d ON d.device_id = m.device_id "
    "WHERE v.sha256 = ? AND d.issued_at >= ?"
)
_DEVICE = (
    "SELECT d.id, d.labels, d.password_hash, d.enrolled_at, d.enrolled_by, d.status, d.status_at, d.session, "
    "d.capabilities, d.last_seen, a.doc, a.received_at, d.telemetry_at, d.last_requests, d.last_errors, "
    "d.desired_counter FROM devices d LEFT JOIN applied a ON a.device_id = d.id"
)
_PG_PUT_DESIRED = (
    "INSERT INTO desired (device_id, version, envelope, issued_at, expires_at) "
    "SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::float8[], ?::float8[]) "
    "ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, envelope = excluded.envelope, "
    "issued_at = excluded.issued_at, expires_at = excluded.expires_at "
    "WHERE excluded.version > desired.version RETURNING device_id"
)
_PG_PUT_SLOTS = (
    "INSERT INTO desired_models (device_id, position, model_name, model_version, sha256, shadow_name, "
    "shadow_version, runtime, rollout_id) "
    "SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], "
    "?::text[])"
)
_DESIRED = "SELECT device_id, version, envelope, issued_at, expires_at FROM desired"
_SLOTS = (
    "SELECT device_id, model_name, model_version, sha256, shadow_name, shadow_version, runtime, rollout_id "
    "FROM desired_models"
)


def _parsed(cls: type[M], text: str | None, device_id: str) -> M | None:
    """A stored message as its fleet type. Everything stored was validated on the way in, so a failure means
    a document from an incompatible build: it reads as absent (with a log line), never as an error."""
    if not text:
        return None
    try:
        return cls.model_validate_json(text)
    except ValidationError as e:
        log.warning("store: stored %s of %s does not parse (%d errors); read as absent", cls.__name__, device_id,
                    e.error_count())  # fmt: skip
        return None


def _device(r: Any) -> Device:
    return Device(
        id=r[0], labels=json.loads(r[1]), password_hash=r[2], enrolled_at=r[3], enrolled_by=r[4], status=r[5],
        status_at=r[6], session=r[7], capabilities=_parsed(Capabilities, r[8], r[0]), last_seen=r[9],
        reported=_parsed(ReportedState, r[10], r[0]), reported_at=r[11], telemetry_at=r[12],
        last_requests=r[13], last_errors=r[14], desired_counter=r[15],
    )  # fmt: skip


def _desired(r: Any, slots: dict[str, list[DesiredSlot]]) -> Desired:
    return Desired(r[0], r[1], tuple(slots.get(r[0], ())), r[2], r[3], r[4])


def _slots(conn: Conn, device_id: str | None = None) -> dict[str, list[DesiredSlot]]:
    """The model slots of every stored desired state (or one device's), by device, in slot order."""
    sql = _SLOTS + (" WHERE device_id = ?" if device_id is not None else "") + " ORDER BY device_id, position"
    out: dict[str, list[DesiredSlot]] = {}
    for r in conn.execute(sql, (device_id,) if device_id is not None else ()):
        slot = DesiredSlot(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else {}, r[7])
        out.setdefault(r[0], []).append(slot)
    return out


class DeviceTables:
    """Devices, their labels and their signed desired states."""

    def _write(self, fn: Callable[[Conn], T], timeout: float = 60.0) -> T:
        raise NotImplementedError

    def _read(self) -> Conn:
        raise NotImplementedError

    def add_device(self, device: Device) -> None:
        """Enrol a device; Conflict when the id exists."""
        self.add_devices([device])

    def add_devices(self, devices: list[Device]) -> None:
        """Enrol devices in one transaction: all of them, or none (Conflict names ids already enrolled)."""
        ids = [d.id for d in devices]

        def job(c: Conn) -> None:
            taken: list[str] = []
            for start in range(0, len(ids), 500):  # bounded parameter lists
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = c.execute(f"SELECT id FROM devices WHERE id IN ({marks})", part).fetchall()  # noqa: S608
                taken += [r[0] for r in rows]
            if taken:
                shown = ", ".join(sorted(taken)[:10]) + (f" and {len(taken) - 10} more" if len(taken) > 10 else "")
                message = f"already enrolled: {shown}" if len(ids) > 1 else f"device {ids[0]} is already enrolled"
                raise Conflict(message, devices=sorted(taken))  # every one: bounded by the batch
            c.executemany(
                "INSERT INTO devices (id, labels, password_hash, enrolled_at, enrolled_by) VALUES (?, ?, ?, ?, ?)",
                [(d.id, json.dumps(d.labels), d.password_hash, d.enrolled_at, d.enrolled_by) for d in devices],
            )

        self._write(job)

    def get_device(self, device_id: str) -> Device | None:
        row = self._read().execute(_DEVICE + " WHERE d.id = ?", (device_id,)).fetchone()
        return None if row is None else _device(row)

    def list_devices(self) -> list[Device]:
        return [_device(r) for r in self._read().execute(_DEVICE + " ORDER BY d.id")]

    def set_labels(self, device_id: str, labels: dict[str, str]) -> Device:
        """Replace a device's labels; NotFound for an unknown device."""

        def job(c: Conn) -> Device:
            if c.execute("UPDATE devices SET labels = ? WHERE id = ?", (json.dumps(labels), device_id)).rowcount == 0:
                raise NotFound(f"device {device_id} is not enrolled")
            return _device(c.execute(_DEVICE + " WHERE d.id = ?", (device_id,)).fetchone())

        return self._write(job)

    def set_password_hash(self, device_id: str, password_hash: str) -> Device:
        """Replace a device's broker password hash (a rekey); NotFound for an unknown device."""

        def job(c: Conn) -> Device:
            sql = "UPDATE devices SET password_hash = ? WHERE id = ?"
            if c.execute(sql, (password_hash, device_id)).rowcount == 0:
                raise NotFound(f"device {device_id} is not enrolled")
            return _device(c.execute(_DEVICE + " WHERE d.id = ?", (device_id,)).fetchone())

        return self._write(job)

    def allocate_desired_versions(self, device_ids: list[str]) -> dict[str, int]:
        """Reserve the next desired-state version of each device (persisted: monotonic across restarts)."""
        ids = sorted(set(device_ids))  # in device order: replicas lock the same rows in the same order

        def job(c: Conn) -> dict[str, int]:
            lock_devices(c, ids)
            sql = f"UPDATE devices SET desired_counter = desired_counter + 1 WHERE {c.dialect.in_list('id')} "  # noqa: S608
            rows = c.execute(sql + "RETURNING id, desired_counter", (c.dialect.list_param(ids),)).fetchall()
            out = {r[0]: int(r[1]) for r in rows}
            missing = [d for d in ids if d not in out]
            if missing:
                raise NotFound(f"device {missing[0]} is not enrolled")
            return out

        return self._write(job)

    def put_desired(self, states: list[Desired], *, fence: Fence | None = None) -> None:
        """Record signed desired states and their model slots (replacing each device's previous one, never by
        an older version: its slots stay with it).

        `fence`: the leader lease the caller acts under (the rollout controller); LeaseLost, and nothing
        recorded, once it is no longer held.
        """
        # in device order: replicas lock the same rows in the same order
        rows = sorted((s.device_id, s.version, s.envelope, s.issued_at, s.expires_at) for s in states)
        sql = (
            "INSERT INTO desired (device_id, version, envelope, issued_at, expires_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET version = excluded.version, "
            "envelope = excluded.envelope, issued_at = excluded.issued_at, expires_at = excluded.expires_at "
            "WHERE excluded.version > desired.version"
        )
        slot_sql = (
            "INSERT INTO desired_models (device_id, position, model_name, model_version, sha256, shadow_name, "
            "shadow_version, runtime, rollout_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )

        def job(c: Conn) -> None:
            if fence is not None:
                check_fence(c, fence)
            if c.dialect.postgres:  # one statement over arrays, not a round trip per device
                written = {r[0] for r in c.execute(_PG_PUT_DESIRED, columns(rows), binary=True)} if rows else set()
            else:
                written = {row[0] for row in rows if c.execute(sql, row).rowcount}
            # a device whose stored state is newer keeps it and its slots
            replaced = [s for s in states if s.device_id in written]
            slots = [
                (s.device_id, i, m.model_name, m.model_version, m.sha256, m.shadow_name, m.shadow_version,
                 json.dumps(m.runtime), m.rollout_id)
                for s in replaced
                for i, m in enumerate(s.slots)
            ]  # fmt: skip
            if c.dialect.postgres:  # two statements for the batch: a 2000-device deploy 0.10-0.16 s -> 0.05 s
                ids = [s.device_id for s in replaced]
                c.execute("DELETE FROM desired_models WHERE device_id = ANY(?::text[])", (ids,), binary=True)
                if slots:
                    c.execute(_PG_PUT_SLOTS, columns(slots), binary=True)
            else:
                c.executemany("DELETE FROM desired_models WHERE device_id = ?", [(s.device_id,) for s in replaced])
                c.executemany(slot_sql, slots)

        self._write(job)

    def get_desired(self, device_id: str) -> Desired | None:
        conn = self._read()
        row = conn.execute(_DESIRED + " WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else _desired(row, _slots(conn, device_id))

    def list_desired(self) -> list[Desired]:
        conn = self._read()
        slots = _slots(conn)
        return [_desired(r, slots) for r in conn.execute(_DESIRED + " ORDER BY device_id")]

    def list_desired_summaries(self) -> list[DesiredSummary]:
        """Every desired state's model slots, without reading signed bodies."""
        conn = self._read()
        slots = _slots(conn)
        return [
            DesiredSummary(r[0], r[1], tuple(slots.get(r[0], ())))
            for r in conn.execute("SELECT device_id, version FROM desired ORDER BY device_id")
        ]

    def list_desired_heads(self) -> list[Desired]:
        """Every desired state without its envelope (left empty): for listings of thousands of devices,
        where parsing each signed document would dominate."""
        conn = self._read()
        slots = _slots(conn)
        sql = "SELECT device_id, version, issued_at, expires_at FROM desired ORDER BY device_id"
        return [Desired(r[0], r[1], tuple(slots.get(r[0], ())), "", r[2], r[3]) for r in conn.execute(sql)]

    def wanted_versions(self) -> dict[str, dict[str, int]]:
        """For each model, how many devices' desired states name each of its versions (versions across the
        fleet, per model)."""
        out: dict[str, dict[str, int]] = {}
        sql = "SELECT model_name, model_version, count(*) FROM desired_models GROUP BY model_name, model_version"
        for name, version, n in self._read().execute(sql):
            out.setdefault(name, {})[version] = int(n)
        return out

    def devices_wanting(self, name: str, version: str) -> list[str]:
        conn = self._read()
        rows = conn.execute(wanting_sql(conn.dialect), (name, version, name, version))
        return sorted(r[0] for r in rows)

    def devices_told(self, sha256: str, *, since: float) -> list[str]:
        """Devices whose desired state names blob `sha256` (a slot's model or shadow candidate) and was issued
        at or after `since` (Unix seconds, the issuing hub's clock): whom deploys on any replica told lately."""
        return sorted(r[0] for r in self._read().execute(_TOLD, (sha256, since, sha256, since)))

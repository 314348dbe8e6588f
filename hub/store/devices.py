"""Device and desired-state tables of the store (a mixin of SqlStore)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleet.messages import Capabilities, ReportedState
from hub.errors import Conflict, NotFound
from hub.store.base import Desired, DesiredSummary, Device, Fence
from hub.store.connection import Conn, Dialect
from hub.store.coordination import check_fence

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def wanting_sql(d: Dialect) -> str:
    """Devices whose desired state names a model version, as the model or as the shadow candidate."""
    return (
        "SELECT device_id FROM desired WHERE model_name = ? AND model_version = ? "  # noqa: S608
        f"UNION SELECT device_id FROM desired WHERE {d.json_text('envelope', 'body', 'shadow', 'model', 'name')} = ? "
        f"AND {d.json_text('envelope', 'body', 'shadow', 'model', 'version')} = ?"
    )


_DEVICE = (
    "SELECT d.id, d.labels, d.password_hash, d.enrolled_at, d.enrolled_by, d.status, d.status_at, d.session, "
    "d.capabilities, d.last_seen, a.doc, a.received_at, d.telemetry_at, d.last_requests, d.last_errors, "
    "d.desired_counter FROM devices d LEFT JOIN applied a ON a.device_id = d.id"
)
_DESIRED = (
    "SELECT device_id, version, model_name, model_version, sha256, envelope, issued_at, expires_at, "
    "rollout_id FROM desired"
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


def _desired(r: Any) -> Desired:
    return Desired(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


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
                raise Conflict(f"already enrolled: {shown}" if len(ids) > 1 else f"device {ids[0]} is already enrolled")
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

    def allocate_desired_versions(self, device_ids: list[str]) -> dict[str, int]:
        """Reserve the next desired-state version of each device (persisted: monotonic across restarts)."""

        def job(c: Conn) -> dict[str, int]:
            out = {}
            for device_id in device_ids:
                row = c.execute(
                    "UPDATE devices SET desired_counter = desired_counter + 1 WHERE id = ? RETURNING desired_counter",
                    (device_id,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"device {device_id} is not enrolled")
                out[device_id] = int(row[0])
            return out

        return self._write(job)

    def put_desired(self, states: list[Desired], *, fence: Fence | None = None) -> None:
        """Record signed desired states (replacing each device's previous one, never by an older version).

        `fence`: the leader lease the caller acts under (the rollout controller); LeaseLost, and nothing
        recorded, once it is no longer held.
        """
        rows = [
            (s.device_id, s.version, s.model_name, s.model_version, s.sha256, s.envelope, s.issued_at,
             s.expires_at, s.rollout_id)
            for s in states
        ]  # fmt: skip
        sql = (
            "INSERT INTO desired (device_id, version, model_name, model_version, sha256, envelope, issued_at, "
            "expires_at, rollout_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
            "version = excluded.version, model_name = excluded.model_name, model_version = excluded.model_version, "
            "sha256 = excluded.sha256, envelope = excluded.envelope, "
            "issued_at = excluded.issued_at, expires_at = excluded.expires_at, rollout_id = excluded.rollout_id "
            "WHERE excluded.version > desired.version"
        )

        def job(c: Conn) -> None:
            if fence is not None:
                check_fence(c, fence)
            c.executemany(sql, rows)

        self._write(job)

    def get_desired(self, device_id: str) -> Desired | None:
        row = self._read().execute(_DESIRED + " WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else _desired(row)

    def list_desired(self) -> list[Desired]:
        return [_desired(r) for r in self._read().execute(_DESIRED + " ORDER BY device_id")]

    def list_desired_summaries(self) -> list[DesiredSummary]:
        """Every desired state's names and runtime, without decoding signed bodies in Python."""
        conn = self._read()
        d = conn.dialect
        sql = (
            "SELECT device_id, version, rollout_id, model_name, model_version, "  # noqa: S608
            f"{d.json_text('envelope', 'body', 'shadow', 'model', 'name')}, "
            f"{d.json_text('envelope', 'body', 'shadow', 'model', 'version')}, "
            f"{d.json_text('envelope', 'body', 'runtime')} FROM desired ORDER BY device_id"
        )
        return [
            DesiredSummary(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]) if r[7] else {})
            for r in conn.execute(sql)
        ]

    def list_desired_heads(self) -> list[Desired]:
        """Every desired state without its envelope (left empty): for listings of thousands of devices, where
        reading each signed document would dominate."""
        sql = (
            "SELECT device_id, version, model_name, model_version, sha256, issued_at, expires_at, rollout_id "
            "FROM desired ORDER BY device_id"
        )
        return [Desired(r[0], r[1], r[2], r[3], r[4], "", r[5], r[6], r[7]) for r in self._read().execute(sql)]

    def devices_wanting(self, name: str, version: str) -> list[str]:
        conn = self._read()
        rows = conn.execute(wanting_sql(conn.dialect), (name, version, name, version))
        return sorted(r[0] for r in rows)

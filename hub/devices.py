"""Devices: enrolment with a bootstrap bundle, labels, selectors and the derived device state."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from fleet.bundle import MAX_ENROL_BATCH as MAX_BATCH
from fleet.bundle import DeviceBundle
from fleet.errors import InvalidId
from fleet.ids import check_device_id
from fleet.messages import Phase, ReportedState
from hub.credentials import mosquitto_hash, new_password
from hub.errors import InvalidInput, NotFound
from hub.selectors import check_labels, parse_selector
from hub.settings import DeviceSettings
from hub.store import Desired, DesiredSummary, Device, Store

_LOOKUP = object()


class DeviceState(StrEnum):
    """What the hub makes of a device from its status, reported state and telemetry."""

    ONLINE = "online"
    OFFLINE = "offline"
    UPDATING = "updating"
    FAILED = "failed"
    DEGRADED = "degraded"


def derive_state(device: Device, desired: Desired | None, *, now: float, settings: DeviceSettings) -> DeviceState:
    """Derive a device's state. Order: offline, failed, updating, degraded, online.

    - offline: never connected, its last will / an offline status, or silent for `stale_after_s`;
    - failed: its reported phase is `failed` (the running model, if any, still serves);
    - updating: downloading or activating, or a newer desired version than it has accepted;
    - degraded: its last telemetry window has an error rate above `degraded_error_rate`, or it reports a
      temporary error;
    - online: none of the above.
    """
    if device.status != "online" or device.last_seen is None or now - device.last_seen > settings.stale_after_s:
        return DeviceState.OFFLINE
    reported = device.reported
    phase = reported.phase if reported else None
    if phase is Phase.FAILED:
        return DeviceState.FAILED
    accepted = reported.desired_version if reported else None
    if phase in (Phase.DOWNLOADING, Phase.ACTIVATING) or (
        desired is not None and (accepted is None or accepted < desired.version)
    ):
        return DeviceState.UPDATING
    requests, errors = device.last_requests or 0, device.last_errors or 0
    errored = reported is not None and (reported.error or any(m.error for m in reported.models))
    if (requests and errors / requests > settings.degraded_error_rate) or errored:
        return DeviceState.DEGRADED
    return DeviceState.ONLINE


def reported_phase(reported: ReportedState | None) -> str | None:
    """The phase of a device as a whole, from its stored reported state (`fleet.messages.ReportedState.phase`);
    None when it never reported."""
    return reported.phase.value if reported is not None else None


def active_models(reported: ReportedState | None) -> list[str]:
    """`name:version` of every model a device reports active, in its order."""
    if reported is None:
        return []
    return [f"{m.active.name}:{m.active.version}" for m in reported.models if m.active is not None]


def desired_models(desired: Desired | DesiredSummary | None) -> list[str]:
    """`name:version` of every model slot of a stored desired state, in its order."""
    return [f"{s.model_name}:{s.model_version}" for s in desired.slots] if desired is not None else []


class Devices:
    """Enrolment and labels. Transport-free: the API and the CLI both call this."""

    def __init__(
        self,
        store: Store,
        settings: DeviceSettings,
        *,
        bundle_fields: Callable[[], dict[str, Any]],
        on_enrolled: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._bundle_fields = bundle_fields
        self._on_enrolled = on_enrolled

    def add(self, device_id: str, labels: dict[str, str], *, actor: str) -> tuple[Device, DeviceBundle]:
        """Enrol a device; returns it and its bootstrap bundle (the only time the password is shown)."""
        (pair,) = self.add_many([(device_id, labels)], actor=actor)
        return pair

    def add_many(self, entries: list[tuple[str, dict[str, str]]], *, actor: str) -> list[tuple[Device, DeviceBundle]]:
        """Enrol devices at once: one transaction, one audit event, one broker account update.

        All or none: every id and label set is checked first (InvalidInput names the first bad one), an id
        listed twice or already enrolled (Conflict) enrols nobody.
        """
        if not 1 <= len(entries) <= MAX_BATCH:
            raise InvalidInput(f"enrol 1 to {MAX_BATCH} devices per request, not {len(entries)}")
        seen: set[str] = set()
        for device_id, labels in entries:
            try:
                check_device_id(device_id)
            except InvalidId as e:
                raise InvalidInput(str(e)) from e
            check_labels(labels)
            if device_id in seen:
                raise InvalidInput(f"device {device_id} is listed twice")
            seen.add(device_id)
        now = time.time()
        passwords = [new_password() for _ in entries]
        devices = [
            Device(
                id=device_id,
                labels=dict(labels),
                password_hash=mosquitto_hash(password),
                enrolled_at=now,
                enrolled_by=actor,
            )
            for (device_id, labels), password in zip(entries, passwords, strict=True)
        ]
        self.store.add_devices(devices)
        if len(devices) == 1:
            self.store.add_event(now, actor, "device.add", f"device/{devices[0].id}", {"labels": devices[0].labels})
        else:
            ids = [d.id for d in devices]
            details = {"count": len(ids), "ids": ids[:100], "more": max(0, len(ids) - 100)}
            self.store.add_event(now, actor, "device.add", "devices", details)
        if self._on_enrolled is not None:
            self._on_enrolled([d.id for d in devices])
        fields = self._bundle_fields()
        return [
            (
                d,
                DeviceBundle(
                    device_id=d.id, mqtt_username=d.id, mqtt_password=password, labels=dict(d.labels), **fields
                ),
            )
            for d, password in zip(devices, passwords, strict=True)
        ]

    def rekey(self, device_id: str, *, actor: str, readmitted: bool = False) -> tuple[Device, DeviceBundle]:
        """Give an enrolled device a new broker password; returns it and its new bootstrap bundle.

        Everything else (labels, desired state, history, rollouts) stays. The old password stops working once
        the broker's accounts are rewritten (`Hub.rekey_device` does that next). NotFound for an unknown id.
        """
        password = new_password()
        device = self.store.set_password_hash(device_id, mosquitto_hash(password))
        self.store.add_event(time.time(), actor, "device.rekey", f"device/{device_id}", {"readmitted": readmitted})
        bundle = DeviceBundle(
            device_id=device.id, mqtt_username=device.id, mqtt_password=password, labels=dict(device.labels),
            **self._bundle_fields(),
        )  # fmt: skip
        return device, bundle

    def get(self, device_id: str) -> Device:
        """A device, or NotFound."""
        device = self.store.get_device(device_id)
        if device is None:
            raise NotFound(f"device {device_id} is not enrolled")
        return device

    def find(self, selector: str | None = None) -> list[Device]:
        """Every device, or those matching a label selector (InvalidSelector names a bad position)."""
        devices = self.store.list_devices()
        if not selector:
            return devices
        sel = parse_selector(selector)
        return [d for d in devices if sel.matches(d.labels)]

    def label(self, device_id: str, set_: dict[str, str], remove: list[str], *, actor: str) -> Device:
        """Set and remove labels of a device."""
        device = self.get(device_id)
        labels = {k: v for k, v in device.labels.items() if k not in remove}
        labels.update(set_)
        check_labels(labels)
        updated = self.store.set_labels(device_id, labels)
        self.store.add_event(time.time(), actor, "device.label", f"device/{device_id}", {"set": set_, "remove": remove})
        return updated

    def state(
        self, device: Device, desired: Desired | object | None = _LOOKUP, *, now: float | None = None
    ) -> DeviceState:
        """The derived state of `device` now (`desired` as already read, or looked up when not given)."""
        if not isinstance(desired, Desired | None):
            desired = self.store.get_desired(device.id)
        return derive_state(device, desired, now=time.time() if now is None else now, settings=self.settings)

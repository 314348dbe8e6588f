"""Desired states: build, sign (Ed25519), record and publish them retained at QoS 1, one per device.

A device's desired state holds several model slots. `Deployer.set_slot` sets (or removes) ONE model's slot on
some devices and keeps every other slot of each device as it is; the document is re-signed as a new version
whenever any slot changes. It is the primitive the rollout engine builds on; `deploy` and `undeploy` target a
label selector. Versions come from a per-device counter in the store, so they stay monotonic across restarts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fleet.codec import encode
from fleet.messages import MAX_MODELS, DesiredModel, DesiredState, RuntimeOptions, ShadowSpec, SignedEnvelope
from fleet.signing import HubSigningKey
from fleet.topics import TopicKind, Topics, spec
from hub.capacity import check_runtime, check_task
from hub.devices import Devices
from hub.errors import Conflict, InvalidInput, TooLarge
from hub.limits import desired_state_bytes, fits, too_large_message
from hub.registry import Registry
from hub.settings import DeviceSettings
from hub.store import Desired, DesiredSlot, Fence, Store

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes, int, bool], object]


@dataclass(frozen=True)
class DeployResult:
    """The devices a deployment targeted and the desired-state version each got (`version` None: removed)."""

    model: str
    version: str | None
    devices: dict[str, int]


class Deployer:
    """Signs and publishes desired states. Transport-free: `publish` is any (topic, payload, qos, retain) sink."""

    def __init__(
        self,
        store: Store,
        key: HubSigningKey,
        topics: Topics,
        publish: Publish,
        settings: DeviceSettings,
        *,
        registry: Registry,
        devices: Devices,
    ) -> None:
        self.store = store
        self.key = key
        self.topics = topics
        self._publish = publish
        self.settings = settings
        self.registry = registry
        self.devices = devices
        self._spec = spec(TopicKind.DESIRED)
        self._lock = threading.Lock()

    def deploy(
        self,
        name: str,
        version: str,
        selector: str,
        *,
        actor: str,
        runtime: RuntimeOptions | None = None,
        rollout_id: str | None = None,
    ) -> DeployResult:
        """Set model `name` to `version` on every device matching `selector`; their other models stay."""
        _check_selector(selector)
        ref = self.registry.ref(self.registry.servable(name, version))
        found = self._targets(selector)
        check_task(found, ref.task)  # an agent refuses a whole desired state with a task it does not know
        check_runtime(found, runtime, self.other_runtimes(name))  # GPUs, MIG slices and pods each device advertises
        targets = [d.id for d in found]
        slot = DesiredModel(model=ref, runtime=runtime or RuntimeOptions(), rollout_id=rollout_id)
        states = self.set_slot(targets, name, slot)
        self.store.add_event(
            time.time(), actor, "deploy", f"model/{name}:{version}",
            {"selector": selector, "devices": targets, "rollout_id": rollout_id},
        )  # fmt: skip
        return DeployResult(name, version, {s.device_id: s.version for s in states})

    def other_runtimes(self, name: str) -> dict[str, list[RuntimeOptions]]:
        """Device id -> runtime options of its desired models other than `name` (their pods hold resources)."""
        out: dict[str, list[RuntimeOptions]] = {}
        for s in self.store.list_desired_summaries():
            for slot in s.slots:
                if slot.model_name != name:
                    try:
                        out.setdefault(s.device_id, []).append(RuntimeOptions.model_validate(slot.runtime))
                    except ValidationError:
                        continue  # stored by an older hub: its resources are unknown
        return out

    def undeploy(self, name: str, selector: str, *, actor: str) -> DeployResult:
        """Remove model `name` from every device matching `selector` that has it; their other models stay.

        Raises:
            InvalidInput: the selector is empty or matches no device, or no matching device has the model.
        """
        found = self._targets(selector)
        have = {s.device_id for s in self.store.list_desired_summaries() if s.slot(name) is not None}
        targets = [d.id for d in found if d.id in have]
        if not targets:
            raise InvalidInput(
                f"none of the {len(found)} device(s) matching {selector!r} has model {name!r} in its desired state",
                code="no_match",
            )
        states = self.set_slot(targets, name, None)
        self.store.add_event(
            time.time(), actor, "undeploy", f"model/{name}", {"selector": selector, "devices": targets}
        )  # fmt: skip
        return DeployResult(name, None, {s.device_id: s.version for s in states})

    def _targets(self, selector: str) -> list[Any]:
        _check_selector(selector)
        found = self.devices.find(selector)
        if not found:
            raise InvalidInput(f"selector {selector!r} matches no enrolled device", code="no_match")
        return found

    def set_slot(
        self, device_ids: list[str], name: str, slot: DesiredModel | None, *, fence: Fence | None = None
    ) -> list[Desired]:
        """Set model `name`'s slot to `slot` (None: remove it) in each device's desired state, keep the other
        slots, then sign, record and publish each (a fresh version each).

        Serialised: two concurrent calls for the same device publish in version order, so the retained
        message on the broker is always the newest recorded state, and no call loses another's slot.
        `fence`: the leader lease the caller acts under; LeaseLost, and nothing recorded or published, once it
        no longer holds.

        Raises:
            Conflict: a device would serve more than MAX_MODELS models.
            TooLarge: a device's signed state would exceed the agents' message limit (nothing is allocated or
                sent).
        """
        if slot is not None and slot.name != name:
            raise ValueError(f"slot of {slot.name!r} given for model {name!r}")
        with self._lock:
            current = self._current(device_ids)
            plans: dict[str, list[DesiredModel]] = {}
            for device_id in device_ids:
                models = [m for m in current.get(device_id, []) if m.name != name]
                old = next((i for i, m in enumerate(current.get(device_id, [])) if m.name == name), None)
                if slot is not None:
                    models.insert(old if old is not None else len(models), slot)
                if len(models) > MAX_MODELS:
                    raise Conflict(f"device {device_id} would serve {len(models)} models; at most {MAX_MODELS}")
                plans[device_id] = models
            _check_sizes(plans)
            # recorded before the first publish: a device may want the blob within a millisecond of its state,
            # and the chunk server (the leader's, whichever replica this is) learns from the store whom it awaits
            states = self._sign(plans, fence)
            self._send_all(states)
        return states

    def _current(self, device_ids: list[str]) -> dict[str, list[DesiredModel]]:
        """The model slots of each device's stored desired state (a state of another schema reads as empty)."""
        wanted = set(device_ids)
        out: dict[str, list[DesiredModel]] = {}
        for s in self.store.list_desired() if len(wanted) > 8 else filter(None, map(self.store.get_desired, wanted)):
            if s.device_id in wanted:
                out[s.device_id] = _slots_of(_body(s))
        return out

    def _sign(self, plans: dict[str, list[DesiredModel]], fence: Fence | None = None) -> list[Desired]:
        """Sign and record one desired state per device with the given slots (call under the lock, then
        `_send_all` them under it)."""
        versions = self.store.allocate_desired_versions(list(plans))
        now = time.time()
        states = []
        for device_id, models in plans.items():
            body = DesiredState(
                device_id=device_id, version=versions[device_id], issued_at=now,
                expires_at=now + self.settings.desired_ttl_s, models=models,
            )  # fmt: skip
            states.append(self._record(body, self.key.sign(body)))
        self.store.put_desired(states, fence=fence)
        return states

    def _send_all(self, states: list[Desired]) -> None:
        for s in states:
            self._send(s)

    @staticmethod
    def _record(body: DesiredState, env: SignedEnvelope) -> Desired:
        slots = tuple(
            DesiredSlot(
                model_name=m.name,
                model_version=m.model.version,
                sha256=m.model.blob.sha256,
                shadow_name=m.shadow.model.name if m.shadow else None,
                shadow_version=m.shadow.model.version if m.shadow else None,
                runtime=m.runtime.model_dump(mode="json"),
                rollout_id=m.rollout_id,
            )
            for m in body.models
        )
        return Desired(
            device_id=body.device_id, version=body.version, slots=slots, envelope=encode(env).decode(),
            issued_at=body.issued_at, expires_at=body.expires_at,
        )  # fmt: skip

    def _send(self, state: Desired) -> None:
        """Publish the stored envelope as it is: it was encoded once, when it was signed."""
        payload = state.envelope.encode()
        self._publish(self.topics.desired(state.device_id), payload, self._spec.qos, self._spec.retained)

    def republish_all(self) -> int:
        """Publish every stored desired state again (after a (re)connect: the broker may have lost them)."""
        with self._lock:
            states = self.store.list_desired()
            self._send_all(states)
            return len(states)

    def refresh_expiring(self, *, now: float | None = None) -> int:
        """Re-sign (as a new version, same slots) every desired state past half of its validity."""
        now = time.time() if now is None else now
        stale = [s for s in self.store.list_desired() if now >= s.issued_at + (s.expires_at - s.issued_at) / 2]
        if stale:
            with self._lock:
                self._send_all(self._sign({s.device_id: _slots_of(_body(s)) for s in stale}))
            log.info("deploy: re-signed %d desired states close to expiry", len(stale))
        return len(stale)

    def upgrade_stored(self) -> int:
        """Re-sign, as schema 2, every stored desired state signed by a hub of schema 1 (one model, or none):
        agents of this release refuse the old documents. Runs once when the hub starts; returns how many."""
        old = [s for s in self.store.list_desired() if _body(s).get("schema_version") != 2]
        if old:
            with self._lock:
                self._send_all(self._sign({s.device_id: _single_model_slots(_body(s)) for s in old}))
            log.info("deploy: re-signed %d desired state(s) of schema 1 as schema 2", len(old))
        return len(old)


def _check_selector(selector: str) -> None:
    if not selector.strip():
        raise InvalidInput("a deployment needs a non-empty selector; to reach every device, select a label all carry")


def _check_sizes(plans: dict[str, list[DesiredModel]]) -> None:
    """Raise TooLarge when a device's signed state would exceed the agents' message limit (devices with the
    same slots are measured once)."""
    sizes: dict[tuple[str, ...], int] = {}
    for device_id, models in plans.items():
        key = tuple(m.model_dump_json() for m in models)
        size = sizes.get(key)
        if size is None:
            size = sizes[key] = desired_state_bytes(models)
        if not fits(size):
            raise TooLarge(too_large_message(size, f"the desired state of device {device_id}"))


def _body(s: Desired) -> dict[str, Any]:
    """The signed body of a stored desired state, as JSON (any schema)."""
    try:
        body = json.loads(s.envelope).get("body")
    except (ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}


def _slots_of(body: dict[str, Any]) -> list[DesiredModel]:
    """The model slots of a stored desired-state body."""
    try:
        return list(DesiredState.model_validate(body).models)
    except ValidationError:
        return _single_model_slots(body)


def _single_model_slots(body: dict[str, Any]) -> list[DesiredModel]:
    """The one slot a schema-1 body names (`model`, `runtime`, `shadow`, `rollout_id`), or none."""
    if not isinstance(body.get("model"), dict):
        return []
    try:
        slot = DesiredModel(
            model=body["model"], runtime=RuntimeOptions.model_validate(body.get("runtime") or {}),
            shadow=ShadowSpec.model_validate(body["shadow"]) if body.get("shadow") else None,
            rollout_id=body.get("rollout_id"),
        )  # fmt: skip
    except (ValidationError, TypeError) as e:
        log.warning("deploy: a stored desired state of schema 1 does not convert (%s); it gets no model", e)
        return []
    return [slot]

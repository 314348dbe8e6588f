"""Desired states: build, sign (Ed25519), record and publish them retained at QoS 1, one per device.

`Deployer.set_desired` is the primitive the rollout engine builds on; `deploy` targets a label selector.
Versions come from a per-device counter in the store, so they stay monotonic across hub restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.codec import encode
from fleet.messages import DesiredState, ModelRef, RuntimeOptions, ShadowSpec, SignedEnvelope
from fleet.signing import HubSigningKey
from fleet.topics import TopicKind, Topics, spec
from hub.capacity import check_runtime
from hub.devices import Devices
from hub.errors import InvalidInput, TooLarge
from hub.limits import desired_state_bytes, fits, too_large_message
from hub.registry import Registry
from hub.settings import DeviceSettings
from hub.store import Desired, Fence, Store

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes, int, bool], object]


@dataclass(frozen=True)
class DeployResult:
    """The devices a deployment targeted and the desired-state version each got."""

    model: str
    version: str
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
        """Set MODEL:VERSION as the desired state of every device matching `selector`."""
        if not selector.strip():
            raise InvalidInput(
                "a deployment needs a non-empty selector; to reach every device, select a label all carry"
            )
        ref = self.registry.model_ref(name, version)
        found = self.devices.find(selector)
        if not found:
            raise InvalidInput(f"selector {selector!r} matches no enrolled device", code="no_match")
        check_runtime(found, runtime)  # GPUs, MIG slices and pods each device advertises
        targets = [d.id for d in found]
        states = self.set_desired(targets, ref, runtime=runtime, rollout_id=rollout_id)
        self.store.add_event(
            time.time(), actor, "deploy", f"model/{name}:{version}",
            {"selector": selector, "devices": targets, "rollout_id": rollout_id},
        )  # fmt: skip
        return DeployResult(name, version, {s.device_id: s.version for s in states})

    def set_desired(
        self,
        device_ids: list[str],
        model: ModelRef | None,
        *,
        runtime: RuntimeOptions | None = None,
        shadow: ShadowSpec | None = None,
        rollout_id: str | None = None,
        fence: Fence | None = None,
    ) -> list[Desired]:
        """Sign, record and publish a desired state for each device (a fresh version each).

        Serialised: two concurrent calls for the same device publish in version order, so the retained
        message on the broker is always the newest recorded state. `fence`: the leader lease the caller acts
        under; LeaseLost, and nothing recorded or published, once it no longer holds.

        Raises:
            TooLarge: the signed state would exceed the agents' message limit (nothing is allocated or sent).
        """
        size = desired_state_bytes(model, runtime=runtime, shadow=shadow, rollout_id=rollout_id)
        if not fits(size):
            raise TooLarge(too_large_message(size, "the desired state"))
        with self._lock:
            versions = self.store.allocate_desired_versions(device_ids)
            now = time.time()
            states = []
            for device_id in device_ids:
                body = DesiredState(
                    device_id=device_id, version=versions[device_id], issued_at=now,
                    expires_at=now + self.settings.desired_ttl_s, model=model, runtime=runtime or RuntimeOptions(),
                    shadow=shadow, rollout_id=rollout_id,
                )  # fmt: skip
                states.append(self._record(body, self.key.sign(body)))
            self.store.put_desired(states, fence=fence)
            for s in states:
                self._send(s)
            return states

    @staticmethod
    def _record(body: DesiredState, env: SignedEnvelope) -> Desired:
        return Desired(
            device_id=body.device_id, version=body.version, model_name=body.model.name if body.model else None,
            model_version=body.model.version if body.model else None,
            sha256=body.model.blob.sha256 if body.model else None, envelope=encode(env).decode(),
            issued_at=body.issued_at, expires_at=body.expires_at, rollout_id=body.rollout_id,
        )  # fmt: skip

    def _send(self, state: Desired) -> None:
        """Publish the stored envelope as it is: it was encoded once, when it was signed."""
        payload = state.envelope.encode()
        self._publish(self.topics.desired(state.device_id), payload, self._spec.qos, self._spec.retained)

    def republish_all(self) -> int:
        """Publish every stored desired state again (after a (re)connect: the broker may have lost them)."""
        with self._lock:
            states = self.store.list_desired()
            for s in states:
                self._send(s)
            return len(states)

    def refresh_expiring(self, *, now: float | None = None) -> int:
        """Re-sign (as a new version, same content) every desired state past half of its validity."""
        now = time.time() if now is None else now
        stale = [s for s in self.store.list_desired() if now >= s.issued_at + (s.expires_at - s.issued_at) / 2]
        for s in stale:
            body = s.state()
            self.set_desired([s.device_id], body.model, runtime=body.runtime, shadow=body.shadow,
                             rollout_id=body.rollout_id)  # fmt: skip
        if stale:
            log.info("deploy: re-signed %d desired states close to expiry", len(stale))
        return len(stale)

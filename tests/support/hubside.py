"""A test-side stand-in for the hub on the wire: signs desired states, serves chunks, records what agents say.

It speaks exactly the protocol of `fleet` over a real broker: desired states signed with `fleet.signing`
and published retained (QoS 1); every want answered by publishing the wanted chunks on the blob's topic;
reported states, births, telemetry and wants recorded for assertions. Faults on demand: corrupt or drop a
chunk the next time it is served (`corrupt_once`, `drop_once`), never serve some chunks (`withhold`), or
stop answering wants (`serving = False`). The real hub replaces it in end-to-end tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.bundle import DeviceBundle
from fleet.chunks import encode_frame, read_chunk
from fleet.codec import decode, encode
from fleet.errors import MessageError
from fleet.messages import (
    BlobManifest,
    CommandAck,
    DesiredModel,
    DesiredState,
    DeviceStatus,
    ModelRef,
    ModelStatus,
    Phase,
    ReportedState,
    RuntimeOptions,
    ShadowSpec,
    SignedEnvelope,
    TelemetryWindow,
    Want,
    Wire,
)
from fleet.plan import plan_file
from fleet.signing import HubSigningKey
from fleet.topics import TopicKind, Topics

T = TypeVar("T")
W = TypeVar("W", bound=Wire)


class HubSide:
    """The hub's half of the protocol for tests.

    Args:
        host, port: the broker.
        prefix: topic prefix (use the `topic_prefix` fixture).
        key: the signing key (default: a fresh one); agents pin `key.public`.
        chunk_size: chunk size of the blobs it serves.
        persistent: keep a persistent session (messages sent while it reconnects are queued by the broker).
    """

    __test__ = False

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        *,
        key: HubSigningKey | None = None,
        chunk_size: int = 64 * 1024,
        persistent: bool = False,
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.topics = Topics(prefix)
        self.key = key or HubSigningKey.generate()
        self.chunk_size = chunk_size
        self.blobs: dict[str, tuple[Path, BlobManifest]] = {}
        self.reported: list[ReportedState] = []
        self.statuses: list[DeviceStatus] = []
        self.telemetry: list[TelemetryWindow] = []
        self.wants: list[Want] = []
        self.acks: list[CommandAck] = []
        self.served: list[tuple[str, int]] = []
        self.corrupt_once: set[int] = set()
        self.drop_once: set[int] = set()
        self.withhold: set[int] = set()
        self.serving = True
        self.bad_messages = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"hubside-{uuid.uuid4().hex[:10]}", clean_session=not persistent
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()
        if not self._connected.wait(10) or not self._subscribed.wait(10):
            raise TimeoutError("hub side did not connect and subscribe")

    # -- connection ----------------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        t = self.topics
        subs = [
            (t.subscription(kind), 1)
            for kind in (TopicKind.STATUS, TopicKind.REPORTED, TopicKind.TELEMETRY, TopicKind.WANT)
        ]
        subs.append((f"{self.prefix}/dev/+/cmd/ack", 1))
        self._subscribed.clear()
        client.subscribe(subs)
        self._connected.set()

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Wait until (re)connected and subscribed (after a broker restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.is_connected() and self._subscribed.is_set():
                return
            time.sleep(0.05)
        raise TimeoutError("hub side did not reconnect")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- receiving -----------------------------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except ValueError:
            self.bad_messages += 1
            return
        payload = bytes(msg.payload)  # paho types it bytes | bytearray
        if not payload:
            return
        try:
            if parsed.kind is TopicKind.WANT:
                self._serve(decode(payload, Want))
            elif parsed.kind is TopicKind.REPORTED:
                self._add(self.reported, decode(payload, ReportedState))
            elif parsed.kind is TopicKind.STATUS:
                self._add(self.statuses, decode(payload, DeviceStatus))
            elif parsed.kind is TopicKind.TELEMETRY:
                self._add(self.telemetry, decode(payload, TelemetryWindow))
            elif parsed.kind is TopicKind.CMD_ACK:
                self._add(self.acks, decode(payload, CommandAck))
        except MessageError:
            self.bad_messages += 1

    def _add(self, target: list[W], item: W) -> None:
        with self._lock:
            target.append(item)

    def _serve(self, want: Want) -> None:
        with self._lock:
            self.wants.append(want)
            entry = self.blobs.get(want.sha256)
            if entry is None or not self.serving:
                return
        path, manifest = entry
        with path.open("rb") as f:
            for index in want.indexes(manifest.count):
                data = bytearray(read_chunk(f, manifest, index))
                with self._lock:
                    if index in self.withhold:
                        continue
                    if index in self.drop_once:
                        self.drop_once.discard(index)
                        continue
                    if index in self.corrupt_once:
                        self.corrupt_once.discard(index)
                        data[len(data) // 2] ^= 0xFF
                    self.served.append((manifest.sha256, index))
                frame = encode_frame(manifest.sha256, index, manifest.count, bytes(data))
                self.client.publish(self.topics.chunk(manifest.sha256), frame, qos=1)

    def wait(self, predicate: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
        """Poll `predicate` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout}s; last reported: {self.last_reported()}")
            time.sleep(0.02)

    def last_reported(self) -> ReportedState | None:
        return self.reported[-1] if self.reported else None

    def wait_reported(
        self, predicate: Callable[[ReportedState], bool], timeout: float = 30.0, what: str = "report", since: int = 0
    ) -> ReportedState:
        """The first reported state from index `since` on (received so far or later) matching `predicate`."""
        return self.wait(lambda: next((r for r in self.reported[since:] if predicate(r)), None), timeout, what)

    def wait_active(
        self, version: str, timeout: float = 30.0, since: int = 0, *, model: str | None = None
    ) -> ReportedState:
        """Wait until an agent reports `version` of `model` (default: its only model) active and settled (in a
        report from index `since` on)."""

        def settled(r: ReportedState) -> bool:
            m = r.model(model) if model is not None else one(r)
            return m is not None and m.phase == "active" and m.active is not None and m.active.version == version

        return self.wait_reported(settled, timeout, f"active {model or ''} {version}", since)

    # -- sending -------------------------------------------------------------------------------------------
    def add_blob(self, path: Path) -> BlobManifest:
        """Make a file available for download; returns its manifest."""
        manifest = plan_file(path, self.chunk_size)
        with self._lock:
            self.blobs[manifest.sha256] = (path, manifest)
        return manifest

    def model_ref(self, path: Path, descriptor: Any) -> ModelRef:
        """A ModelRef for an .onnx file and its models.ModelDescriptor (the blob becomes downloadable)."""
        manifest = self.add_blob(path)
        return ModelRef(
            name=descriptor.name,
            version=descriptor.version,
            task=descriptor.task.value,
            blob=manifest,
            descriptor=descriptor.to_json(),
        )

    def desired(
        self,
        device_id: str,
        version: int,
        model: ModelRef | None,
        *,
        expires_in: float = 3600.0,
        runtime: RuntimeOptions | None = None,
        shadow: ShadowSpec | None = None,
        others: list[DesiredModel] | None = None,
    ) -> DesiredState:
        """A desired state naming `model` (None: no model) with `runtime` and `shadow`, then `others`."""
        now = time.time()
        slots = [] if model is None else [DesiredModel(model=model, runtime=runtime or RuntimeOptions(), shadow=shadow)]
        return DesiredState(
            device_id=device_id,
            version=version,
            issued_at=now,
            expires_at=max(0.0, now + expires_in),
            models=[*slots, *(others or [])],
        )

    def sign(self, state: DesiredState) -> SignedEnvelope:
        return self.key.sign(state)

    def publish_desired(self, device_id: str, what: DesiredState | SignedEnvelope | bytes) -> None:
        """Publish retained on the device's desired topic (a DesiredState is signed first)."""
        if isinstance(what, DesiredState):
            what = self.sign(what)
        payload = what if isinstance(what, bytes) else encode(what)
        self.client.publish(self.topics.desired(device_id), payload, qos=1, retain=True).wait_for_publish(10)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def bundle(self, device_id: str, broker_url: str, **extra: Any) -> DeviceBundle:
        """A bootstrap bundle for `device_id` pinning this hub's key."""
        return DeviceBundle(
            device_id=device_id,
            broker_url=broker_url,
            mqtt_username=device_id,
            mqtt_password="unused-by-the-test-broker",
            topic_prefix=self.prefix,
            hub_public_key=self.key.public.to_text(),
            **extra,
        )


def one(r: ReportedState) -> ModelStatus:
    """The status of a device's only model (an idle, empty status when it knows none): single-model tests."""
    if len(r.models) > 1:
        raise AssertionError(f"the device reports {len(r.models)} models; name one: {[m.name for m in r.models]}")
    return r.models[0] if r.models else ModelStatus(name="none", phase=Phase.IDLE)

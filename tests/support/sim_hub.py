"""A minimal hub for simulator tests and the scale benchmark: signs desired states, serves wanted chunks.

It does what the protocol asks of a hub and nothing more: desired states signed with fleet.signing and
published retained, wants gathered for `batch_s` and each wanted chunk published once on the blob topic
(broker fan-out), reported and status messages collected per device. Not the product hub.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.chunks import chunk_of, encode_frame
from fleet.codec import decode, encode
from fleet.messages import (
    BlobManifest,
    Command,
    CommandName,
    DesiredModel,
    DesiredState,
    DeviceStatus,
    ModelRef,
    ReportedState,
    Want,
)
from fleet.plan import plan_bytes
from fleet.signing import HubSigningKey
from fleet.topics import TopicKind, Topics


@dataclass
class _Blob:
    manifest: BlobManifest
    data: bytes
    sent_at: dict[int, float] = field(default_factory=dict)


class MiniHub:
    """Test-side hub over one paho client (threaded loop)."""

    def __init__(
        self, host: str, port: int, prefix: str, *, batch_s: float = 0.1, resend_s: float = 1.0, serve: bool = True
    ) -> None:
        self.topics = Topics(prefix)
        self.key = HubSigningKey.generate()
        self.batch_s = batch_s
        self.resend_s = resend_s
        self.blobs: dict[str, _Blob] = {}
        self.reported: dict[str, ReportedState] = {}
        self.status: dict[str, DeviceStatus] = {}
        self.acks: list[bytes] = []
        self.wants = 0
        self.chunks_sent = 0
        self.telemetry: list[tuple[float, bytes]] = []
        self._versions: dict[str, int] = {}
        self._cmd_versions: dict[str, int] = {}
        self._pending: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.on_reported: Callable[[ReportedState], None] | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"minihub-{uuid.uuid4().hex[:8]}")
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not connected.wait(10):
            raise TimeoutError("mini hub did not connect")
        subs = [TopicKind.REPORTED, TopicKind.STATUS, TopicKind.CMD_ACK, TopicKind.TELEMETRY]
        if serve:
            subs.append(TopicKind.WANT)
        for kind in subs:
            self.client.subscribe(self.topics.subscription(kind), qos=1)
        self._worker = threading.Thread(target=self._serve, daemon=True)
        self._worker.start()

    @property
    def public_key(self) -> str:
        return self.key.public.to_text()

    # -- hub actions ----------------------------------------------------------------------------
    def add_blob(self, data: bytes, chunk_size: int = 256 * 1024) -> BlobManifest:
        manifest = plan_bytes(data, chunk_size)
        self.blobs[manifest.sha256] = _Blob(manifest, data)
        return manifest

    def desired(
        self,
        device_id: str,
        model: ModelRef | None,
        *,
        ttl_s: float = 3600,
        version: int | None = None,
        others: list[ModelRef] | None = None,
    ) -> DesiredState:
        """A desired state naming `model` (None: no model) and the `others`, each with default runtime options."""
        now = time.time()
        v = version if version is not None else self._versions.get(device_id, 0) + 1
        self._versions[device_id] = max(v, self._versions.get(device_id, 0))
        refs = ([model] if model is not None else []) + list(others or [])
        return DesiredState(
            device_id=device_id, version=v, issued_at=now, expires_at=now + ttl_s,
            models=[DesiredModel(model=r) for r in refs],
        )  # fmt: skip

    def publish_desired(self, state: DesiredState, *, key: HubSigningKey | None = None) -> None:
        envelope = (key or self.key).sign(state)
        self.client.publish(self.topics.desired(state.device_id), encode(envelope), qos=1, retain=True)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def command(self, device_id: str, name: CommandName, correlation_id: str) -> None:
        now = time.time()
        v = self._cmd_versions.get(device_id, 0) + 1
        self._cmd_versions[device_id] = v
        cmd = Command(device_id=device_id, version=v, issued_at=now, expires_at=now + 60,
                      correlation_id=correlation_id, name=name)  # fmt: skip
        self.client.publish(self.topics.cmd(device_id), encode(self.key.sign(cmd)), qos=1)

    def fan_out(self, sha256: str, topic: str | None = None) -> None:
        """Publish every chunk of a blob once (the raw fan-out baseline), waiting for the broker's acks."""
        blob = self.blobs[sha256]
        m = blob.manifest
        infos = []
        for i in range(m.count):
            frame = encode_frame(m.sha256, i, m.count, chunk_of(blob.data, m, i))
            infos.append(self.client.publish(topic or self.topics.chunk(sha256), frame, qos=1))
        for info in infos:
            info.wait_for_publish(60)

    def clear(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            for kind in (TopicKind.DESIRED, TopicKind.REPORTED, TopicKind.STATUS):
                self.client.publish(self.topics.build(kind, device_id=device_id), b"", qos=1, retain=True)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._worker.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    # -- incoming -------------------------------------------------------------------------------
    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)  # paho types it bytes | bytearray
        if not payload:
            return
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.kind is TopicKind.REPORTED:
                reported = decode(payload, ReportedState)
                with self._lock:
                    old = self.reported.get(reported.device_id)
                    if old is None or old.seq <= reported.seq:
                        self.reported[reported.device_id] = reported
                if self.on_reported is not None:
                    self.on_reported(reported)
            elif parsed.kind is TopicKind.STATUS:
                status = decode(payload, DeviceStatus)
                self.status[status.device_id] = status
            elif parsed.kind is TopicKind.CMD_ACK:
                self.acks.append(payload)
            elif parsed.kind is TopicKind.TELEMETRY:
                self.telemetry.append((time.time(), payload))
            elif parsed.kind is TopicKind.WANT:
                want = decode(payload, Want)
                blob = self.blobs.get(want.sha256)
                if blob is None:
                    return
                with self._lock:
                    self.wants += 1
                    self._pending.setdefault(want.sha256, set()).update(want.indexes(blob.manifest.count))
                self._wake.set()
        except Exception:  # a test hub must not die on what the simulator sends
            return

    def _serve(self) -> None:
        while not self._stop:
            self._wake.wait(1.0)
            if self._stop:
                return
            time.sleep(self.batch_s)  # gather the wants of agents that start together
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, {}
            now = time.time()
            for sha, indexes in pending.items():
                blob = self.blobs[sha]
                m = blob.manifest
                for i in sorted(indexes):
                    if now - blob.sent_at.get(i, 0.0) < self.resend_s:
                        continue
                    blob.sent_at[i] = now
                    data = chunk_of(blob.data, m, i)
                    self.client.publish(self.topics.chunk(sha), encode_frame(sha, i, m.count, data), qos=1)
                    self.chunks_sent += 1

    # -- views ----------------------------------------------------------------------------------
    def phases(self) -> dict[str, str]:
        with self._lock:
            return {d: r.phase.value for d, r in self.reported.items()}

    def online(self) -> int:
        return sum(1 for s in self.status.values() if s.state == "online")

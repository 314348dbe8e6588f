"""A paho client that records what the broker answers: CONNACK, SUBACK and PUBACK reason codes, messages."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

T = TypeVar("T")

NOT_AUTHORIZED = 135  # MQTT 5 reason code (PUBACK, CONNACK, SUBACK)


class Probe:
    """One MQTT connection (3.1.1 or 5) that keeps every answer of the broker for assertions."""

    __test__ = False

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        *,
        v5: bool = False,
        ca_pem: str | None = None,
        wait: bool = True,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.suback: dict[int, list[int]] = {}
        self.puback: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.disconnected = threading.Event()
        self._answered = threading.Event()
        self._lock = threading.Lock()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:10]}",
                                  protocol=protocol)  # fmt: skip
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_pem is not None:
            self.client.tls_set_context(ssl.create_default_context(cadata=ca_pem))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.reconnect_delay_set(30, 60)  # a refused probe must stay refused, not retry
        self.client.connect(host, port)
        self.client.loop_start()
        if wait and not self._answered.wait(10):
            raise TimeoutError("no CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None) -> None:
        self.connack = reason
        self._answered.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any = None) -> None:
        with self._lock:
            self.suback[mid] = [c.value for c in codes]

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any = None) -> None:
        with self._lock:
            self.puback[mid] = reason.value

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK's codes."""
        rc, mid = self.client.subscribe(topic, 1)
        assert mid is not None, f"SUBSCRIBE to {topic} not sent: {rc}"
        return self._wait(lambda: self.suback.get(mid), f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (always 0 under MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(lambda: self.puback.get(info.mid), f"PUBACK on {topic}")

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _p in self.messages]

    def _wait(self, fn: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                value = fn()
            if value is not None:
                return value
            time.sleep(0.01)
        raise TimeoutError(f"no {what}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # a refused connection leaves paho's sockets (and its wake-up pair) open

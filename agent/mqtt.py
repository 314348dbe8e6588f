"""The agent's MQTT link: the only agent module that imports paho.

A persistent session (clean_session False, a client id derived from the device id and topic prefix), a
retained last will, reconnection with jittered exponential backoff, and every subscription renewed on each
connect. The network loop runs in one thread of its own; `publish` may be called from any thread.
Message handlers run on the network thread and must return quickly (the agent queues work elsewhere).
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.settings import LinkSettings
from infra.errors import SettingsError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
ConnectHandler = Callable[[], None]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens and whether to use TLS."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse `mqtt://host:port` or `mqtts://host:port` (default ports 1883 and 8883).

        Raises:
            SettingsError: the URL has another scheme or no host.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise SettingsError(f"broker URL {url[:200]!r} must look like mqtt://host:port or mqtts://host:port")
        tls = scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise SettingsError(f"broker URL {url[:200]!r} has a bad port: {e}") from e
        return cls(parts.hostname, port, tls)


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before reconnect attempt `attempt` (0-based): exponential, capped, with +-50 % jitter."""
    base = min(maximum, initial * (2 ** min(attempt, 30)))
    return float(base * (rng or random).uniform(0.5, 1.5))


class MqttLink:
    """A resilient MQTT client for one device.

    Args:
        address: the broker.
        client_id: stable per device (a persistent session is keyed by it).
        username, password: the device's broker account.
        will: (topic, payload) published retained by the broker if the link dies uncleanly.
        settings: keepalive, backoff and timeouts.
        on_message: called with (topic, payload) for every message received.
        on_connect: called after each successful connect, once subscriptions were renewed.
        ca_pem: CA certificate text for TLS (None: the system trust store).
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        username: str | None,
        password: str | None,
        will: tuple[str, bytes],
        settings: LinkSettings,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        ca_pem: str | None = None,
    ) -> None:
        self.address = address
        self.settings = settings
        self._on_message = on_message
        self._on_connect = on_connect
        self._subs: dict[str, int] = {}
        self._subs_lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username is not None:
            c.username_pw_set(username, password)
        c.will_set(will[0], will[1], qos=1, retain=True)
        if address.tls:
            c.tls_set_context(ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context())
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.max_queued_messages_set(1000)
        c.connect_timeout = settings.connect_timeout_s
        self._client = c

    @staticmethod
    def client_id_for(device_id: str, prefix: str) -> str:
        """A stable client id per device and topic prefix (MQTT 3.1.1 allows 23 bytes; brokers allow more)."""
        return f"ef-agent-{device_id}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the network thread; it connects and keeps reconnecting until `stop`."""
        self._thread = threading.Thread(target=self._run, name="agent-mqtt", daemon=True)
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Publish `final` (retained, e.g. an offline status) if connected, disconnect cleanly, join."""
        if final is not None and self.connected:
            self.publish(final[0], final[1], retain=True, wait=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or `timeout` seconds passed; returns whether connected."""
        return self._connected.wait(timeout)

    def _run(self) -> None:
        attempt = 0
        c = self._client
        while not self._stop.is_set():
            try:
                c.connect(self.address.host, self.address.port, keepalive=self.settings.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as e:
                delay = backoff_delay(attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s)
                log.info(
                    "broker %s:%s unreachable (%s); retry in %.2fs", self.address.host, self.address.port, e, delay
                )
                attempt += 1
                self._stop.wait(delay)
                continue
            started = time.monotonic()
            rc = paho.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == paho.MQTT_ERR_SUCCESS:
                rc = c.loop(timeout=0.1)
            self._connected.clear()
            if self._stop.is_set():
                break
            if time.monotonic() - started > self.settings.backoff_max_s:
                attempt = 0  # a long healthy session: start the backoff over
            delay = backoff_delay(attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s)
            log.info("link to broker lost (rc %s); reconnect in %.2fs", rc, delay)
            attempt += 1
            self._stop.wait(delay)
        self._close_socket()

    def _close_socket(self) -> None:
        """Send DISCONNECT if a session is open, then make sure the socket is closed (stop may come mid-connect)."""
        c = self._client
        if c.socket() is not None:
            c.disconnect()
            c.loop(timeout=0.1)  # flush the DISCONNECT
        sock = c.socket()
        if sock is not None:
            sock.close()
        # paho's wake-up socket pair (loopback TCP) is only closed in Client.__del__; when the client is
        # collected as part of a cycle the sockets go first and warn. Close them now (private but stable).
        reset = getattr(c, "_reset_sockets", None)
        if callable(reset):
            reset()

    # -- paho callbacks (network thread) --------------------------------------------------------------
    def _handle_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the connection: %s", reason)
            client.disconnect()
            return
        with self._subs_lock:
            subs = list(self._subs.items())
        for topic, qos in subs:
            client.subscribe(topic, qos)
        self.connects += 1
        self._connected.set()
        try:
            self._on_connect()
        except Exception:  # a handler bug must not kill the network thread
            log.exception("on_connect handler failed")

    def _handle_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._connected.clear()

    def _handle_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, bytes(msg.payload))
        except Exception:  # never let one message take the link down
            log.exception("message handler failed on %s", msg.topic[:200])

    # -- API --------------------------------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        with self._subs_lock:
            self._subs[topic] = qos
        if self.connected:
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str, *, force: bool = False) -> None:
        """Stop receiving `topic`; `force` also unsubscribes a topic this run never subscribed (a left-over
        of an earlier run's persistent session)."""
        with self._subs_lock:
            known = self._subs.pop(topic, None)
        if (known is not None or force) and self.connected:
            self._client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, wait: bool = False) -> bool:
        """Publish; with `wait`, block until the broker acknowledged (QoS 1) or the publish timeout passed.

        Returns False when not connected (nothing is queued) or, with `wait`, when no acknowledgement came.
        """
        if not self.connected:
            return False
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as e:
            log.warning("publish on %s refused: %s", topic[:200], e)
            return False
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        if not wait:
            return True
        try:
            info.wait_for_publish(self.settings.publish_timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

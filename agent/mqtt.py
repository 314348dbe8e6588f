"""The agent's MQTT link: the only agent module that imports paho.

A persistent session (clean_session False, a client id derived from the device id and topic prefix), a
retained last will, reconnection with jittered exponential backoff (`fleet.backoff.Backoff`), and every
subscription renewed on each connect. The link never runs a paho loop of its own: its socket is served by
an `agent.netloop.LinkLoop` (paho's external-loop API: `loop_read`, `loop_write`, `loop_misc`). An agent's
link starts a loop of its own; the simulator passes one loop to thousands of links (`loop=`), so simulated
devices run this very code. `publish` may be called from any thread; message handlers run on the loop's
thread and must return quickly (the agent queues work elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.netloop import LinkLoop
from agent.settings import LinkSettings
from fleet.address import BrokerAddress
from fleet.backoff import Backoff
from infra.sockets import bound_unacked_bytes

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
ConnectHandler = Callable[[], None]
Will = tuple[str, bytes]


class MqttLink:
    """A resilient MQTT client for one device.

    Args:
        address: the broker.
        client_id: stable per device (a persistent session is keyed by it).
        username, password: the device's broker account.
        will: (topic, payload) published retained by the broker if the link dies uncleanly, or a function
            giving it, asked before each connect (a will that carries the time of the connect).
        settings: keepalive, backoff and timeouts.
        on_message: called with (topic, payload) for every message received.
        on_connect: called after each successful connect, once subscriptions were renewed.
        ca_pem: CA certificate text for TLS (None: the system trust store).
        loop: the event loop serving this link; None: a loop (and thread) of its own, started by `start`.
        clean_session: False (the agent): the broker keeps the session and queued QoS 1 messages while the
            device is away.
        on_disconnect: called when an established connection is gone (the link reconnects by itself).
        rng: the source of the backoff jitter (seed it for reproducible runs).
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        username: str | None,
        password: str | None,
        will: Will | Callable[[], Will | None] | None,
        settings: LinkSettings,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        ca_pem: str | None = None,
        loop: LinkLoop | None = None,
        clean_session: bool = False,
        on_disconnect: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self.settings = settings
        self.backoff = Backoff(settings.backoff_initial_s, max(settings.backoff_initial_s, settings.backoff_max_s))
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._will = will
        self._rng = rng
        self._subs: dict[str, int] = {}
        self._subs_lock = threading.Lock()
        self._connected = threading.Event()
        self._own_loop = loop is None
        self._loop = loop or LinkLoop(f"agent-mqtt-{client_id}"[:60])
        self._stopped = False
        self._started = False
        self._attempt = 0
        self._session_started = 0.0
        self._offline_until = 0.0
        self._reading = True
        self._writing = False
        self._sock: socket.socket | None = None
        self.connects = 0
        self.connect_failures = 0
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if username is not None:
            c.username_pw_set(username, password)
        if address.tls:
            c.tls_set_context(ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context())
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        c.max_queued_messages_set(1000)
        c.connect_timeout = settings.connect_timeout_s
        c.connect_async(address.host, address.port, keepalive=settings.keepalive_s)
        self._client = c

    @staticmethod
    def client_id_for(device_id: str, prefix: str) -> str:
        """A stable client id per device and topic prefix (MQTT 3.1.1 allows 23 bytes; brokers allow more)."""
        return f"ef-agent-{device_id}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"

    # -- lifecycle (any thread) ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect (when the loop's connect queue reaches this link) and keep reconnecting until `stop`."""
        if self._started:
            return
        self._started = True
        self._loop.call_soon(lambda: self._loop.add(self))
        if self._own_loop:
            self._loop.start()

    def stop(self, final: Will | None = None) -> None:
        """Publish `final` (retained, e.g. an offline status) if connected, disconnect cleanly.

        From another thread with a loop of its own, this waits for the acknowledgement of `final` and for the
        loop to end; on a shared loop (the simulator), `final` goes out at QoS 0 and the caller stops the loop.
        """
        if self._own_loop and not self._loop.in_loop:
            if final is not None and self.connected:
                self.publish(final[0], final[1], retain=True, wait=True)
            self._loop.stop(before=self._disconnect)
            self.close()
            return
        if final is not None and self.connected:
            self.publish(final[0], final[1], qos=0, retain=True)
        if self._loop.in_loop:
            self._disconnect()
        else:
            self._loop.call_soon(self._disconnect)

    def close(self) -> None:
        """Release the socket once the loop no longer serves this link (after `stop`)."""
        # paho closes its sockets only in Client.__del__; when the client is collected as part of a cycle the
        # sockets go first and warn (ResourceWarning). Close them now (private but stable).
        self._client._reset_sockets()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or `timeout` seconds passed; returns whether connected."""
        return self._connected.wait(timeout)

    # -- the loop's side -----------------------------------------------------------------------------
    def begin_connect(self) -> None:
        """Start a connection attempt now (the loop calls this; so does the backoff timer)."""
        if self._stopped or self._loop.stopping:
            return
        wait = self._offline_until - time.monotonic()
        if wait > 0:
            self._loop.call_later(wait, self.begin_connect)
            return
        will = self._will() if callable(self._will) else self._will
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._reading = True
        try:
            self._client.reconnect()
        except (OSError, ssl.SSLError, ValueError) as e:
            self.connect_failures += 1
            delay = self._next_delay()
            log.info("broker %s:%s unreachable (%s); retry in %.2fs", self.address.host, self.address.port, e, delay)
            self._loop.call_later(delay, self.begin_connect)

    def on_readable(self) -> None:
        if self._reading:
            self._client.loop_read()

    def on_writable(self) -> None:
        self._client.loop_write()

    def on_misc(self) -> None:
        self._client.loop_misc()

    def _next_delay(self) -> float:
        delay = self.backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        return delay

    def _disconnect(self) -> None:
        self._stopped = True
        if self._sock is not None:
            self._client.disconnect()  # DISCONNECT is flushed by the loop, then the broker closes
        self._loop.remove(self)

    def _watch(self) -> None:
        self._loop.watch(self, self._sock, read=self._reading, write=self._writing)

    def _socket_open(self, _c: paho.Client, _u: object, sock: object) -> None:
        self._sock = sock  # type: ignore[assignment]
        bound_unacked_bytes(self._sock, self.settings.tcp_user_timeout_s)
        self._writing = False
        self._watch()

    def _socket_close(self, _c: paho.Client, _u: object, _sock: object) -> None:
        self._sock = None
        self._writing = False
        if self._loop.in_loop:
            self._watch()
        else:
            self._loop.call_soon(self._watch)

    def _register_write(self, _c: paho.Client, _u: object, _sock: object) -> None:
        self._writing = True
        if self._loop.in_loop:
            self._watch()
        else:  # a publish from another thread: the selector belongs to the loop's thread
            self._loop.call_soon(self._watch)

    def _unregister_write(self, _c: paho.Client, _u: object, _sock: object) -> None:
        self._writing = False
        if self._loop.in_loop:
            self._watch()
        else:
            self._loop.call_soon(self._watch)

    # -- faults the simulator injects (also usable by anyone who needs them) ---------------------------
    def drop(self, offline_s: float) -> None:
        """Cut the connection abruptly (no DISCONNECT, so the broker publishes the will); stay away `offline_s`."""
        self._offline_until = time.monotonic() + offline_s
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pause_reading(self, seconds: float) -> None:
        """Stop reading from the network for `seconds` (a slow link: the broker's queue for it backs up)."""
        self._reading = False
        self._watch()
        self._loop.call_later(seconds, self._resume_reading)

    def _resume_reading(self) -> None:
        self._reading = True
        self._watch()

    # -- paho callbacks (the loop's thread) ------------------------------------------------------------
    def _handle_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the connection: %s", reason)
            self.connect_failures += 1
            client.disconnect()
            return
        with self._subs_lock:
            subs = list(self._subs.items())
        for topic, qos in subs:
            client.subscribe(topic, qos)
        self.connects += 1
        self._session_started = time.monotonic()
        self._connected.set()
        try:
            self._on_connect()
        except Exception:  # a handler bug must not kill the loop
            log.exception("on_connect handler failed")

    def _handle_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and self._on_disconnect is not None:
            try:
                self._on_disconnect()
            except Exception:
                log.exception("on_disconnect handler failed")
        if self._stopped or self._loop.stopping:
            return
        if was_connected and time.monotonic() - self._session_started > self.backoff.max_s:
            self._attempt = 0  # a long healthy session: start the backoff over
        delay = self._next_delay()
        log.info("link to broker lost (%s); reconnect in %.2fs", reason, delay)
        self._loop.call_later(delay, self.begin_connect)

    def _handle_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, bytes(msg.payload))
        except Exception:  # never let one message take the link down
            log.exception("message handler failed on %s", msg.topic[:200])

    # -- API (any thread) -------------------------------------------------------------------------------
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
        `wait` is refused on the loop's own thread (the acknowledgement could never be read).
        """
        if wait and self._loop.in_loop:
            raise RuntimeError("publish(wait=True) on the link's own loop thread would never see the PUBACK")
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

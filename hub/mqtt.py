"""The hub's MQTT link: the only module that imports paho. Connects, re-subscribes, dispatches, publishes.

Speaks MQTT 3.1.1 or 5 to any broker (Mosquitto, EMQX, HiveMQ). The session is persistent (clean session
off, a stable client id), so QoS 1 messages sent while the hub restarts wait at the broker. paho
reconnects by itself; every (re)connect re-subscribes and calls `on_connect` so the hub can republish.

Over MQTT 5 a QoS 1 message is acknowledged once the hub is done with it, not on receipt: the handler returns
a ticket for a telemetry window it handed to the store's writer, and the window's PUBACK waits until
`release` reports that ticket committed. A hub process killed in between (SIGKILL, power loss) has
acknowledged nothing it had not stored, so the broker sends those messages again when the same session
reconnects (the store drops the copies it had stored after all). Acknowledgements go out in the order the
messages came, as MQTT asks. The CONNECT's Receive Maximum (the protocol's largest) lets the broker keep that
many unacknowledged messages in flight, so waiting for commits costs no throughput. MQTT 3.1.1 has no
Receive Maximum (Mosquitto would hold the hub to 20 in flight), so there the link acknowledges on receipt and
the telemetry writer journals each window to disk before the handler returns (`hub.store.journal`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.address import BrokerAddress
from fleet.backoff import Backoff
from fleet.errors import InvalidBrokerUrl
from hub.errors import BrokerError, InvalidInput
from infra.sockets import bound_unacked_bytes

log = logging.getLogger(__name__)
MessageHandler = Callable[[str, bytes], int | None]
"""Handles one message; returns a ticket to acknowledge it once `HubLink.release` reaches it, or None: now."""
SESSION_EXPIRY_S = 3600
RECEIVE_MAXIMUM = 65535
RECONNECT = Backoff(initial_s=1.0, max_s=5.0)
"""The hub's reconnect policy. paho's own loop applies it (doubling from 1 s to 5 s, without the jitter an
agent needs: a hub is one client, or a few replicas, so no herd to spread; a short cap brings it back fast)."""


TCP_USER_TIMEOUT_S = 15.0
"""Bytes the hub sent its broker that stay unacknowledged this long close the link, which then reconnects
(`infra.sockets.bound_unacked_bytes`; the agent's `link.tcp_user_timeout_s`, the store's `tcp_user_timeout`).
A loopback broker never gets near it; one across a network that drops packets would otherwise hold the hub's
publishes in a dead socket until TCP gave up or the keepalive noticed."""


class HubLink:
    """One paho client with a network thread, subscriptions that survive reconnects, bounded publishing."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        on_message: MessageHandler,
        subscriptions: list[tuple[str, int | None]],
        on_connect: Callable[[], None] | None = None,
        mqtt_version: str = "3.1.1",
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        ca_pem: str | None = None,
    ) -> None:
        self.url = url
        try:
            address = BrokerAddress.parse(url)
        except InvalidBrokerUrl as e:
            raise InvalidInput(str(e)) from e
        self.host, self.port, tls = address.host, address.port, address.tls
        self._v5 = mqtt_version == "5"
        self._handler = on_message
        # topic -> QoS to hold, or None to hold no subscription to it (unsubscribed at every connect: the broker
        # keeps a persistent session's subscriptions, so one dropped while offline would come back otherwise)
        self._subscriptions: dict[str, int | None] = dict(subscriptions)
        self._sub_lock = threading.Lock()
        self._on_connect_cb = on_connect
        self._keepalive = keepalive_s
        self._connected = threading.Event()
        self.connects = 0
        self.received = 0  # messages handed to on_message
        self.handler_errors = 0
        # QoS 1 messages received and not yet acknowledged (MQTT 5): (packet id, ticket), in arrival order
        self._unacked: deque[tuple[int, int]] = deque()
        self._ack_lock = threading.Lock()
        protocol = mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311
        kwargs: dict[str, object] = {"manual_ack": True} if self._v5 else {"clean_session": False}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)  # type: ignore[arg-type]
        if username:
            self._client.username_pw_set(username, password)
        if tls:
            self._client.tls_set_context(ssl.create_default_context(cadata=ca_pem or None))
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(round(RECONNECT.initial_s), round(RECONNECT.max_s))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = lambda _c, _u, sock: bound_unacked_bytes(sock, TCP_USER_TIMEOUT_S)  # type: ignore[arg-type]

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Connect and start the network thread; raises BrokerError if not connected within `timeout`."""
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            if self._v5:
                self._client.connect_async(self.host, self.port, self._keepalive, clean_start=False, properties=props)
            else:
                self._client.connect_async(self.host, self.port, self._keepalive)
        except (OSError, ValueError) as e:
            raise BrokerError(f"cannot connect to {self.url}: {e}") from e
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self._client.loop_stop()
            raise BrokerError(f"no MQTT connection to {self.url} within {timeout:g} s")

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly and stop the network thread. The broker keeps the session for the next connect
        (an hour over MQTT 5) unless `end_session` (MQTT 5; over 3.1.1 a persistent session stays)."""
        props = None
        if end_session and self._v5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()
        self._connected.clear()
        # paho closes its wake-up socket pair only in __del__; in cyclic garbage the sockets may be finalised
        # first and warn (ResourceWarning). Close them now, as __del__ would.
        self._client._reset_sockets()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def hold(self, topic: str, qos: int | None) -> None:
        """From now on (now if connected, and at every reconnect) hold a subscription to `topic` at `qos`, or with
        None none, including one the broker kept in this session."""
        with self._sub_lock:  # held while sending, so the broker gets the changes in the order they were made
            self._subscriptions[topic] = qos
            if self.connected:  # else the next connect sends it (paho refuses it while disconnected)
                self._send_subscription(topic, qos)

    def _send_subscription(self, topic: str, qos: int | None) -> None:
        if qos is None:
            self._client.unsubscribe(topic)
        else:
            self._client.subscribe(topic, qos)

    # -- callbacks (paho's network thread) -----------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt: connection to %s refused: %s", self.url, reason)
            return
        self.connects += 1
        with self._sub_lock:  # a change made meanwhile is either sent here or, once connected, by its caller
            for topic, qos in self._subscriptions.items():
                self._send_subscription(topic, qos)
            self._connected.set()
        log.info("mqtt: connected to %s (connect #%d)", self.url, self.connects)
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb()
            except Exception:
                log.exception("mqtt: on_connect callback failed")

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object = None) -> None:
        self._connected.clear()
        with self._ack_lock:  # the broker sends these again in the resumed session (packet ids are per connection)
            self._unacked.clear()
        log.info("mqtt: disconnected from %s: %s", self.url, reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        ticket = None
        try:
            ticket = self._handler(msg.topic, bytes(msg.payload))
        except Exception:
            self.handler_errors += 1
            log.exception("mqtt: handler failed on a message on %s", msg.topic[:200])
        if self._v5 and msg.qos == 1:
            with self._ack_lock:
                if ticket is None and not self._unacked:
                    self._client.ack(msg.mid, 1)
                else:
                    self._unacked.append((msg.mid, 0 if ticket is None else ticket))

    def release(self, ticket: int) -> None:
        """Acknowledge, in arrival order, the messages whose tickets are at most `ticket` (any thread)."""
        with self._ack_lock:
            while self._unacked and self._unacked[0][1] <= ticket:
                self._client.ack(self._unacked.popleft()[0], 1)

    @property
    def unacknowledged(self) -> int:
        """QoS 1 messages received and waiting for their tickets before they are acknowledged."""
        return len(self._unacked)

    # -- publishing ---------------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> mqtt.MQTTMessageInfo:
        """Queue a message for sending (non-blocking). paho keeps it until the broker acknowledges it. Over MQTT
        5 `expiry_s` has the broker drop it for any subscriber it has not reached by then (3.1.1: ignored)."""
        props = None
        if expiry_s is not None and self._v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = expiry_s
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)


class BoundedPublisher:
    """Publishes through a link keeping at most `max_inflight` messages unacknowledged (bounded memory)."""

    def __init__(
        self, link: HubLink, max_inflight: int, *, timeout_s: float = 30.0, expiry_s: int | None = None
    ) -> None:
        self.link = link
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.expiry_s = expiry_s
        self._inflight: deque[mqtt.MQTTMessageInfo] = deque()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish, first waiting while too many earlier messages are unacknowledged."""
        while self._inflight and _settled(self._inflight[0]):
            self._inflight.popleft()
        deadline = time.monotonic() + self.timeout_s
        while len(self._inflight) >= self.max_inflight:
            info = self._inflight[0]
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                self._inflight.popleft()  # not sent (connection lost): the agent wants the chunk again
                continue
            if info.is_published() or time.monotonic() >= deadline:
                self._inflight.popleft()
        self._inflight.append(self.link.publish(topic, payload, qos=qos, expiry_s=self.expiry_s))


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Acknowledged, or never queued (no connection: paho raises on `is_published` for those)."""
    return info.rc != mqtt.MQTT_ERR_SUCCESS or info.is_published()

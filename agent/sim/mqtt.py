"""The simulator's MQTT transport: thousands of paho clients multiplexed over a few selector threads.

paho's own loops cost a thread or a `select()` per client (and `select()` stops at 1024 descriptors), so
here every client runs on paho's external-loop API: its socket sits in an epoll selector of one shard
thread, which calls `loop_read`/`loop_write` when the socket is ready and `loop_misc` for keepalives.
Everything an endpoint does (callbacks, timers, publishes) happens on its shard's thread, so endpoints need
no locks. This is the only simulator module that imports paho.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.sim.actions import Action, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from agent.sim.config import AgentIdentity
from agent.sim.errors import TransportError

log = logging.getLogger(__name__)
_FDS_PER_CLIENT = 1
_RESERVED_FDS = 256


class Endpoint(Protocol):
    """What the transport drives: `SimAgent` implements it (so do the benchmark's raw receivers)."""

    device_id: str
    connected: bool

    def will(self, now: float) -> Publish | None: ...
    def on_connect(self, now: float) -> list[Action]: ...
    def on_disconnect(self) -> None: ...
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]: ...
    def tick(self, now: float) -> list[Action]: ...


def raise_fd_limit(clients: int) -> int:
    """Raise the soft descriptor limit to fit `clients` connections; return the new soft limit.

    Raises:
        TransportError: the hard limit is too low (the message says how many are needed).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = clients * _FDS_PER_CLIENT + _RESERVED_FDS
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise TransportError(f"{clients} agents need {need} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


@dataclass(eq=False)
class _Link:
    endpoint: Endpoint
    identity: AgentIdentity
    client: mqtt.Client
    sock: Any = None
    mask: int = 0
    reading: bool = True
    writing: bool = False
    offline_until: float = 0.0
    failures: int = 0
    errors: int = 0
    started: bool = False
    connected_at: float | None = None


@dataclass
class TransportStats:
    """Counters over every shard."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    callback_errors: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    first_connect: dict[str, float] = field(default_factory=dict)


class _Shard(threading.Thread):
    def __init__(self, index: int, transport: Transport) -> None:
        super().__init__(name=f"sim-mqtt-{index}", daemon=True)
        self.t = transport
        self.sel = selectors.DefaultSelector()
        self.links: list[_Link] = []
        self.pending: deque[_Link] = deque()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.counter = itertools.count()
        self.calls: deque[Callable[[], None]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)  # a full wake pipe must never block (thousands of adds before start)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.stopping = False
        self.done = threading.Event()

    # -- cross-thread -------------------------------------------------------------------------
    def call(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)
        with contextlib.suppress(OSError):
            self.wake_w.send(b"x")

    def later(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (when, next(self.counter), fn))

    # -- selector registration ----------------------------------------------------------------
    def update(self, link: _Link) -> None:
        sock = link.sock
        if sock is None:
            return
        mask = (selectors.EVENT_READ if link.reading else 0) | (selectors.EVENT_WRITE if link.writing else 0)
        if mask == link.mask:
            return
        if link.mask == 0:
            self.sel.register(sock, mask, link)
        elif mask == 0:
            self.sel.unregister(sock)
        else:
            self.sel.modify(sock, mask, link)
        link.mask = mask

    def _socket_closed(self, link: _Link, sock: Any) -> None:
        if link.mask:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)
        link.mask = 0
        link.sock = None
        link.writing = False

    # -- connecting ---------------------------------------------------------------------------
    def connect(self, link: _Link) -> None:
        now = time.time()
        if self.stopping or now < link.offline_until:
            return
        will = link.endpoint.will(now)
        if will is not None:
            link.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        link.reading = True
        try:
            link.client.reconnect()
        except (OSError, ssl.SSLError) as e:
            self.t.stats.connect_failures += 1
            link.failures += 1
            delay = min(30.0, 0.5 * 2 ** min(link.failures, 6)) * random.uniform(0.5, 1.0)
            log.debug("%s: connect failed (%s); retrying in %.1fs", link.endpoint.device_id, e, delay)
            self.later(now + delay, lambda: self.connect(link))

    def on_disconnect(self, link: _Link) -> None:
        self.t.stats.disconnects += 1
        link.endpoint.on_disconnect()
        link.connected_at = None
        if self.stopping:
            return
        link.failures += 1
        delay = min(10.0, 0.2 * 2 ** min(link.failures, 6)) * random.uniform(0.5, 1.0)
        when = max(time.time() + delay, link.offline_until)
        self.later(when, lambda: self.connect(link))

    # -- actions ------------------------------------------------------------------------------
    def run_actions(self, link: _Link, actions: list[Action]) -> None:
        client = link.client
        for action in actions:
            if isinstance(action, Publish):
                client.publish(action.topic, action.payload, qos=action.qos, retain=action.retain)
                self.t.stats.messages_out += 1
            elif isinstance(action, Subscribe):
                client.subscribe(action.topic, qos=1)
            elif isinstance(action, Unsubscribe):
                client.unsubscribe(action.topic)
            elif isinstance(action, GoOffline):
                link.offline_until = time.time() + action.seconds
                if link.sock is not None:
                    with contextlib.suppress(OSError):
                        link.sock.shutdown(socket.SHUT_RDWR)  # abrupt: no DISCONNECT, so the will fires
            elif isinstance(action, PauseReading):
                link.reading = False
                self.update(link)
                self.later(time.time() + action.seconds, lambda: self._resume(link))

    def _resume(self, link: _Link) -> None:
        link.reading = True
        self.update(link)

    def guarded(self, link: _Link, fn: Callable[[], list[Action]]) -> None:
        try:
            actions = fn()
        except Exception:
            link.errors += 1
            self.t.stats.callback_errors += 1
            log.exception("%s: simulator endpoint failed; the message is dropped", link.endpoint.device_id)
            return
        self.run_actions(link, actions)

    # -- loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.done.set()

    def _loop(self) -> None:
        next_tick = next_misc = time.time()
        budget = 0.0
        last = time.monotonic()
        while not (self.stopping and not self.sel.get_map().keys() - {self.wake_r.fileno()}):
            timeout = 0.05 if self.pending or self.calls else min(0.2, max(0.0, next_tick - time.time()))
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - time.time()))
            for key, mask in self.sel.select(timeout):
                link = key.data
                if link is None:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
                    continue
                if mask & selectors.EVENT_READ and link.sock is not None:
                    link.client.loop_read()
                if mask & selectors.EVENT_WRITE and link.sock is not None:
                    link.client.loop_write()
            while self.calls:
                self.calls.popleft()()
            mono = time.monotonic()
            budget = min(budget + (mono - last) * self.t.connect_rate, max(1.0, self.t.connect_rate / 10))
            last = mono
            while self.pending and budget >= 1 and not self.stopping:
                budget -= 1
                self.connect(self.pending.popleft())
            now = time.time()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            if now >= next_tick and not self.stopping:
                next_tick = now + self.t.tick_s
                for link in self.links:
                    self._tick(link, now)
            if now >= next_misc:
                next_misc = now + 1.0
                for link in self.links:
                    if link.sock is not None:
                        link.client.loop_misc()

    def _tick(self, link: _Link, now: float) -> None:
        self.guarded(link, lambda: link.endpoint.tick(now))

    def stop(self) -> None:
        self.stopping = True
        self.pending.clear()
        for link in self.links:
            if link.sock is not None and link.endpoint.connected:
                will = link.endpoint.will(time.time())
                if will is not None:  # a clean stop sends no will, so say `offline` ourselves
                    link.client.publish(will.topic, will.payload, qos=0, retain=will.retain)
                link.client.disconnect()
            elif link.sock is not None:
                link.client.disconnect()
        self.later(time.time() + 5.0, self._force_close)

    def _force_close(self) -> None:
        for link in self.links:
            if link.sock is not None:
                self._socket_closed(link, link.sock)


class Transport:
    """Runs endpoints over MQTT on `threads` selector threads.

    Args:
        threads: shard threads (the GIL makes more than a few useless; sha256 and socket I/O release it).
        tick_s: how often every endpoint's `tick` runs, s.
        connect_rate: new connections per second over all shards (spares the broker's accept backlog).
        keepalive_s: MQTT keepalive, s.
    """

    def __init__(
        self, *, threads: int = 2, tick_s: float = 0.25, connect_rate: float = 500.0, keepalive_s: int = 30
    ) -> None:
        if threads < 1:
            raise TransportError("the transport needs at least one thread")
        self.tick_s = tick_s
        self.connect_rate = connect_rate / threads
        self.keepalive_s = keepalive_s
        self.stats = TransportStats()
        self._shards = [_Shard(i, self) for i in range(threads)]
        self._count = 0
        self._started = False

    def add(self, endpoint: Endpoint, identity: AgentIdentity, *, client_id: str | None = None) -> None:
        """Add an endpoint; it connects as soon as the transport runs (at `connect_rate`)."""
        shard = self._shards[self._count % len(self._shards)]
        self._count += 1
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or identity.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if identity.username is not None:
            client.username_pw_set(identity.username, identity.password)
        if identity.broker.tls:
            client.tls_set_context(ssl.create_default_context(cadata=identity.ca_cert_pem))
        client.max_queued_messages_set(0)
        client.connect_async(identity.broker.host, identity.broker.port, keepalive=self.keepalive_s)
        link = _Link(endpoint, identity, client)
        self._wire(shard, link)

        def enlist() -> None:
            shard.links.append(link)
            shard.pending.append(link)

        shard.call(enlist)

    def _wire(self, shard: _Shard, link: _Link) -> None:
        client, stats = link.client, self.stats

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                log.warning("%s: broker refused the connection: %s", link.endpoint.device_id, reason)
                stats.connect_failures += 1
                return
            stats.connects += 1
            link.failures = 0
            now = time.time()
            link.connected_at = now
            stats.first_connect.setdefault(link.endpoint.device_id, now)
            shard.guarded(link, lambda: link.endpoint.on_connect(now))

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            stats.messages_in += 1
            stats.bytes_in += len(msg.payload)
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            shard.guarded(link, lambda: link.endpoint.on_message(msg.topic, payload, time.time()))

        def on_socket_open(_c: Any, _u: Any, sock: Any) -> None:
            link.sock = sock
            link.mask = 0
            shard.update(link)

        def on_socket_close(_c: Any, _u: Any, sock: Any) -> None:
            shard._socket_closed(link, sock)

        def on_register_write(_c: Any, _u: Any, _s: Any) -> None:
            link.writing = True
            shard.update(link)

        def on_unregister_write(_c: Any, _u: Any, _s: Any) -> None:
            link.writing = False
            shard.update(link)

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_disconnect = lambda *_a: shard.on_disconnect(link)
        client.on_socket_open = on_socket_open
        client.on_socket_close = on_socket_close
        client.on_socket_register_write = on_register_write
        client.on_socket_unregister_write = on_unregister_write

    def start(self) -> None:
        """Start the shard threads (raising the descriptor limit first)."""
        raise_fd_limit(self._count + 16)
        if not self._started:
            self._started = True
            for shard in self._shards:
                shard.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish `offline` for every connected endpoint, disconnect cleanly and stop the threads."""
        for shard in self._shards:
            shard.call(shard.stop)
        deadline = time.monotonic() + timeout
        for shard in self._shards:
            if shard.is_alive():
                shard.done.wait(max(0.1, deadline - time.monotonic()))
        for shard in self._shards:
            for link in shard.links:
                sock = link.client.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            shard.wake_r.close()
            shard.wake_w.close()
            shard.sel.close()

    def call_soon(self, endpoint_index: int, fn: Callable[[], None]) -> None:
        """Run `fn` on the thread that owns endpoint number `endpoint_index` (in order of `add`)."""
        self._shards[endpoint_index % len(self._shards)].call(fn)

    @property
    def connected(self) -> int:
        """Endpoints connected now."""
        return sum(1 for s in self._shards for link in s.links if link.connected_at is not None)

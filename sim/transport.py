"""The simulator's transport: thousands of endpoints on the agent's own MQTT link, served by a few loops.

Each endpoint (a `SimAgent`, or a benchmark's raw receiver) gets an `agent.mqtt.MqttLink`, the link the
product agent uses: same connect, will, subscription renewal and jittered reconnect backoff. The links run
in external-loop mode: `threads` `agent.netloop.LinkLoop`s each poll their share of the sockets with one
epoll selector, so no paho loop thread or `select()` per client exists. Everything an endpoint does
(callbacks, ticks, the actions it returns) happens on its loop's thread, so endpoints need no locks.
This module imports no paho.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.errors import AgentError
from agent.mqtt import MqttLink
from agent.netloop import LinkLoop, raise_fd_limit
from agent.settings import LinkSettings
from sim.actions import Action, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from sim.config import AgentIdentity
from sim.errors import TransportError

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """What the transport drives: `SimAgent` implements it (so do the benchmark's raw receivers)."""

    device_id: str
    connected: bool

    def will(self, now: float) -> Publish | None: ...
    def on_connect(self, now: float) -> list[Action]: ...
    def on_disconnect(self) -> None: ...
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]: ...
    def tick(self, now: float) -> list[Action]: ...


@dataclass
class TransportStats:
    """Counters over every loop."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    callback_errors: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    first_connect: dict[str, float] = field(default_factory=dict)


class _Slot:
    """One endpoint on its link: turns the link's callbacks into endpoint calls and runs the actions."""

    def __init__(self, endpoint: Endpoint, stats: TransportStats) -> None:
        self.endpoint = endpoint
        self.stats = stats
        self.link: MqttLink | None = None

    def will(self) -> tuple[str, bytes] | None:
        will = self.endpoint.will(time.time())
        return None if will is None else (will.topic, will.payload)

    def on_connect(self) -> None:
        now = time.time()
        self.stats.connects += 1
        self.stats.first_connect.setdefault(self.endpoint.device_id, now)
        self.guarded(lambda: self.endpoint.on_connect(now))

    def on_disconnect(self) -> None:
        self.stats.disconnects += 1
        self.endpoint.on_disconnect()

    def on_message(self, topic: str, payload: bytes) -> None:
        self.stats.messages_in += 1
        self.stats.bytes_in += len(payload)
        self.guarded(lambda: self.endpoint.on_message(topic, payload, time.time()))

    def tick(self, now: float) -> None:
        self.guarded(lambda: self.endpoint.tick(now))

    def guarded(self, fn: Callable[[], list[Action]]) -> None:
        try:
            actions = fn()
        except Exception:
            self.stats.callback_errors += 1
            log.exception("%s: simulator endpoint failed; the message is dropped", self.endpoint.device_id)
            return
        self.run(actions)

    def run(self, actions: list[Action]) -> None:
        link = self.link
        assert link is not None
        for action in actions:
            if isinstance(action, Publish):
                link.publish(action.topic, action.payload, qos=action.qos, retain=action.retain)
                self.stats.messages_out += 1
            elif isinstance(action, Subscribe):
                link.subscribe(action.topic, qos=1)
            elif isinstance(action, Unsubscribe):
                link.unsubscribe(action.topic)
            elif isinstance(action, GoOffline):
                link.drop(action.seconds)
            elif isinstance(action, PauseReading):
                link.pause_reading(action.seconds)


class Transport:
    """Runs endpoints over MQTT on `threads` link loops.

    Args:
        threads: loops, one thread each (the GIL makes more than a few useless; sha256 and socket I/O release it).
        tick_s: how often every endpoint's `tick` runs, s.
        connect_rate: new connections per second over all loops (spares the broker's accept backlog).
        keepalive_s: MQTT keepalive, s.
    """

    def __init__(
        self, *, threads: int = 2, tick_s: float = 0.25, connect_rate: float = 500.0, keepalive_s: int = 30
    ) -> None:
        if threads < 1:
            raise TransportError("the transport needs at least one thread")
        self.tick_s = tick_s
        self._stats = TransportStats()
        self.link_settings = LinkSettings(keepalive_s=keepalive_s)
        self._loops = [LinkLoop(f"sim-mqtt-{i}", connect_rate=connect_rate / threads) for i in range(threads)]
        self._slots: list[list[_Slot]] = [[] for _ in self._loops]
        self._count = 0
        self._started = False
        for loop, slots in zip(self._loops, self._slots, strict=True):
            loop.every(tick_s, functools.partial(self._tick, slots))

    def add(self, endpoint: Endpoint, identity: AgentIdentity, *, client_id: str | None = None) -> None:
        """Add an endpoint; it connects as soon as the transport runs (at `connect_rate`).

        Like the product agent it keeps a persistent session under the agent's client id (`client_id` overrides
        the id, for endpoints that are no agent).
        """
        index = self._count % len(self._loops)
        self._count += 1
        slot = _Slot(endpoint, self._stats)
        slot.link = MqttLink(
            identity.broker,
            client_id or MqttLink.client_id_for(identity.device_id, identity.topic_prefix),
            username=identity.username,
            password=identity.password,
            will=slot.will,
            settings=self.link_settings,
            on_message=slot.on_message,
            on_connect=slot.on_connect,
            ca_pem=identity.ca_cert_pem,
            loop=self._loops[index],
            on_disconnect=slot.on_disconnect,
        )
        self._slots[index].append(slot)
        slot.link.start()

    def start(self) -> None:
        """Start the loops (raising the descriptor limit first).

        Raises:
            TransportError: the descriptor limit cannot fit every endpoint.
        """
        try:
            raise_fd_limit(self._count + 16)
        except AgentError as e:
            raise TransportError(str(e)) from e
        if not self._started:
            self._started = True
            for loop in self._loops:
                loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish `offline` for every connected endpoint, disconnect cleanly and stop the loops."""
        for loop, slots in zip(self._loops, self._slots, strict=True):

            def disconnect_all(slots: list[_Slot] = slots) -> None:
                for slot in slots:
                    assert slot.link is not None
                    slot.link.stop(final=slot.will() if slot.endpoint.connected else None)

            loop.stop(timeout, before=disconnect_all)
        for slots in self._slots:
            for slot in slots:
                assert slot.link is not None
                slot.link.close()

    @property
    def stats(self) -> TransportStats:
        """Counters over every loop (read without locks: a few messages stale at most)."""
        self._stats.connect_failures = sum(s.link.connect_failures for ss in self._slots for s in ss if s.link)
        return self._stats

    def call_soon(self, endpoint_index: int, fn: Callable[[], None]) -> None:
        """Run `fn` on the thread that owns endpoint number `endpoint_index` (in order of `add`)."""
        self._loops[endpoint_index % len(self._loops)].call_soon(fn)

    @property
    def connected(self) -> int:
        """Endpoints connected now."""
        return sum(1 for slots in self._slots for s in slots if s.link is not None and s.link.connected)

    def _tick(self, slots: list[_Slot]) -> None:
        now = time.time()
        for slot in slots:
            slot.tick(now)

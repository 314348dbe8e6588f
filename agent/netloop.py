"""One selector thread serving many MQTT links: the event loop under `agent.mqtt.MqttLink`.

paho's own loops cost a thread or a `select()` per client (and `select()` stops at 1024 descriptors), so a
link never runs its own loop: its socket sits in the epoll selector of a `LinkLoop`, which calls the link
when the socket is readable or writable, runs its keep-alive housekeeping once a second, and runs timers
(reconnect backoff) and calls handed over from other threads. An agent's link gets a loop of its own; the
simulator serves thousands of links from a few loops. Everything a link's callbacks do happens on its loop's
thread. This module does no MQTT itself (paho stays in `agent.mqtt`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import resource
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from agent.errors import AgentError

log = logging.getLogger(__name__)
_RESERVED_FDS = 256
_MISC_INTERVAL_S = 1.0


class Watched(Protocol):
    """What a loop drives: a link whose socket it polls (implemented by `agent.mqtt.MqttLink`)."""

    def on_readable(self) -> None: ...
    def on_writable(self) -> None: ...
    def on_misc(self) -> None: ...
    def begin_connect(self) -> None: ...


class LinkLoop:
    """A selector, timers and a connect queue on one thread.

    Args:
        name: the thread's name.
        connect_rate: new connections started per second (spares the broker's accept backlog when thousands
            of links start at once; a single agent never notices it).
    """

    def __init__(self, name: str = "mqtt-loop", *, connect_rate: float = 500.0) -> None:
        self.name = name
        self.connect_rate = connect_rate
        self._sel = selectors.DefaultSelector()
        self._masks: dict[Watched, tuple[socket.socket, int]] = {}
        self._links: list[Watched] = []
        self._pending: deque[Watched] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full wake pipe must never block a caller
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._done = threading.Event()

    # -- any thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop's thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop's thread as soon as it wakes (callable from any thread)."""
        self._calls.append(fn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self, timeout: float = 10.0, *, before: Callable[[], None] | None = None) -> None:
        """Run `before` on the loop (links disconnect there), then end the thread once no socket is left
        (or after `timeout`) and release the selector."""

        def begin() -> None:
            if before is not None:
                before()
            self._stopping = True
            self._pending.clear()
            self.call_later(timeout / 2, self._forget_sockets)

        if self._thread is not None and self._thread.is_alive():
            self.call_soon(begin)
            self._done.wait(timeout)
        self.close()

    def close(self) -> None:
        """Release the selector and the wake-up sockets (after the thread ended)."""
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        self._closed = True
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    # -- the loop's thread --------------------------------------------------------------------------
    def add(self, link: Watched) -> None:
        """Serve `link`; it connects when the connect queue reaches it."""
        self._links.append(link)
        self._pending.append(link)

    def remove(self, link: Watched) -> None:
        """Stop serving `link` (its socket, if any, was already unwatched)."""
        with contextlib.suppress(ValueError):
            self._links.remove(link)
        with contextlib.suppress(ValueError):
            self._pending.remove(link)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop after `delay_s` seconds."""
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay_s), next(self._order), fn))

    def every(self, interval_s: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop every `interval_s` seconds until the loop stops."""

        def again() -> None:
            if not self._stopping:
                fn()
                self.call_later(interval_s, again)

        self.call_later(interval_s, again)

    def watch(self, link: Watched, sock: socket.socket | None, *, read: bool, write: bool) -> None:
        """Poll `sock` for `link` (read and/or write); None or neither: stop polling it."""
        old = self._masks.get(link)
        mask = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        if sock is None or mask == 0:
            if old is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(old[0])
                del self._masks[link]
            return
        if old is not None and old[0] is sock:
            if old[1] != mask:
                self._sel.modify(sock, mask, link)
                self._masks[link] = (sock, mask)
            return
        if old is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(old[0])
        self._sel.register(sock, mask, link)
        self._masks[link] = (sock, mask)

    @property
    def stopping(self) -> bool:
        """Whether the loop is shutting down (links must not reconnect)."""
        return self._stopping

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here would silently stop every link: say so loudly
            log.exception("%s: event loop failed", self.name)
            raise
        finally:
            self._done.set()

    def _loop(self) -> None:
        next_misc = time.monotonic()
        budget, last = 1.0, time.monotonic()
        while not (self._stopping and not self._masks):
            now = time.monotonic()
            timeout = 0.2
            if self._pending or self._calls:
                timeout = 0.0 if self._calls else 0.02
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - now))
            for key, mask in self._sel.select(timeout):
                link = key.data
                if link is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                if mask & selectors.EVENT_READ and link in self._masks:
                    self._guarded(link.on_readable, link)
                if mask & selectors.EVENT_WRITE and link in self._masks:
                    self._guarded(link.on_writable, link)
            while self._calls:
                self._guarded(self._calls.popleft(), None)
            now = time.monotonic()
            budget = min(budget + (now - last) * self.connect_rate, max(1.0, self.connect_rate / 10))
            last = now
            while self._pending and budget >= 1 and not self._stopping:
                budget -= 1
                link = self._pending.popleft()
                self._guarded(link.begin_connect, link)
            while self._timers and self._timers[0][0] <= now:
                self._guarded(heapq.heappop(self._timers)[2], None)
            if now >= next_misc:
                next_misc = now + _MISC_INTERVAL_S
                for link in self._links:
                    self._guarded(link.on_misc, link)  # keep-alive pings and timeouts (no connection: no work)

    def _guarded(self, fn: Callable[[], None], link: Watched | None) -> None:
        """Run `fn`; a failure costs at most its link's socket (it reconnects), never the loop and its other links."""
        try:
            fn()
        except Exception:
            log.exception("%s: a link's event handler failed", self.name)
            if link is not None:
                self.watch(link, None, read=False, write=False)

    def _forget_sockets(self) -> None:
        """Stop waiting for links whose broker never answered the DISCONNECT."""
        for link in list(self._masks):
            self.watch(link, None, read=False, write=False)


def raise_fd_limit(links: int) -> int:
    """Raise the soft descriptor limit to fit `links` connections (one socket each); return the new soft limit.

    Raises:
        AgentError: the hard limit is too low (the message says how many are needed).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = links + _RESERVED_FDS
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise AgentError(f"{links} MQTT links need {need} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need

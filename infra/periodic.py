"""A call repeated every few seconds on a thread of its own until stopped: the one shape of the hub's and the
agent's background loops (leadership, replicas' sessions, rollouts, a serving pod's follower).

    loop = Periodic("hub-rollouts", engine.tick, lambda: settings.tick_interval_s, log=log)
    loop.start()      # the first call comes one interval from now
    ...
    loop.stop()       # sets `stopping`, then waits for a call in progress (at most `join_s`)

A call that raises is logged (with its traceback, on the caller's logger) and the loop goes on: the next call
retries. The interval is read before each wait, so a changed setting applies from the next one. Long calls
look at `stopping` to give up early.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    """Calls `fn` every `interval_s()` seconds on a daemon thread named `name` until `stop()`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], object],
        interval_s: Callable[[], float],
        *,
        log: logging.Logger,
        join_s: float = 10.0,
    ) -> None:
        self.name = name
        self._fn = fn
        self._interval_s = interval_s
        self._log = log
        self._join_s = join_s
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start calling (again, after a `stop()`)."""
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop calling; returns once a call in progress ended, or after `join_s`."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._join_s)

    @property
    def running(self) -> bool:
        """Whether its thread is alive (False before `start()` and after `stop()`)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        while not self.stopping.wait(self._interval_s()):
            try:
                self._fn()
            except Exception:  # the loop never dies: the next call retries
                self._log.exception("%s: a periodic call failed; trying again at the next interval", self.name)

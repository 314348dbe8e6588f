"""Keeping the log short for an event that may recur without bound (garbage traffic, a disk that refuses every
write, a flood of refused messages): the one place both the hub and the agent take their rules from.

Two rules, for two kinds of caller:

- `LogGate`: at most one line per period, the next one saying how many were not logged. For an event with no
  counter of its own (a malformed HTTP request, a disk error per telemetry window or per reconnect).
- `log_sampled`: for a caller that already counts the event (a metric holds the exact total): log the first
  ten occurrences, then at powers of two.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

Logger = logging.Logger | logging.LoggerAdapter[Any]


class LogGate:
    """At most one log line per `every_s` for an event that may recur without bound (each is counted): the
    first of a period is logged, with how many of the period before were not. Thread-safe."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_at = 0.0  # monotonic time before which lines are counted, not logged
        self.suppressed = 0
        self._lock = threading.Lock()

    def log(self, logger: Logger, level: int, msg: str, *args: object) -> None:
        """Log `msg % args` at `level`, or count it if a line was logged less than `every_s` ago."""
        with self._lock:
            now = time.monotonic()
            if now < self.next_at:
                self.suppressed += 1
                return
            if self.suppressed:
                msg += " (%d more not logged in the %g s before)"
                args = (*args, self.suppressed, self.every_s)
            self.suppressed = 0
            self.next_at = now + self.every_s
        logger.log(level, msg, *args)

    def warning(self, logger: Logger, msg: str, *args: object) -> None:
        """`log` at WARNING."""
        self.log(logger, logging.WARNING, msg, *args)

    def error(self, logger: Logger, msg: str, *args: object) -> None:
        """`log` at ERROR."""
        self.log(logger, logging.ERROR, msg, *args)


def log_sampled(n: int) -> bool:
    """Whether the `n`-th occurrence (from 1) of a counted event is logged: the first ten, then at powers of two.

    A flood of bad messages leaves a few dozen log lines, not millions; the counters keep the exact totals.
    """
    return n <= 10 or n & (n - 1) == 0

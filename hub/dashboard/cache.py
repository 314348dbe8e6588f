"""A small time-to-live cache: many browsers (and the live refreshes of each) share one computation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class TtlCache:
    """Values by key, recomputed once `ttl` seconds have passed. Thread-safe; one computation per key at a time."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, ttl: float, compute: Callable[[], T]) -> T:
        """The cached value of `key`, or `compute()` stored for `ttl` seconds."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            now = time.monotonic()
            if hit is not None and hit[0] > now:
                value: T = hit[1]
                return value
            value = compute()
            with self._guard:
                if len(self._values) >= self.max_entries:
                    self._values.clear()
                self._values[key] = (time.monotonic() + ttl, value)
            return value

"""Token buckets keyed by who is sending (telemetry per device, failed API authentications per client);
the rule that keeps their refusal logs short is `infra.logthrottle.log_sampled`.

A bucket holds up to `burst` tokens and gains `rate_per_s` per second; each event takes one, and an event
finding the bucket empty is refused (and counted). Memory is bounded: beyond `max_keys` buckets, the
ones that are full again (idle senders) are forgotten first, then the oldest.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class KeyedLimiter:
    """One token bucket per key.

    Args:
        rate_per_s: tokens added per second (the sustained rate allowed).
        burst: bucket size (the burst allowed after a quiet spell); 0 disables the limiter.
        max_keys: most buckets kept.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self, rate_per_s: float, burst: int, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self.refused: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def _refill(self, b: _Bucket, now: float) -> None:
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take `cost` tokens from `key`'s bucket; False (and counted) when there are not enough."""
        if not self.enabled:
            return True
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    self._evict(now)
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                self._refill(b, now)
            if b.tokens >= cost:
                b.tokens -= cost
                return True
            self.refused[key] += 1
            return False

    def blocked(self, key: str) -> bool:
        """True when `key`'s bucket is empty now (without taking a token)."""
        if not self.enabled:
            return False
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                return False
            self._refill(b, now)
            return b.tokens < 1.0

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a token again (0 when it has one)."""
        with self._lock:
            b = self._buckets.get(key)
            if b is None or b.tokens >= 1.0 or self.rate <= 0:
                return 0.0
            return (1.0 - b.tokens) / self.rate

    def _evict(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            self._refill(b, now)
            if b.tokens >= self.burst:
                del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

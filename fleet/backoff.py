"""The reconnect policy: exponential backoff with jitter, as a pure value (no clock, no sleeping).

Thousands of devices that lost the same broker must not come back in the same second, so every delay is
spread by +-`jitter` of itself; a delay never exceeds `max_s` x (1 + `jitter`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt n (0-based): `initial_s` x 2^n, capped at `max_s`, then +-`jitter`."""

    initial_s: float
    max_s: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or not 0 <= self.jitter < 1:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s and 0 <= jitter < 1, not {self}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt` (0-based)."""
        base = min(self.max_s, self.initial_s * (2 ** min(max(attempt, 0), 30)))
        return float(base * (rng or random).uniform(1 - self.jitter, 1 + self.jitter))

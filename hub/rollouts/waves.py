"""Wave sizes and membership: deterministic, stable, canary first.

A wave list such as `1,10%,50%,100%` gives cumulative sizes: wave 0 (the canary) holds 1 device, waves 0-1
together hold 10 % of the targets (rounded up), and so on; the last size must be 100%. Devices are ranked
online first, then by `sha256(rollout_id + "/" + device_id)`, so membership depends only on the rollout id, the
device ids and which of them were online when the rollout started: the same for any order of the input,
different between rollouts (a canary is not always the same device), and unchanged for devices already placed
when others are added or removed. Ranking online devices first makes the early waves (the canary above all) of
devices that can take the update now; offline ones fill the last waves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WaveSize:
    """One cumulative wave size: `count` devices, or `percent` of the targets."""

    text: str
    count: int | None = None
    percent: float | None = None

    def cumulative(self, total: int) -> int:
        """How many of `total` targets the waves up to this one hold."""
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        # a tiny epsilon keeps 10% of 30 at 3 despite floating-point error
        return min(total, math.ceil(total * self.percent / 100 - 1e-9))


def parse_waves(items: Sequence[str]) -> list[WaveSize]:
    """Parse `["1", "10%", "50%", "100%"]` (also accepts one comma-separated string item).

    Raises:
        ValueError: naming the bad item: not a count or percentage, not increasing, or the last is not 100%.
    """
    texts = [t.strip() for item in items for t in item.split(",") if t.strip()]
    if not texts:
        raise ValueError("waves: give at least one size, e.g. 1,10%,50%,100%")
    if len(texts) > 32:
        raise ValueError("waves: at most 32 waves")
    out: list[WaveSize] = []
    last_pct = 0.0
    last_count = 0
    for t in texts:
        if t.endswith("%"):
            try:
                pct = float(t[:-1])
            except ValueError:
                raise ValueError(f"wave {t!r}: not a percentage") from None
            if not 0 < pct <= 100 or not math.isfinite(pct):
                raise ValueError(f"wave {t!r}: a percentage must be in (0, 100]")
            if pct <= last_pct:
                raise ValueError(f"wave {t!r}: percentages must increase")
            last_pct = pct
            out.append(WaveSize(t, percent=pct))
        else:
            if not t.isdigit() or len(t) > 9:
                raise ValueError(f"wave {t!r}: expected a device count (e.g. 1) or a percentage (e.g. 10%)")
            n = int(t)
            if n < 1:
                raise ValueError(f"wave {t!r}: a count must be at least 1")
            if n <= last_count or last_pct > 0:
                raise ValueError(f"wave {t!r}: counts must increase and come before percentages")
            last_count = n
            out.append(WaveSize(t, count=n))
    if out[-1].percent != 100:
        raise ValueError(f"waves: the last wave must be 100% (got {texts[-1]!r}) so that every target is reached")
    return out


def rank_key(rollout_id: str, device_id: str) -> str:
    """The hash that orders devices within a rollout."""
    return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).hexdigest()


def assign(
    rollout_id: str, device_ids: Iterable[str], sizes: Sequence[WaveSize], *, online: Collection[str] | None = None
) -> dict[str, int]:
    """Place each device in a wave: ranked, the first `cumulative(0)` in wave 0, and so on.

    Args:
        online: the devices that can take an update now; they rank before the others, and the hash orders
            devices among equals. None (or no device online, or all of them): by hash alone.

    Waves may come out empty when sizes round to the same count (3 devices, `1,10%`: 10 % is 1 device).
    """
    up = frozenset(online or ())
    ranked = sorted(set(device_ids), key=lambda d: (d not in up, rank_key(rollout_id, d)))
    total = len(ranked)
    out: dict[str, int] = {}
    start = 0
    for index, size in enumerate(sizes):
        end = max(start, size.cumulative(total))
        for d in ranked[start:end]:
            out[d] = index
        start = end
    return out

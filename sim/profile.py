"""Per-version serving profiles: the latency and error distributions simulated telemetry is drawn from.

A profile is written `VERSION:key=value,...`, for example `1.0.0:p50=5ms,p95=12ms,err=0.001,rps=20`.
`*` names the default for versions without their own profile. Latency is log-normal with the given median
and 95th percentile, so a candidate version with a slower p95 or a higher error rate trips a rollout gate
exactly like a real regression would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.histogram import Histogram, LatencyRecorder
from sim.errors import ProfileError

DEFAULT_VERSION = "*"
_Z95 = 1.6448536269514722  # standard normal 95th percentile
_MAX_SAMPLES = 2000  # observations drawn per window; larger windows are scaled from this many


class VersionProfile(BaseModel):
    """How one model version behaves on a simulated device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p50_ms: float = Field(default=5.0, gt=0, le=60_000, description="median inference latency, ms")
    p95_ms: float | None = Field(
        default=None, gt=0, le=600_000, description="95th percentile latency, ms (None: twice the median)"
    )
    error_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of requests that fail")
    rps: float = Field(default=5.0, ge=0, le=100_000, description="requests per second the device serves")

    @model_validator(mode="after")
    def _check(self) -> VersionProfile:
        if self.p95_ms is not None and self.p95_ms < self.p50_ms:
            raise ValueError(f"p95 {self.p95_ms} ms is below p50 {self.p50_ms} ms")
        return self

    @property
    def sigma(self) -> float:
        """Log-normal shape parameter that puts the 95th percentile at `p95_ms`."""
        p95 = self.p95_ms if self.p95_ms is not None else 2 * self.p50_ms
        return math.log(p95 / self.p50_ms) / _Z95


_KEYS = {"p50": "p50_ms", "p95": "p95_ms", "err": "error_rate", "rps": "rps"}


def _number(key: str, text: str) -> float:
    raw = text.strip().lower()
    if key in ("p50", "p95"):
        if raw.endswith("ms"):
            raw = raw[:-2]
        elif raw.endswith("s"):
            return _number(key, raw[:-1]) * 1000
    try:
        value = float(raw)
    except ValueError as e:
        raise ProfileError(f"{key}={text!r}: not a number") from e
    if not math.isfinite(value):
        raise ProfileError(f"{key}={text!r}: must be finite")
    return value


def parse_profile(text: str) -> tuple[str, VersionProfile]:
    """Parse `VERSION:p50=5ms,p95=12ms,err=0.001,rps=20` into (version, profile).

    Raises:
        ProfileError: naming the part that is wrong.
    """
    if len(text) > 512:
        raise ProfileError("profile text longer than 512 characters")
    version, sep, rest = text.partition(":")
    version = version.strip()
    if not sep or not version:
        raise ProfileError(f"profile {text!r}: expected VERSION:key=value,... (e.g. 1.0.0:p50=5ms,err=0.01)")
    fields: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in _KEYS:
            raise ProfileError(f"profile {text!r}: unknown setting {part!r} (use {', '.join(_KEYS)})")
        fields[_KEYS[key]] = _number(key, value)
    try:
        return version, VersionProfile.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        raise ProfileError(f"profile {text!r}: {first['loc'][0] if first['loc'] else ''} {first['msg']}") from e


@dataclass(frozen=True)
class Profiles:
    """Profiles by model version, with a default for the rest."""

    by_version: dict[str, VersionProfile]

    @classmethod
    def parse(cls, texts: list[str]) -> Profiles:
        """Build from `--profile` options (later ones win for the same version)."""
        return cls(dict(parse_profile(t) for t in texts))

    def for_version(self, version: str | None) -> VersionProfile:
        """The profile of `version` (the `*` default, else built-in defaults)."""
        if version is not None and version in self.by_version:
            return self.by_version[version]
        return self.by_version.get(DEFAULT_VERSION, VersionProfile())


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n == 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if n > 200:
        mean = n * p
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))
    return sum(1 for _ in range(n) if rng.random() < p)


@dataclass(frozen=True)
class WindowSample:
    """What a simulated device served in one telemetry window."""

    requests: int
    errors: int
    latency: Histogram


def sample_window(profile: VersionProfile, rng: random.Random, seconds: float) -> WindowSample:
    """Draw one window's request count, error count and latency histogram from `profile`."""
    requests = _poisson(rng, profile.rps * max(seconds, 0.0))
    errors = _binomial(rng, requests, profile.error_rate)
    recorder = LatencyRecorder()
    drawn = min(requests, _MAX_SAMPLES)
    mu, sigma = math.log(profile.p50_ms), profile.sigma
    for _ in range(drawn):
        recorder.observe(rng.lognormvariate(mu, sigma))
    hist = recorder.snapshot()
    if drawn < requests:
        scale = requests / drawn
        counts = [round(c * scale) for c in hist.counts]
        counts[counts.index(max(counts))] += requests - sum(counts)
        hist = Histogram(counts=tuple(counts), sum_ms=hist.sum_ms * scale)
    return WindowSample(requests, errors, hist)

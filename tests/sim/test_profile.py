"""Per-version profiles: parsing with clear errors, and windows drawn from the stated distribution."""

from __future__ import annotations

import random

import pytest

from fleet.histogram import merge_all
from sim.errors import ProfileError
from sim.profile import Profiles, VersionProfile, parse_profile, sample_window


def test_parse_units_and_defaults() -> None:
    version, p = parse_profile("1.0.0:p50=5ms,p95=0.02s,err=0.001,rps=20")
    assert version == "1.0.0" and p == VersionProfile(p50_ms=5, p95_ms=20, error_rate=0.001, rps=20)
    profiles = Profiles.parse(["*:p50=9", "2.0.0:err=0.5"])
    assert profiles.for_version("7.0.0").p50_ms == 9 and profiles.for_version("2.0.0").error_rate == 0.5
    assert Profiles.parse([]).for_version(None) == VersionProfile()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0.0", "VERSION:key"),
        (":p50=1", "VERSION:key"),
        ("1.0.0:speed=3", "unknown setting"),
        ("1.0.0:p50=abc", "not a number"),
        ("1.0.0:p50=nan", "finite"),
        ("1.0.0:err=2", "error_rate"),
        ("1.0.0:p50=10,p95=5", "below p50"),
        ("1.0.0:p50=-1", "p50_ms"),
        ("x" * 600, "longer than"),
    ],
)
def test_bad_profiles_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(text)


def test_windows_follow_the_profile() -> None:
    rng = random.Random(3)
    slow = VersionProfile(p50_ms=20, p95_ms=60, error_rate=0.1, rps=50)
    windows = [sample_window(slow, rng, 10) for _ in range(40)]
    hist = merge_all(w.latency for w in windows)
    requests = sum(w.requests for w in windows)
    assert hist.count == requests and 18_000 < requests < 22_000
    assert 15 < (hist.quantile(0.5) or 0) < 25 and 45 < (hist.quantile(0.95) or 0) < 80
    assert 0.08 < sum(w.errors for w in windows) / requests < 0.12
    busy = sample_window(VersionProfile(rps=10_000), rng, 10)  # more requests than samples drawn: scaled
    assert busy.latency.count == busy.requests
    assert sample_window(VersionProfile(rps=0), rng, 10).requests == 0

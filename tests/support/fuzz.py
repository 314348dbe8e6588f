"""Hypothesis and schemathesis profiles: the same cases on every `make test`, new ones under `make fuzz`.

`make test` loads the `deterministic` profile (tests/conftest.py): `derandomize=True` seeds every property
test from a hash of the test itself, and no example database carries cases from one run to the next, so a
fresh clone tests exactly what CI tests. `make fuzz` sets EDGEFLEET_FUZZ=1: the `fuzz` profile draws new
random cases on every run and multiplies each test's example count by `FUZZ_FACTOR`, for as long as the
Makefile's time bound allows.

Write example counts as `settings(max_examples=examples(60))` so they scale under `make fuzz` (a test
checks that none is a bare number). A case `make fuzz` finds becomes a fixed regression example in the
test that found it (`@example(...)` for hypothesis tests, an explicit case list for schemathesis ones).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ = os.environ.get("EDGEFLEET_FUZZ", "") == "1"
FUZZ_FACTOR = int(os.environ.get("EDGEFLEET_FUZZ_FACTOR", "20"))

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile(
    "fuzz", derandomize=False, database=None, print_blob=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


def load_profile() -> str:
    """Load the profile of this run (`fuzz` when EDGEFLEET_FUZZ=1, else `deterministic`); return its name."""
    name = "fuzz" if FUZZ else "deterministic"
    settings.load_profile(name)
    return name


def examples(n: int) -> int:
    """`n` examples under `make test`; `n * FUZZ_FACTOR` under `make fuzz`."""
    return n * FUZZ_FACTOR if FUZZ else n

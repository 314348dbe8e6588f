"""Rules that keep `make test` deterministic on a fresh clone (issue 18), checked over the test sources."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import settings

from tests.support.fuzz import FUZZ

TESTS = Path(__file__).resolve().parent


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(TESTS.rglob("*.py")) if p.name not in ("fuzz.py", "test_determinism.py")]


def test_make_test_runs_the_deterministic_hypothesis_profile() -> None:
    profile = settings.default
    assert profile is not None  # hypothesis always has a loaded profile (tests/conftest.py loads ours)
    if FUZZ:  # under `make fuzz` the random profile is the point
        assert not profile.derandomize
        return
    assert profile.derandomize and profile.database is None


def test_example_counts_scale_under_make_fuzz_and_no_test_pins_its_own_randomness() -> None:
    bare = re.compile(r"max_examples\s*=\s*\d")  # write examples(N): tests/support/fuzz.py
    pinned = re.compile(r"\bderandomize\s*=|settings\([^)]*\bdatabase\s*=")  # the profile decides, per run
    offenders = [
        f"{p.relative_to(TESTS)}:{n}: {line.strip()}"
        for p, text in _sources()
        for n, line in enumerate(text.splitlines(), 1)
        if bare.search(line) or pinned.search(line)
    ]
    assert not offenders, "use tests.support.fuzz.examples() and the profile:\n" + "\n".join(offenders)


def test_every_schemathesis_test_is_marked_fuzz() -> None:
    unmarked = [
        str(p.relative_to(TESTS))
        for p, text in _sources()
        if "schemathesis.openapi" in text and "pytest.mark.fuzz" not in text
    ]
    assert not unmarked, f"mark them @pytest.mark.fuzz so `make fuzz` runs them: {unmarked}"

"""benchmarks/footprint.py runs end to end (one repeat; no timing assertions)."""

from __future__ import annotations

import subprocess
import sys

from tests.agent.conftest import REPO


def test_footprint_benchmark_smoke(mosquitto_binary: str) -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "footprint.py"), "--repeat", "1"],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| headless | RSS after ready |" in res.stdout and "| with API | start -> ready" in res.stdout

"""benchmarks/scale.py runs end to end at a tiny size (no timing assertions: it prints ratios)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker import find_mosquitto

REPO = Path(__file__).resolve().parents[2]


def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    md = tmp_path / "scale.md"
    args = ["--agents", "5", "--hub", "stand-in", "--blob-mib", "1", "--steady-s", "1", "--telemetry-s", "0.5",
            "--threads", "1", "--broker-inflight", "8", "--md", str(md)]  # fmt: skip
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    row = json.loads(res.stdout.splitlines()[0])
    assert row["n"] == 5 and row["raw_s"] > 0 and row["rollout_s"] > 0 and row["windows"] > 0
    assert row["sim_gib_in"] > 0  # the simulator's own summary was read back
    assert "| 5 | stand-in |" in md.read_text()

"""The benchmark scripts run end to end (tiny sizes; no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.engine import available_providers

REPO = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_exits_cleanly_without_cuda() -> None:
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is present: the script would measure")
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "engine_gpu.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "CUDAExecutionProvider is not available" in res.stdout


def test_cpu_benchmark_smoke() -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "engine.py"),
            "--iterations",
            "4",
            "--requests",
            "2",
            "--callers",
            "4",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "| sample classifier (spin off) | raw session.run | 1 |" in res.stdout
    assert "batcher, 4 callers" in res.stdout


def test_resample_benchmark_smoke() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "resample.py"), "--rounds", "1", "--sizes", "64x48"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("| 64x48 |") == 4

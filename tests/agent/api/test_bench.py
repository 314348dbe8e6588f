"""benchmarks/serve.py runs end to end (tiny durations) and exits cleanly without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.engine import available_providers

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "serve.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env, timeout=240
    )


def test_cuda_without_cuda_exits_zero_with_a_message() -> None:
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this host has CUDA: the GPU run is a benchmark, not a test")
    result = _run("--provider", "cuda")
    assert result.returncode == 0, result.stderr
    assert "CUDAExecutionProvider is not available" in result.stdout


def test_cpu_smoke_run_prints_every_row() -> None:
    args = ("--size", "32", "--seconds", "0.5", "--rounds", "1", "--iterations", "12", "--swaps", "2", "--clients", "4")
    result = _run(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in (
        "binary tensors",
        "JSON tensors",
        "image (640x480 JPEG)",
        "image endpoint",
        "activate a loaded version",
    ):
        assert row in result.stdout
    assert "Failed requests: 0 of" in result.stdout

"""`make demo` runs scripts/demo.py: it must finish cleanly on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(mosquitto_binary: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every device holds the verified blob" in result.stdout
    assert result.stdout.count("OK") == 3

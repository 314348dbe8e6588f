"""`make test` runs pytest in worker processes (scripts/check): what tests record still ends in one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_outcomes_recorded_on_two_workers_end_in_one_table(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_sessionfinish, pytest_terminal_summary, pytest_testnodedown  # noqa: F401\n"
    )
    for name, suite, outcome, count in (("a", "fault", "recovered", 2), ("b", "attack", "refused", 3)):
        (tmp_path / f"test_{name}.py").write_text(
            "from tests.support.outcomes import record\n\n\n"
            f"def test_{name}() -> None:\n    record({suite!r}, 'class {name}', {outcome!r}, {count}, 0)\n"
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run on a worker
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    cmd: list[str | Path] = [
        sys.executable,
        "-m",
        "pytest",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-p",
        "no:cacheprovider",
        "-v",
        tmp_path,
    ]
    run = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "[gw0]" in out and "[gw1]" in out, out  # each file ran on its own worker
    rows = [line.split() for line in out.splitlines() if line.startswith(("fault ", "attack "))]
    assert rows == [["attack", "class", "b", "refused", "3", "0"], ["fault", "class", "a", "recovered", "2", "0"]]
    assert "total: recovered: 2, refused: 3; lost: 0" in out, out

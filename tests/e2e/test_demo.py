"""`make demo` is the newcomer's first five minutes: it must work from the Makefile, end to end, and clean up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _left_behind(marker: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if marker in cmd:
            found.append(f"{p.info['pid']}: {cmd[:200]}")
    return found


@pytest.mark.timeout(400)
def test_make_demo_runs_the_rollout_and_leaves_nothing_behind(mosquitto_binary: str, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env |= {"DEMO_EXIT": "1", "VENV": str(Path(sys.executable).parent.parent), "COLUMNS": "120"}
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--workdir", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=360, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "rollout succeeded" in out
    assert out.count("-> class_") == 3  # one answer from each device's API
    assert "every process stopped" in out
    assert _left_behind(str(work)) == []  # agents, hub and the hub's Mosquitto all gone


def test_demo_without_mosquitto_and_root_says_how_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (shim / "id").chmod(0o755)
    env = {"PATH": f"{shim}:/usr/bin:/bin", "EDGEFLEET_SBIN": str(tmp_path / "no-sbin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "scripts/ensure-mosquitto.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "apt-get install mosquitto" in result.stderr

"""A data disk that stays read-only keeps the agent's log short (`infra.logthrottle.LogGate`).

Every telemetry window and every reconnect meets the bad disk again; each logged an error line, so a device's
small log (journald, an SD card) filled with the same line. Now one line per `DISK_LOG_EVERY_S`, and the next
says how many were not logged. The disk here is a real read-only filesystem: EROFS comes from the kernel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.serving.repository import ModelRepository
from agent.settings import TelemetrySettings
from agent.spool import Spool
from agent.state import Stamps
from agent.telemetry import Telemetry
from infra.logthrottle import LogGate
from tests.support.disks import read_only_tmpfs

N = 50  # windows, or reconnects, while the disk is bad


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs mounted for the test (`tests.support.disks`)."""
    with read_only_tmpfs(tmp_path / "ro") as path:
        yield path


def _errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR]


def _a_period_later(gate: LogGate) -> None:
    gate.next_at = time.monotonic() - 1  # what waiting `every_s` does, without waiting


def test_telemetry_windows_on_a_read_only_disk_log_one_line_per_period(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spool = Spool(read_only_dir / "telemetry.db", capacity=10)  # cannot be opened: logged once, tried on each use
    telemetry = Telemetry(
        "dev-1",
        ModelRepository(),
        spool,
        TelemetrySettings(),
        publish=lambda _: True,
        connected=lambda: True,
        active=dict,
    )
    for _ in range(N):
        telemetry.step(make=True)
    assert telemetry.unspooled == N  # every window was lost, and counted
    lines = _errors(caplog, "agent.telemetry")
    assert len(lines) == 1, lines
    assert "telemetry spool failed" in lines[0] and "Read-only file system" in lines[0]

    _a_period_later(telemetry.spool_log)
    telemetry.step(make=True)
    lines = _errors(caplog, "agent.telemetry")
    assert len(lines) == 2, lines
    assert f"({N - 1} more not logged in the 600 s before)" in lines[1]


def test_reconnects_on_a_read_only_disk_log_one_stamp_line_per_period(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stamps = Stamps(read_only_dir / "status.json", clock=time.time)
    stamped = [stamps.status_ts() for _ in range(N)]  # a birth per reconnect
    assert stamped == sorted(set(stamped))  # still used, in order, though not saved
    lines = _errors(caplog, "agent.state")
    assert len(lines) == 1, lines
    assert "not saved to" in lines[0] and "Read-only file system" in lines[0]

    _a_period_later(stamps.save_log)
    stamps.status_ts()
    lines = _errors(caplog, "agent.state")
    assert len(lines) == 2, lines
    assert f"({N - 1} more not logged in the 600 s before)" in lines[1]

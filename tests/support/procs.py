"""The processes tests and benchmarks start: stop them (ask, wait, then insist) and read their memory peaks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil


def stop(*procs: subprocess.Popen[Any], timeout: float = 30.0, sig: int = signal.SIGTERM) -> list[int]:
    """Send `sig` to every process still running, wait for all of them (`timeout` seconds in total), SIGKILL
    those still running then. Their exit statuses, in order (-9: killed)."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(sig)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return [int(p.returncode) for p in procs]


def peak_rss(pid: int, seconds: float) -> int:
    """The highest resident set size (bytes) of process `pid` sampled every 50 ms over `seconds`."""
    p = psutil.Process(pid)
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, p.memory_info().rss)
        time.sleep(0.05)
    return peak


def vm_hwm(pid: int) -> int:
    """The kernel's high-water mark of process `pid`'s resident set (VmHWM, bytes): its peak since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

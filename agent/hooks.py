"""Test-only pause points: `EDGEFLEET_TEST_PAUSE_AT=NAME` makes the agent stop forever at point NAME.

Fault tests run the agent as a subprocess, wait for the file named by `EDGEFLEET_TEST_PAUSE_FILE` to
appear (written when the point is reached), then SIGKILL the agent there. Without the variables every
point is a no-op. Points: `download` (half of a blob's chunks are verified and persisted), `activate`
(a new engine is loaded and checked, before the swap and the pointer switch).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAUSE_AT = "EDGEFLEET_TEST_PAUSE_AT"
PAUSE_FILE = "EDGEFLEET_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Block forever at `name` when the test variables ask for it (after writing the marker file)."""
    if os.environ.get(PAUSE_AT) != name:
        return
    marker = os.environ.get(PAUSE_FILE)
    if marker:
        Path(marker).write_text(name)
    threading.Event().wait()

"""Headless Debian chromium through Playwright (never Playwright's own download)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import Browser, Playwright

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    """Debian's chromium binary (EDGEFLEET_CHROMIUM overrides); the wrapper-free one first."""
    override = os.environ.get("EDGEFLEET_CHROMIUM")
    if override:
        return override
    for c in _CANDIDATES:
        if Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def launch(pw: Playwright, executable: str) -> Browser:
    """A headless chromium."""
    return pw.chromium.launch(executable_path=executable, args=ARGS, headless=True)

"""Dashboard fixtures: one seeded hub for the module, headless Debian chromium, tokens per role."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.hub.dashboard.browser import find_chromium, launch
from tests.hub.dashboard.fleet import SeededFleet, seed_fleet, seed_rollouts
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub

DEVICES = 60


@dataclass
class Dash:
    """A running hub with a seeded fleet and a token per role."""

    hub: RunningHub
    fleet: SeededFleet
    tokens: dict[str, str]
    rollouts: list[str]

    @property
    def url(self) -> str:
        return self.hub.url

    @contextlib.contextmanager
    def client(self, role: str | None = "viewer") -> Iterator[httpx.Client]:
        """A plain HTTP client, logged in as `role` through the form (None: not logged in)."""
        with httpx.Client(base_url=self.url, follow_redirects=False, timeout=30) as c:
            if role is not None:
                r = c.post("/login", data={"token": self.tokens[role], "next": "/"})
                assert r.status_code == 303, r.text
            yield c


@pytest.fixture(scope="module")
def dash(broker: Broker, samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    """A hub (fast live updates) seeded with a fleet of DEVICES devices."""
    prefix = f"test/{uuid.uuid4().hex[:12]}/fleet/v1"
    h = start_hub(tmp_path_factory.mktemp("dash"), broker.url, prefix, dashboard={"live_interval_s": 0.2})
    # The seeded rollouts are written into the store as history, without the desired states their steps imply;
    # the controller reads rollouts from the store (any replica may have written them) and would send those
    # states, turning seeded devices into "updating". The pages only show what is stored: no ticks here.
    h.hub.rollouts.stop()
    try:
        fleet = seed_fleet(h.hub, samples, devices=DEVICES)
        rollouts = seed_rollouts(h.hub, fleet)
        tokens = {role: h.hub.auth.create_token(f"dash-{role}", role, actor="test") for role in ("viewer", "operator")}
        tokens["admin"] = h.admin_token
        yield Dash(h, fleet, tokens, rollouts)
    finally:
        h.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; browser tests skip without it, except under CI=true where that fails."""
    found = find_chromium()
    if found is None:
        message = "chromium is not installed: browser tests need it (`bash scripts/ensure-chromium.sh` as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless chromium per module: Playwright's sync API keeps an event loop running in this thread
    while it is open, so it must be closed before other packages' tests call asyncio.run()."""
    with sync_playwright() as pw:
        b = launch(pw, chromium)
        yield b
        b.close()


@pytest.fixture
def expected_errors() -> list[str]:
    """How the console errors that a test's page may log begin: refusals the tests provoke on purpose, and a live
    refresh that a newer filter request aborts (hx-sync). A test adds the ones it provokes from then on (a hub
    it stops); anything else (a CSP violation, a script error) fails the test."""
    return [
        "Failed to load resource", "Response Status Error Code 403", "Response Status Error Code 409",
        "htmx:sendAbort", "htmx:afterRequest",
    ]  # fmt: skip


@pytest.fixture
def page(browser: Browser, expected_errors: list[str]) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page; closed after the test, which fails if the page logged an
    error other than the `expected_errors`."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(15_000)
    p = ctx.new_page()
    errors: list[str] = []

    def expected(text: str) -> bool:  # the list as it is when the message comes: a test adds to it as it goes
        return text.startswith(tuple(expected_errors))

    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" and not expected(m.text) else None)
    yield p
    ctx.close()
    assert not errors, f"browser errors: {errors}"


def login(page: Page, dash: Dash, role: str, path: str = "/") -> None:
    """Log in through the form and land on `path`."""
    page.goto(dash.url + path)
    page.fill("#token", dash.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_load_state("domcontentloaded")

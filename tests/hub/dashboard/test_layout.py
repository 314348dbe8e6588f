"""Every dashboard page at phone, tablet and desktop width: nothing wider than the viewport, no console error.

Measured in headless chromium: the document's `scrollWidth` against its `clientWidth`, and no element whose
right edge lies past the viewport (the element is named when one does).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.hub.dashboard.conftest import Dash

WIDTHS = (390, 768, 1440)
# an element past the right edge counts unless a table cell clips it (an ellipsis) or a `.scroll-x` box
# scrolls it; a card that cuts a table off does not count as clipping: that content is lost
_OVERFLOWING = """() => {
  const vw = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= vw + 1) continue;
    const cell = el.parentElement && el.parentElement.closest("td, th");
    const clips = cell && getComputedStyle(cell).overflowX !== "visible";
    if (clips && cell.getBoundingClientRect().right <= vw + 1) continue;
    if (el.closest(".scroll-x")) continue;
    const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + "." + [...el.classList].join(".");
    out.push(`${name} right=${Math.round(r.right)}`);
  }
  return {scroll: document.documentElement.scrollWidth, client: vw, offenders: out.slice(0, 8)};
}"""


def _pages(dash: Dash) -> list[str]:
    f = dash.fleet
    online_gpu = next(d for d in f.gpu_devices if d in f.by_state["online"])
    return [
        "/", "/devices", "/devices?selector=site%3Dberlin%2Chw%3Dgpu&sort=last_seen&desc=1", f"/devices/{online_gpu}",
        f"/devices/{f.by_state['failed'][0]}", "/models", "/rollouts", *(f"/rollouts/{r}" for r in dash.rollouts),
        "/no/such/page", "/devices/no-such-device",
    ]  # fmt: skip


@pytest.fixture(params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def sized(request: pytest.FixtureRequest, browser: Browser) -> Iterator[tuple[BrowserContext, list[str]]]:
    ctx = browser.new_context(viewport={"width": request.param, "height": 800})
    ctx.set_default_timeout(15_000)
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    ctx.on("console", lambda m: errors.append(f"{m.location.get('url')}: {m.text}") if m.type == "error" else None)
    yield ctx, errors
    ctx.close()


def _settled(page: Page) -> None:
    # `goto` returned at the load event (stylesheet, script, favicon in); what arrives later is each chart
    # group's data, which sets `data-loaded` once drawn. ("networkidle" would add half a second of quiet a page.)
    page.wait_for_function("() => [...document.querySelectorAll('.chart-group')].every(g => g.dataset.loaded)")


def test_no_page_is_wider_than_the_screen(sized: tuple[BrowserContext, list[str]], dash: Dash) -> None:
    ctx, errors = sized
    page = ctx.new_page()
    page.goto(dash.url + "/login")
    checked = {"/login": page.evaluate(_OVERFLOWING)}
    page.fill("#token", dash.tokens["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(dash.url + "/")
    for path in _pages(dash):
        page.goto(dash.url + path)
        _settled(page)
        checked[path] = page.evaluate(_OVERFLOWING)
    too_wide = {p: m for p, m in checked.items() if m["scroll"] > m["client"] or m["offenders"]}
    assert not too_wide, too_wide
    # nothing fails in the browser: no script error, no missing resource (a favicon included); the two
    # pages that are 404s on purpose log their own status, and only that
    missing = ("/no/such/page: ", "/devices/no-such-device: ")
    unexpected = [e for e in errors if not (e.startswith(tuple(dash.url + m for m in missing)) and "404" in e)]
    assert not unexpected, unexpected

"""Every dashboard page at phone, tablet and desktop width: nothing wider than the viewport, no console error.

Measured in headless chromium: the document's `scrollWidth` against its `clientWidth`, and no element whose
right edge lies past the viewport (the element is named when one does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from fleet.messages import ErrorInfo, Phase
from models.descriptor import ModelDescriptor
from tests.hub.dashboard.conftest import Dash
from tests.support.hub import RunningHub
from tests.support.wire import one_model_report

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

# text whose colour against the first opaque background behind it is below WCAG AA (4.5:1; 3:1 for large
# text), counted by element and colours; disabled controls and the charts' canvas are exempt
_LOW_CONTRAST = """() => {
  const rgb = s => { const m = s.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(",").map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = c => { const f = x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const behind = el => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const out = {};
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("[disabled], .uplot, [hidden]") || el.getClientRects().length === 0) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const cs = getComputedStyle(el), fg = rgb(cs.color), bg = behind(el);
    const size = parseFloat(cs.fontSize), large = size >= 24 || (parseInt(cs.fontWeight) >= 700 && size >= 18.66);
    const a = lum(fg), b = lum(bg), ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio >= (large ? 3 : 4.5)) continue;
    const key = `${el.tagName.toLowerCase()}.${[...el.classList].join(".")} ${cs.color} on ${bg.r},${bg.g},${bg.b}`;
    out[key] = ratio.toFixed(2);
  }
  return out;
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


def _every_page(ctx: BrowserContext, dash: Dash, script: str) -> dict[str, Any]:
    """`script` evaluated on the login page, then (logged in as a viewer) on every page of `dash`, by path."""
    page = ctx.new_page()
    page.goto(dash.url + "/login")
    found = {"/login": page.evaluate(script)}
    page.fill("#token", dash.tokens["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(dash.url + "/")
    for path in _pages(dash):
        page.goto(dash.url + path)
        _settled(page)
        found[path] = page.evaluate(script)
    return found


def test_no_page_is_wider_than_the_screen(sized: tuple[BrowserContext, list[str]], dash: Dash) -> None:
    ctx, errors = sized
    checked = _every_page(ctx, dash, _OVERFLOWING)
    too_wide = {p: m for p, m in checked.items() if m["scroll"] > m["client"] or m["offenders"]}
    assert not too_wide, too_wide
    # nothing fails in the browser: no script error, no missing resource (a favicon included); the two
    # pages that are 404s on purpose log their own status, and only that
    missing = ("/no/such/page: ", "/devices/no-such-device: ")
    unexpected = [e for e in errors if not (e.startswith(tuple(dash.url + m for m in missing)) and "404" in e)]
    assert not unexpected, unexpected


def test_long_words_wrap_instead_of_widening_the_page(
    sized: tuple[BrowserContext, list[str]], running_hub: RunningHub, samples: Path
) -> None:
    """What operators and devices write is free text: a pasted URL or digest in a rollout note, a device's error
    with a long path, a label of 150 characters all wrap inside their card."""
    ctx, _errors = sized
    url = "https://grafana.example.com/d/fleet-latency/edge?orgId=1&from=now-6h&to=now&var-site=berlin&viewPanel=12"
    digest = "sha256:6af5d2b1dddbf237f775fd77591595c4abd2e7eecddf04ea23c6234ec63a99d9"  # one word of 71 characters
    key = "team.platform.example.com/" + "k" * 60
    labels = {"site": "a", key: "v" * 63}
    with running_hub.client() as c:
        c.post("/api/v1/devices", json={"id": "cam-1", "labels": labels}).raise_for_status()
        for version in ("1.0.0", "1.1.0"):
            desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json() | {"version": version}
            assert running_hub.push_model(samples / "mobilenet-like.onnx", desc).status_code == 201
        body = {"model": "mobilenet-like", "version": "1.0.0", "selector": "site=a"}
        c.post("/api/v1/deployments", json=body).raise_for_status()
        r = c.post("/api/v1/rollouts", json={"model": "mobilenet-like", "version": "1.1.0", "selector": "site=a"})
        r.raise_for_status()
        rollout = r.json()["id"]
        note = {"reason": f"latency is up, see {url} ({digest})"}
        c.post(f"/api/v1/rollouts/{rollout}/pause", json=note).raise_for_status()
    now = time.time()
    err = ErrorInfo(code="activation_failed", message=f"cannot load /var/lib/edgefleet/blobs/{digest}", at=now)
    msg = one_model_report("cam-1", seq=1, ts=now, phase=Phase.FAILED, model="mobilenet-like", error=err)
    running_hub.hub.store.enqueue_reported(msg, now)
    running_hub.hub.store.flush()
    page = ctx.new_page()
    page.goto(running_hub.url + "/login")
    page.fill("#token", running_hub.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(running_hub.url + "/")
    checked = {}
    for path in ("/", "/devices", "/devices?state=failed", "/devices/cam-1", "/rollouts", f"/rollouts/{rollout}"):
        page.goto(running_hub.url + path)
        _settled(page)
        checked[path] = page.evaluate(_OVERFLOWING)
    too_wide = {p: m for p, m in checked.items() if m["scroll"] > m["client"] or m["offenders"]}
    assert not too_wide, too_wide


def test_text_is_readable_against_its_background(sized: tuple[BrowserContext, list[str]], dash: Dash) -> None:
    """Every piece of text on every page reaches WCAG AA contrast (muted text on the page's grey, the green
    of "in sync" and "pass", the red of an error on a highlighted row were below it)."""
    ctx, _errors = sized
    low = _every_page(ctx, dash, _LOW_CONTRAST)
    assert not {p: found for p, found in low.items() if found}, low


def test_the_models_table_fits_a_laptop_with_long_names(
    browser: Browser, running_hub: RunningHub, samples: Path
) -> None:
    """A model name of 63 characters and a version with build metadata wrap in their cells: the devices that
    run each version (the table's right-hand columns) stay in view at 1280 px instead of behind a scrollbar."""
    for name, version in (("mobilenet-like", "1.0.0"), ("m" * 30 + "-" + "n" * 32, "10.20.30-rc.1+build.2026.12.07")):
        desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json() | {"name": name, "version": version}
        assert running_hub.push_model(samples / "mobilenet-like.onnx", desc).status_code == 201
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.goto(running_hub.url + "/login")
    page.fill("#token", running_hub.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(running_hub.url + "/")
    page.goto(running_hub.url + "/models")
    table = page.evaluate("() => [document.querySelector('table.models').scrollWidth, "
                          "document.querySelector('table.models').parentElement.clientWidth]")  # fmt: skip
    lines = page.evaluate("""() => [...document.querySelectorAll('tr[data-model] td:nth-child(-n+2)')].map(td => {
        const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; })""")
    ctx.close()
    assert table[0] <= table[1], table
    assert lines[2:] == [1, 1]  # mobilenet-like 1.0.0: a short name and version stay on one line
    assert lines[0] > 1  # the long name wraps

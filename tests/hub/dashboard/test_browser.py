"""The dashboard in headless chromium: log in, overview, filters, device detail with charts, live updates."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from fleet.messages import DeviceStatus
from hub.dashboard import live
from tests.hub.dashboard.conftest import DEVICES, Dash, login
from tests.support.broker import Broker
from tests.support.hub import start_hub


def _points(page: Page, selector: str) -> int:
    page.wait_for_selector(f"{selector}[data-ready='1']")
    return int(page.get_attribute(selector, "data-points") or 0)


def test_login_then_overview_shows_the_seeded_fleet(page: Page, dash: Dash) -> None:
    page.goto(dash.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.fill("#token", "eft_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_contain_text("invalid or revoked token")
    page.fill("#token", dash.tokens["viewer"])
    page.click("button[type=submit]")
    expect(page).to_have_url(dash.url + "/")
    expect(page.locator("[data-count=total]")).to_have_text(str(DEVICES))
    for state, ids in dash.fleet.by_state.items():
        expect(page.locator(f"[data-count={state}]")).to_have_text(str(len(ids)))
    expect(page.locator(".user")).to_contain_text("viewer")
    expect(page.locator("[data-traffic=hour-requests]")).not_to_have_text("0")  # loaded after the first render
    expect(page.locator("table.versions").first).to_contain_text("1.1.0")
    for chart in ("#chart-rps", "#chart-err", "#chart-p95"):
        assert _points(page, chart) > 30, chart
    page.click("#fleet-charts .seg button[data-range='24h']")
    page.wait_for_function("() => document.querySelector('#fleet-charts').dataset.range === '24h'")
    page.wait_for_function("() => !document.querySelector('#fleet-charts').dataset.loading")
    assert _points(page, "#chart-rps") > 200  # 5-minute points over the day
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))


def test_filter_sort_and_page_devices(page: Page, dash: Dash) -> None:
    login(page, dash, "viewer", "/devices")
    rows = page.locator("#device-table tbody tr")
    expect(rows).to_have_count(50)  # page size
    expect(page.locator(".pager .current").first).to_have_text("1")
    page.locator(".pager a[rel=next]").first.click()
    expect(rows).to_have_count(DEVICES - 50)
    expect(page).to_have_url(re.compile(r"/devices\?page=2$"))

    page.fill("#f-selector", "site=berlin,hw=gpu")
    expected = [d for d in dash.fleet.gpu_devices if d.startswith("ber-")]
    expect(rows).to_have_count(len(expected))
    for dev in expected:
        expect(page.locator(f"tr[data-device='{dev}']")).to_contain_text("CUDA")
    expect(page).to_have_url(re.compile(r"selector=site%3Dberlin%2Chw%3Dgpu"))

    page.fill("#f-selector", "")
    page.select_option("#f-state", "failed")
    expect(rows).to_have_count(len(dash.fleet.by_state["failed"]))
    page.select_option("#f-state", "")
    page.select_option("#f-version", "mobilenet-like:1.2.0")
    with dash.hub.client() as api:
        listed = api.get("/api/v1/devices").json()
    want = "mobilenet-like:1.2.0"
    with_version: set[str] = {d["id"] for d in listed if want in d["active_models"] + d["desired_models"]}
    assert with_version
    expect(rows).to_have_count(len(with_version))
    assert {r.get_attribute("data-device") for r in rows.all()} == with_version

    page.select_option("#f-version", "")
    page.fill("#f-selector", "site in (berlin")
    expect(page.locator("#device-table .alert")).to_contain_text("Invalid selector")
    page.fill("#f-selector", "")
    expect(rows).to_have_count(50)
    page.get_by_role("link", name="Last seen").click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Last seen")
    offline = set(dash.fleet.by_state["offline"])
    page.select_option("#f-state", "")  # the filter keeps the order
    expect(page).to_have_url(re.compile(r"sort=last_seen&desc=1"))
    first = rows.first.get_attribute("data-device")
    assert first not in offline  # newest first: offline devices fell silent half an hour ago


def test_device_detail_has_capabilities_history_and_charts(page: Page, dash: Dash) -> None:
    dev = dash.fleet.gpu_devices[1]
    login(page, dash, "viewer", "/devices?selector=hw%3Dgpu")
    page.click(f"a[href='/devices/{dev}']")
    expect(page).to_have_url(dash.url + f"/devices/{dev}")
    expect(page.locator("h1")).to_contain_text(dev)
    expect(page.locator("dl.kv")).to_contain_text("NVIDIA L4")
    expect(page.locator("table.compare")).to_contain_text("in sync")
    history = page.locator("ol.timeline li")
    expect(history.last).to_contain_text("idle")  # newest first: the first report is at the bottom
    for phase in ("downloading", "activating", "active"):
        expect(history.filter(has_text=phase).first).to_be_visible()
    assert history.count() >= 4
    for chart in ("#chart-latency", "#chart-throughput", "#chart-errors", "#chart-util"):
        assert _points(page, chart) > 30, chart
    expect(page.locator("#chart-util .u-legend")).to_contain_text("GPU 0")


def test_failed_device_shows_its_error(page: Page, dash: Dash) -> None:
    dev = dash.fleet.by_state["failed"][0]
    login(page, dash, "viewer", f"/devices/{dev}")
    expect(page.locator("[data-state]")).to_have_text("failed")
    expect(page.locator("p.alert")).to_contain_text("golden_mismatch")
    expect(page.locator("table.compare tr.mismatch")).not_to_have_count(0)


def test_models_page_lists_versions_and_where_they_run(page: Page, dash: Dash) -> None:
    login(page, dash, "viewer", "/models")
    expect(page.locator("tr[data-model]")).to_have_count(4)
    row = page.locator("tr[data-model='mobilenet-like:1.1.0']")
    expect(row).to_contain_text("classification")
    expect(row).to_contain_text("recorded")
    candidate = page.locator("tr[data-model='tiny-detector:0.5.0-rc.1']")
    expect(candidate).to_contain_text("detection")
    expect(candidate.locator("td.num").nth(1)).to_have_text("0")  # running nowhere: it failed or is on its way


def test_overview_updates_live_without_reload(page: Page, dash: Dash) -> None:
    login(page, dash, "viewer", "/")
    before = int(page.inner_text("[data-count=offline]"))
    page.evaluate("() => { window.__marker = 1; }")  # survives only if the page is not reloaded
    dev = dash.fleet.by_state["online"][0]
    now = time.time()
    dash.hub.hub.store.enqueue_status(DeviceStatus(device_id=dev, state="offline", ts=now), now)
    # 0.35-0.6 s here. CI twice saw more than 5 s on a loaded 2-core VM: the change was written before the page's
    # stream started, and only the 30 s state tick showed it (see the next test). 15 s, half that tick.
    expect(page.locator("[data-count=offline]")).to_have_text(str(before + 1), timeout=15_000)
    assert page.evaluate("() => window.__marker") == 1
    dash.fleet.by_state["online"].remove(dev)
    dash.fleet.by_state["offline"].append(dev)


def test_a_change_while_the_page_loads_is_shown(page: Page, dash: Dash, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live-update test above failed in CI now and then: the page's stream started after the test's change
    was written and took it into its baseline, so only the 30 s state tick showed it. Here the change is made
    while the stream's request is on its way (after the page read the fleet), and the tick cannot move."""
    monkeypatch.setattr(live, "_STATE_TICK_S", 1e12)  # no state tick in this test: only the change can show it
    dev = dash.fleet.by_state["online"][0]
    before = len(dash.fleet.by_state["offline"])

    def change_then_connect(route: Route) -> None:
        if not changes:
            now = time.time()
            dash.hub.hub.store.enqueue_status(DeviceStatus(device_id=dev, state="offline", ts=now), now)
            dash.hub.hub.store.flush()
            changes.append(dev)
        route.continue_()

    changes: list[str] = []
    page.route(re.compile(r"/live(\?|$)"), change_then_connect)
    login(page, dash, "viewer", "/")
    expect(page.locator("[data-count=offline]")).to_have_text(str(before + 1), timeout=15_000)
    assert changes == [dev]
    dash.fleet.by_state["online"].remove(dev)
    dash.fleet.by_state["offline"].append(dev)


def test_logout_ends_the_session(page: Page, dash: Dash) -> None:
    login(page, dash, "viewer", "/")
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(dash.url + "/devices")
    expect(page).to_have_url(re.compile(r"/login\?next=/devices$"))


def test_a_dead_hub_is_said_in_words_not_only_with_a_grey_dot(
    page: Page, expected_errors: list[str], broker: Broker, tmp_path: Path
) -> None:
    h = start_hub(tmp_path / "hub", broker.url, f"test/{uuid.uuid4().hex[:12]}/fleet/v1",
                  dashboard={"live_interval_s": 0.2})  # fmt: skip
    try:
        page.goto(h.url + "/")
        page.fill("#token", h.admin_token)
        page.click("button[type=submit]")
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#stale")).to_be_hidden()
        stamp = page.inner_text("[data-updated]")
        # A refresh in flight when the hub stops, or sent after (an update, the 30 s state tick), fails to
        # send, and htmx logs that: what this test makes happen. Before the stop, the same error still fails it.
        expected_errors.append("htmx:sendError")
    finally:
        h.stop()  # the API server and the hub: the live stream ends, reconnecting fails
    expect(page.locator("#stale")).to_be_visible(timeout=20_000)
    expect(page.locator("#stale")).to_contain_text("Live updates stopped")
    expect(page.locator("#live")).to_have_text("stale")
    assert page.inner_text("[data-updated]") == stamp  # the data is as old as it says


def test_an_ended_session_goes_to_the_login_form_and_back(
    browser: Browser, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """A token revoked (or a cookie expired) under an open page: the next live stream is refused, and the page
    goes to the login form instead of saying "the hub does not answer" for ever; logging in again comes back
    to the page, not to a fragment of it."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, dashboard={"live_interval_s": 0.2,
                                                                         "live_max_stream_s": 1})  # fmt: skip
    try:
        viewer = h.token("viewer")
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(15_000)
        page = ctx.new_page()
        page.goto(h.url + "/login")
        page.fill("#token", viewer)
        page.click("button[type=submit]")
        page.wait_for_url(h.url + "/")
        page.goto(h.url + "/devices?state=failed")
        expect(page.locator("#live")).to_have_text("live")

        def back_at_the_login_form() -> None:
            page.wait_for_url(re.compile(r"/login\?next="))
            assert parse_qs(urlsplit(page.url).query)["next"] == ["/devices?state=failed"]
            expect(page.locator("#stale")).to_have_count(0)  # the login form, not a stale page

        ctx.clear_cookies()  # the cookie expired: nothing changes in the fleet, the next stream is refused
        back_at_the_login_form()
        page.fill("#token", viewer)
        page.click("button[type=submit]")
        page.wait_for_url(h.url + "/devices?state=failed")
        expect(page.locator("#live")).to_have_text("live")
        with h.client() as c:  # revoked: its event makes the table refresh, and that is refused
            (tid,) = [t["id"] for t in c.get("/api/v1/tokens").json() if t["name"] == "test-viewer"]
            assert c.delete(f"/api/v1/tokens/{tid}").status_code == 204
        back_at_the_login_form()
        page.fill("#token", h.admin_token)
        page.click("button[type=submit]")
        page.wait_for_url(h.url + "/devices?state=failed")
        expect(page.locator("h1")).to_have_text("Devices")
        ctx.close()
    finally:
        h.stop()

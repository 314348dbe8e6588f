"""Rollout pages in headless chromium: gates with their numbers, operator commands, a viewer refused."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Dialog, Page, expect

from hub.rollouts.model import RolloutSpec
from tests.hub.dashboard.conftest import Dash, login


@pytest.fixture
def running(dash: Dash) -> Iterator[str]:
    """A running rollout of the detector candidate (its devices never answer: it stays in wave 1)."""
    spec = RolloutSpec(model="tiny-detector", version="0.5.0-rc.1", selector="app=detect,hw=cpu", bake_s=60)
    r = dash.hub.hub.rollouts.start_rollout(spec, actor="test")
    yield r.id
    rollout = dash.hub.hub.rollouts.get(r.id)
    if rollout.state.active:
        dash.hub.hub.rollouts.command(r.id, "abort", actor="test")


def test_rollout_list_and_gates(page: Page, dash: Dash) -> None:
    paused, completed = dash.rollouts
    login(page, dash, "viewer", "/rollouts")
    expect(page.locator(f"tr[data-rollout='{completed}']")).to_contain_text("completed")
    page.click(f"a[href='/rollouts/{paused}']")
    expect(page).to_have_url(dash.url + f"/rollouts/{paused}")
    expect(page.locator("[data-rollout-state]")).to_have_text("paused")
    expect(page.locator("[data-reason]")).to_contain_text("p95_latency")
    failed_wave = page.locator("section[data-wave='2']")
    gate = failed_wave.locator("tr[data-gate='p95_latency']")
    expect(gate).to_have_attribute("data-status", "fail")
    expect(gate).to_contain_text("0.3359")  # the measured regression
    expect(gate).to_contain_text("0.2")  # the limit
    expect(gate).to_contain_text("wave_p95_ms=17.1")
    expect(gate).to_contain_text("over 20%")
    expect(failed_wave.locator("tr[data-status='pass']")).to_have_count(3)
    expect(page.locator("section[data-wave='0'] tr[data-gate='error_rate']")).to_have_attribute("data-status", "pass")
    expect(page.locator("button[data-action='pause']")).to_be_disabled()  # paused already


def test_viewer_sees_disabled_commands_and_is_refused_anyway_then_operator_pauses(
    page: Page, dash: Dash, running: str
) -> None:
    login(page, dash, "viewer", f"/rollouts/{running}")
    expect(page.locator("[data-rollout-state]")).to_have_text("running")
    for action in ("pause", "resume", "abort", "rollback"):
        button = page.locator(f"button[data-action='{action}']")
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile("needs the operator role"))
    expect(page.locator("[data-viewer]")).to_contain_text("need the operator role")
    # a request sent anyway (the button's own POST, with this session's CSRF token) is refused by the hub
    status = page.evaluate(
        """async (id) => {
            const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
            const r = await fetch(`/rollouts/${id}/pause`, {method: "POST", headers: {"X-CSRF-Token": csrf,
                "HX-Request": "true"}, body: new URLSearchParams({csrf})});
            return [r.status, await r.text()];
        }""",
        running,
    )
    assert status[0] == 403 and "operator role" in status[1]
    assert dash.hub.hub.rollouts.get(running).state.value == "running"

    page.click("text=Log out")
    login(page, dash, "operator", f"/rollouts/{running}")
    page.fill("#reason", "checking the canary by hand")
    page.click("button[data-action='pause']")
    expect(page.locator("#action-result .notice")).to_contain_text("pause accepted")
    expect(page.locator("[data-rollout-state]")).to_have_text("paused")
    expect(page.locator("[data-reason]")).to_contain_text("paused by an operator")
    expect(page.locator("[data-note]")).to_contain_text("checking the canary by hand")
    stored = dash.hub.hub.rollouts.get(running)
    assert stored.state.value == "paused"
    assert stored.note == "checking the canary by hand"
    events = dash.hub.hub.views.events(subject=f"rollout/{running}", action="rollout.pause", limit=5)
    assert events and events[0].actor == "dash-operator"
    page.click("button[data-action='resume']")
    expect(page.locator("[data-rollout-state]")).to_have_text("running")


def test_abort_and_rollback_ask_first_and_say_how_many_devices(page: Page, dash: Dash, running: str) -> None:
    dash.hub.hub.rollouts.tick()  # the first wave starts: its devices are sent the candidate
    r = dash.hub.hub.rollouts.get(running)
    first_wave = len(r.members(0))
    login(page, dash, "operator", f"/rollouts/{running}")
    asked: list[str] = []

    def answer(accept: bool) -> None:
        def on_dialog(d: Dialog) -> None:
            asked.append(d.message)
            if accept:
                d.accept()
            else:
                d.dismiss()

        page.once("dialog", on_dialog)

    answer(False)
    page.click("button[data-action='rollback']")
    expect(page.locator("[data-rollout-state]")).to_have_text("running")  # dismissed: nothing sent
    assert asked and asked[0].startswith(f"Roll back {running}? ") and f" for {first_wave} device" in asked[0]
    assert "tiny-detector:0.4.0" in asked[0]  # what those devices get back
    assert dash.hub.hub.rollouts.get(running).state.value == "running"
    answer(False)
    page.click("button[data-action='abort']")
    assert len(asked) == 2 and asked[1].startswith(f"Abort {running}?")
    assert re.search(r"(\b1 device in later waves never gets|\d+ devices in later waves never get) it\.", asked[1])
    assert dash.hub.hub.rollouts.get(running).state.value == "running"
    answer(True)
    page.click("button[data-action='abort']")
    expect(page.locator("[data-rollout-state]")).to_have_text("aborted")


def test_overview_lists_active_rollouts(page: Page, dash: Dash, running: str) -> None:
    login(page, dash, "viewer", "/")
    expect(page.locator(f"tr[data-rollout='{running}']")).to_contain_text("running")
    expect(page.locator(f"tr[data-rollout='{dash.rollouts[0]}']")).to_contain_text("3 of 4")
    expect(page.locator(f"tr[data-rollout='{dash.rollouts[1]}']")).to_have_count(0)  # completed: not active
    page.click(f"a[href='/rollouts/{running}']")
    expect(page).to_have_url(re.compile(rf"/rollouts/{running}$"))

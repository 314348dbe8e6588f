"""The dashboard over plain HTTP: sessions, security headers, CSRF, roles, and malformed or hostile input."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet_cli import app
from fleet.messages import (
    AppliedModel,
    DeviceStatus,
    DownloadProgress,
    ErrorInfo,
    ModelStatus,
    Phase,
    ReportedState,
)
from hub.dashboard import live
from hub.dashboard.render import detail
from hub.dashboard.session import COOKIE, csrf_token
from models.descriptor import ModelDescriptor
from tests.hub.dashboard.conftest import Dash
from tests.hub.dashboard.fleet import SeededFleet
from tests.support.broker import Broker
from tests.support.hub import RunningHub, start_hub
from tests.support.mqtt import wait_for
from tests.support.wire import one_model_report

PAGES = ["/", "/devices", "/models", "/rollouts"]


def _csrf(c: httpx.Client) -> str:
    return csrf_token(c.cookies[COOKIE])


def test_pages_need_a_session(dash: Dash) -> None:
    with dash.client(None) as c:
        for path in [*PAGES, "/devices/x", "/ui/overview", "/ui/devices", "/ui/data/fleet"]:
            r = c.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next=")
        # a fragment sends the browser back to the page it is on (a fragment alone is no page), local ones only
        here = dash.url + "/devices?state=failed&page=2"
        for current, back in ((here, "/devices%3Fstate%3Dfailed%26page%3D2"), (None, "/"),
                              ("https://evil.example/devices", "/"), (dash.url + "/ui/overview", "/")):  # fmt: skip
            headers = {"HX-Request": "true"} | ({"HX-Current-URL": current} if current else {})
            r = c.get("/ui/devices?state=failed", headers=headers)
            assert r.status_code == 401
            assert r.headers["HX-Redirect"] == f"/login?next={back}", current
        assert c.get("/live").status_code == 401
        c.cookies.set(COOKIE, "eft_forged")
        assert c.get("/").status_code == 303
        c.cookies.set(COOKIE, "x" * 5000)
        assert c.get("/").status_code == 303


def test_login_cookie_and_security_headers(dash: Dash) -> None:
    with dash.client(None) as c:
        r = c.post("/login", data={"token": dash.tokens["viewer"], "next": "/devices?state=failed"})
        assert r.status_code == 303
        assert r.headers["location"] == "/devices?state=failed"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/" in cookie
        for path in [*PAGES, "/login", "/static/app.js"]:
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in c.get("/").text  # no inline scripts: every script has a src
        api = c.get("/api/v1/devices", headers={"Authorization": f"Bearer {dash.tokens['viewer']}"})
        assert api.status_code == 200
        assert "content-security-policy" not in api.headers  # the REST API and /docs are left alone
        assert c.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "", "x" * 2000]
)
def test_login_never_redirects_off_site(dash: Dash, target: str) -> None:
    with dash.client(None) as c:
        r = c.post("/login", data={"token": dash.tokens["viewer"], "next": target})
        assert r.status_code == 303
        assert r.headers["location"] == "/"


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"token": ""},
        {"token": "   "},
        {"token": "eft_" + "A" * 300},
        {"token": "bearer-less\nInjected: header"},
        {"token": "\x00\xff"},
    ],
)
def test_login_refuses_bad_tokens(dash: Dash, data: dict[str, str]) -> None:
    with dash.client(None) as c:
        r = c.post("/login", data=data)
        assert r.status_code == 401
        assert "set-cookie" not in r.headers
        assert 'role="alert"' in r.text


def test_login_refuses_oversized_and_cross_origin_forms(dash: Dash) -> None:
    with dash.client(None) as c:
        r = c.post("/login", data={"token": "a" * 100_000})
        assert r.status_code in (400, 401, 413)
        assert "set-cookie" not in r.headers
        r = c.post("/login", data={"token": dash.tokens["viewer"]}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert "set-cookie" not in r.headers


def test_logout_needs_the_csrf_token(dash: Dash) -> None:
    with dash.client("viewer") as c:
        assert c.post("/logout", data={}).status_code == 403
        assert c.post("/logout", data={"csrf": "0" * 40}).status_code == 403
        assert c.get("/").status_code == 200  # still logged in
        r = c.post("/logout", data={"csrf": _csrf(c)})
        assert r.status_code == 303
        assert COOKIE not in c.cookies or not c.cookies[COOKIE]
        assert c.get("/").status_code == 303


def test_commands_need_operator_csrf_and_same_origin(dash: Dash) -> None:
    paused = dash.rollouts[0]
    with dash.client("viewer") as c:
        r = c.post(f"/rollouts/{paused}/resume", data={"csrf": _csrf(c)})
        assert r.status_code == 403
        assert "operator role" in r.text
    with dash.client("operator") as c:
        r = c.post(f"/rollouts/{paused}/resume", data={})
        assert r.status_code == 403
        assert "CSRF" in r.text
        h = {"X-CSRF-Token": _csrf(c), "Origin": "https://evil.example"}
        assert c.post(f"/rollouts/{paused}/resume", headers=h).status_code == 403
        h = {"X-CSRF-Token": _csrf(c), "HX-Request": "true"}
        r = c.post(f"/rollouts/{paused}/explode", headers=h)
        assert r.status_code == 400
        assert "unknown command" in r.text
        r = c.post("/rollouts/r-000000000000/pause", headers=h)
        assert r.status_code == 404
        r = c.post(f"/rollouts/{dash.rollouts[1]}/pause", headers=h)  # completed
        assert r.status_code == 409
        assert "cannot pause" in r.text
    assert dash.hub.hub.rollouts.get(paused).state.value == "paused"


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("state=bogus", 400, "unknown state"),
        ("sort=password_hash", 400, "unknown sort column"),
        ("page=0", 400, "page must be a number"),
        ("page=-1", 400, "page must be a number"),
        ("page=1e9", 400, "page must be a number"),
        ("page=99999", 200, "data-matched"),  # beyond the last page: the last page
        ("selector=" + "a" * 600, 400, "longer than 512"),
        ("selector=site+in+(berlin", 200, "Invalid selector"),
        ("selector=%00%ff", 200, "Invalid selector"),
        ("version=nope:9.9.9", 200, "No device matches"),
    ],
)
def test_device_table_bad_queries(dash: Dash, query: str, status: int, text: str) -> None:
    with dash.client("viewer") as c:
        for path in ("/devices", "/ui/devices"):
            r = c.get(f"{path}?{query}")
            assert r.status_code == status, (path, r.text[:300])
            assert text in r.text


def test_unknown_things_are_404_pages(dash: Dash) -> None:
    with dash.client("viewer") as c:
        for path in ("/devices/no-such-device", "/rollouts/r-0000000000", "/ui/data/devices/no-such-device"):
            r = c.get(path)
            assert r.status_code == 404, path
            assert "text/html" in r.headers["content-type"]
        assert c.get("/rollouts/" + "r" * 100).status_code == 400
        assert c.get("/ui/data/fleet?range=9y").status_code == 400
        assert c.get("/devices/%3Cscript%3E").status_code == 404


def test_browsers_get_error_pages_and_api_clients_json(dash: Dash) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with dash.client("viewer") as c:
        page = c.get("/no/such/page", headers=html)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert "There is no page at /no/such/page" in page.text and 'href="/devices"' in page.text  # nav: logged in
        assert "content-security-policy" in page.headers
        wrong_method = c.delete("/devices", headers=html)
        assert wrong_method.status_code == 405 and "text/html" in wrong_method.headers["content-type"]
        for headers in ({"Accept": "application/json"}, {}):
            r = c.get("/no/such/page", headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        api = c.get("/api/v1/nope", headers=html)  # the API answers JSON, whoever asks
        assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
    with dash.client(None) as anon:
        page = anon.get("/nope", headers=html)
        assert page.status_code == 404 and "text/html" in page.headers["content-type"] and "Log out" not in page.text
        icon = anon.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml" and b"<svg" in icon.content


def test_chart_data(dash: Dash) -> None:
    dev = dash.fleet.gpu_devices[0]
    with dash.client("viewer") as c:
        fleet = c.get("/ui/data/fleet?range=1h").json()
        assert len(fleet["x"]) >= 60
        assert fleet["partial_from"] == fleet["x"][-1] and fleet["x"][-1] + 60 > time.time()  # the minute under way
        assert sum(v for v in fleet["charts"]["rps"][0]["values"] if v) > 0
        day = c.get("/ui/data/fleet?range=24h").json()
        assert 280 <= len(day["x"]) <= 290  # 5-minute grid
        d = c.get(f"/ui/data/devices/{dev}?range=6h").json()
        assert [s["label"] for s in d["charts"]["latency"]] == ["p50", "p95", "p99"]
        assert [s["label"] for s in d["util"]["series"]] == ["CPU", "GPU 0"]
        assert all(v is None or 0 <= v <= 100 for s in d["util"]["series"] for v in s["values"])


def test_hostile_device_text_is_escaped(dash: Dash) -> None:
    dev = dash.fleet.by_state["online"][-1]
    now = time.time()
    err = ErrorInfo(code="x<script>", message='<img src=x onerror="alert(1)"><script>alert(2)</script>', at=now)
    msg = one_model_report(dev, seq=10_000, ts=now, phase=Phase.FAILED, error=err, model="mobilenet-like")
    dash.hub.hub.store.enqueue_reported(msg, now)
    dash.hub.hub.store.flush()
    with dash.client("viewer") as c:
        for path in (f"/devices/{dev}", "/devices?state=failed"):
            body = c.get(path).text
            assert "<script>alert" not in body
            assert "<img src=x" not in body
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in c.get(f"/devices/{dev}").text


def test_live_stream_sends_an_update_when_the_fleet_changes(dash: Dash) -> None:
    with (
        dash.client("viewer") as c,
        c.stream("GET", "/live", headers={"Accept": "text/event-stream"}, timeout=30) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines).startswith("retry: ")
        dash.hub.hub.store.add_event(time.time(), "test", "test.ping", "hub", {})
        for line in lines:
            if line == "event: update":
                break
        assert next(lines).startswith("data: {")


def _live_src(page: str) -> str:
    """The live stream's URL of a page, with the page's stamp (`/live?since=...`)."""
    found = re.search(r'data-live="([^"]+)"', page)
    assert found is not None
    src = html.unescape(found.group(1))
    assert src.startswith("/live?since=")
    return src


def _events(r: httpx.Response) -> Iterator[dict[str, str]]:
    """A stream's events (not its `retry:`), each as its fields: `event`, `id`, `data`."""
    fields: dict[str, str] = {}
    for line in r.iter_lines():
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
            continue
        if "event" in fields:
            yield fields
        fields = {}


@pytest.fixture
def quiet(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[Dash]:
    """A hub of this test's own whose streams end as soon as they have said what they say at their start (their
    deadline has passed before they would look for a change): a test reads each stream to its end."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, dashboard={"live_max_stream_s": 1e-9})
    try:
        yield _fresh(h)
    finally:
        h.stop()


def _settled_src(c: httpx.Client) -> str:
    """The live stream URL of an overview page read once the hub has settled: a hub just started may still
    record its own start (events, counters) after a page was read, which would be an update at the stream's
    start. Waits until a page and the stream it names agree."""

    def src_if_quiet() -> str | None:
        src = _live_src(c.get("/").text)
        return src if [e["event"] for e in _stream(c, src)] == ["ping"] else None

    found: str = wait_for(src_if_quiet, 30)
    return found


def _stream(c: httpx.Client, src: str, last_id: str | None = None) -> list[dict[str, str]]:
    """Every event of a stream, to its end."""
    headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
    with c.stream("GET", src, headers=headers, timeout=30) as r:
        return list(_events(r))


def test_a_change_between_a_page_and_its_stream_is_an_update_at_once(dash: Dash) -> None:
    """A page's stream took its baseline when it started, after the page had been read: a change in between
    (the browser still loading the page's script) was in the baseline, so the page never showed it until the
    next change. The page now names what it read (`/live?since=`), and the stream says `update` at once when
    the fleet has changed since then."""
    with dash.client("viewer") as c:
        src = _live_src(c.get("/").text)
        dash.hub.hub.store.add_event(time.time(), "test", "test.between", "hub", {})  # after the page's read
        with c.stream("GET", src, headers={"Accept": "text/event-stream"}, timeout=30) as r:
            events = _events(r)
            assert next(events)["event"] == "ping"
            assert next(events)["event"] == "update"  # not the next heartbeat (15 s) or change


def test_a_stream_in_a_later_state_tick_than_its_page_says_no_update_for_that(
    quiet: Dash, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's stamp held the 30 s state tick (b8a09a5, reverted): every stream starting in a later tick than
    its page's said `update` at once, though nothing had changed (in CI that refresh raced the dead-hub browser
    test's shutdown). Only a change of the data is an update at its start."""
    with quiet.client("admin") as c:
        src = _settled_src(c)
        monkeypatch.setattr(live, "_STATE_TICK_S", 1e12)  # the stream's tick is not the page's (and stays)
        assert [e["event"] for e in _stream(c, src)] == ["ping"]
        quiet.hub.hub.store.add_event(time.time(), "test", "test.between", "hub", {})  # a change is, still
        assert [e["event"] for e in _stream(c, src)] == ["ping", "update"]


def test_a_reconnecting_stream_starts_from_the_last_update_the_page_had(quiet: Dash) -> None:
    """A stream the browser reconnects (after `live_max_stream_s`, or a hub restart) has the page's `since`,
    read when the page loaded: with it alone, every reconnect of a page that refreshed since said `update`
    again. The browser sends the last update's id (`Last-Event-ID`), and that is what the page shows."""
    with quiet.client("admin") as c:
        src = _settled_src(c)
        quiet.hub.hub.store.add_event(time.time(), "test", "test.between", "hub", {})  # the page refreshes to it
        ping, update = _stream(c, src)
        assert (ping["event"], update["event"]) == ("ping", "update")
        assert [e["event"] for e in _stream(c, src, last_id=update["id"])] == ["ping"]
        assert [e["event"] for e in _stream(c, src)] == ["ping", "update"]  # a new EventSource: the page's stamp


def test_a_device_degraded_by_its_error_rate_says_so(dash: Dash) -> None:
    """A device degraded by its error rate alone reports no error, and its row gave no reason at all."""
    with dash.client("viewer") as c:
        page = c.get("/devices?state=degraded").text
    rows = dict(re.findall(r'<tr data-device="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == set(dash.fleet.by_state["degraded"])
    for dev, row in rows.items():
        why = re.search(r'<span class="why" title="([^"]*)">', row)
        assert why is not None, dev
        assert re.fullmatch(r"error rate [0-9.]+% in its last window \(\d+ of \d+ requests\)", why[1]), why[1]


def test_failed_logins_share_the_apis_rate_limit(dash: Dash) -> None:
    # a client address of its own (127.0.0.2), so the other tests' failures do not count
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=dash.url, transport=transport, follow_redirects=False, timeout=30) as c:
        statuses = [c.post("/login", data={"token": f"eft_guess{i}"}).status_code for i in range(30)]
        assert statuses[0] == 401
        assert statuses[-1] == 429
        r = c.post("/login", data={"token": dash.tokens["viewer"]})  # even the right token, until it refills
        assert r.status_code == 429
        assert "too many failed logins" in r.text
        assert "set-cookie" not in r.headers
        c.cookies.set(COOKIE, "eft_forged")
        assert c.get("/").status_code == 429
        r = c.get("/api/v1/devices", headers={"Authorization": "Bearer eft_guess"})
        assert r.status_code == 429  # one budget for the API and the dashboard
    with dash.client("viewer") as ok:  # other addresses are not affected
        assert ok.get("/").status_code == 200


def test_a_device_page_shows_each_of_its_models(dash: Dash) -> None:
    """A device serving a detector and a classifier: both are on its page, each with its own desired against
    reported state and its error; the device table lists both versions."""
    from fleet.messages import AppliedModel, DesiredModel, ModelStatus, ReportedState  # noqa: PLC0415

    hub = dash.hub.hub
    dev = dash.fleet.by_state["online"][0]
    desired = hub.store.get_desired(dev)
    assert desired is not None and len(desired.slots) == 1
    first = desired.slots[0].model_name
    other = "tiny-detector" if first != "tiny-detector" else "mobilenet-like"
    ref = hub.registry.model_ref(other, hub.registry.versions(other)[0].version)
    (state,) = hub.deployer.set_slot([dev], other, DesiredModel(model=ref))
    now = time.time()
    err = ErrorInfo(code="golden_mismatch", message="output differs", at=now)
    statuses = [
        ModelStatus(name=first, phase=Phase.ACTIVE, active=AppliedModel(
            name=first, version=desired.slots[0].model_version, sha256=desired.slots[0].sha256)),
        ModelStatus(name=other, phase=Phase.FAILED, error=err),
    ]  # fmt: skip
    msg = ReportedState(device_id=dev, seq=20_000, ts=now, desired_version=state.version, models=statuses)
    hub.store.enqueue_reported(msg, now)
    hub.store.flush()
    with dash.client("viewer") as c:
        page = c.get(f"/devices/{dev}").text
        assert f'data-model="{first}"' in page and f'data-model="{other}"' in page
        assert "golden_mismatch" in page and f"{other}:{ref.version}" in page
        assert f"{other}:{ref.version}" in c.get("/devices", params={"version": f"{other}:{ref.version}"}).text


def _fresh(h: RunningHub) -> Dash:
    """A hub of this test's own, seen through the dashboard as its admin."""
    return Dash(h, SeededFleet(now=time.time()), {"admin": h.admin_token}, [])


def _deploy(h: RunningHub, samples: Path, version: str, devices: dict[str, dict[str, str]], selector: str) -> None:
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json() | {"version": version}
    assert h.push_model(samples / "mobilenet-like.onnx", desc).status_code == 201
    with h.client() as c:
        for dev, labels in devices.items():
            c.post("/api/v1/devices", json={"id": dev, "labels": labels}).raise_for_status()
        body = {"model": "mobilenet-like", "version": version, "selector": selector}
        c.post("/api/v1/deployments", json=body).raise_for_status()


def test_an_empty_fleet_says_how_to_enrol(running_hub: RunningHub) -> None:
    """A fresh hub's device table says how to enrol devices, not that none matches a filter nobody set."""
    with _fresh(running_hub).client("admin") as c:
        page = c.get("/devices").text
        assert "No device enrolled yet" in page and "edgefleet device add" in page
        assert "No device matches" not in page
        running_hub.hub.devices.add("cam-1", {"site": "a"}, actor="test")
        filtered = c.get("/devices", params={"selector": "site=b"}).text
        assert "No device matches" in filtered and "No device enrolled yet" not in filtered


def test_version_links_keep_build_metadata(running_hub: RunningHub, samples: Path) -> None:
    """`1.0.0+build.7` is a version: the overview's and the models page's links to its devices list them
    (an unencoded `+` reads as a space in a query string, and the list said "No device matches")."""
    _deploy(running_hub, samples, "1.0.0+build.7", {"cam-1": {"site": "a"}, "cam-2": {"site": "a"}}, "site=a")
    with _fresh(running_hub).client("admin") as c:
        for page in ("/", "/models"):
            links = re.findall(r'href="(/devices\?version=[^"]+)"', c.get(page).text)
            assert len(links) == 1, (page, links)
            listed = c.get(html.unescape(links[0])).text
            assert 'data-matched="2"' in listed, (page, links[0])
            assert 'data-device="cam-1"' in listed and 'data-device="cam-2"' in listed


def test_device_history_names_the_models_that_changed(running_hub: RunningHub) -> None:
    """Each phase change in a device's history says which of its models moved, with the transfer's size and
    the error, once: a model that stays failed is not repeated under later changes of another model."""
    h = running_hub.hub
    with running_hub.client() as c:
        c.post("/api/v1/devices", json={"id": "cam-1", "labels": {}}).raise_for_status()
    now = time.time()
    sha = "ab" * 32
    dl = DownloadProgress(sha256=sha, have_chunks=1, total_chunks=4, bytes_done=1 << 20, bytes_total=4 << 20)
    err = ErrorInfo(code="activation_failed", message="model does not load", at=now)
    ready = AppliedModel(name="det", version="2.0.0", sha256=sha, provider="CPUExecutionProvider")
    steps = [
        [ModelStatus(name="cls", phase=Phase.DOWNLOADING, download=dl)],
        [ModelStatus(name="cls", phase=Phase.FAILED, error=err)],
        [ModelStatus(name="cls", phase=Phase.FAILED, error=err), ModelStatus(name="det", phase=Phase.DOWNLOADING)],
        [ModelStatus(name="cls", phase=Phase.FAILED, error=err),
         ModelStatus(name="det", phase=Phase.ACTIVE, active=ready)],
    ]  # fmt: skip
    for seq, models in enumerate(steps, start=1):
        h.store.enqueue_reported(ReportedState(device_id="cam-1", seq=seq, ts=now + seq, models=models), now + seq)
        h.store.flush()
    with _fresh(running_hub).client("admin") as c:
        page = c.get("/devices/cam-1").text
    timeline = page[page.index('<ol class="timeline">') : page.index("</ol>")]
    items = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", li)).strip() for li in timeline.split("<li")[1:]]
    assert len(items) == 4, items
    newest, det_downloading, cls_failed, cls_downloading = items
    assert "det" in newest and "runs 2.0.0 CPU" in newest and "cls" not in newest
    assert "det" in det_downloading and "cls" not in det_downloading
    assert "cls" in cls_failed and "activation_failed: model does not load" in cls_failed
    assert "cls" in cls_downloading and "4.0 MiB" in cls_downloading


def test_the_device_table_says_why_a_device_failed(dash: Dash) -> None:
    """The reason is in the row's text, not only in a tooltip (a phone has no hover)."""
    failed = dash.fleet.by_state["failed"][0]
    with dash.client("viewer") as c:
        body = c.get("/devices", params={"state": "failed"}).text
    row = body[body.index(f'data-device="{failed}"') :]
    row = row[: row.index("</tr>")]
    text = re.sub(r"<[^>]+>", " ", row)  # what is shown, without the attributes (titles)
    assert "golden_mismatch: golden check failed" in text


def _start_rollout(h: RunningHub, samples: Path, devices: int, until: str, **spec: Any) -> dict[str, Any]:
    """A rollout of mobilenet-like 1.0.0 -> 1.1.0 over `devices` enrolled devices that never connected (offline),
    once its state or its wave's phase is `until`; its status as the API answers it."""
    _deploy(h, samples, "1.0.0", {f"cam-{i}": {"site": "a"} for i in range(1, devices + 1)}, "site=a")
    desc = ModelDescriptor.load(samples / "mobilenet-like.yaml").to_json() | {"version": "1.1.0"}
    assert h.push_model(samples / "mobilenet-like.onnx", desc).status_code == 201
    with h.client() as c:
        body = {"model": "mobilenet-like", "version": "1.1.0", "selector": "site=a"} | spec
        r = c.post("/api/v1/rollouts", json=body)
        r.raise_for_status()
        path = f"/api/v1/rollouts/{r.json()['id']}"
        return wait_for(lambda: until in ((st := c.get(path).json())["state"], st["wave_phase"]) and st or None, 30)


def _badges(page: str) -> list[str]:
    """What each wave card's phase badge says, in order."""
    return re.findall(r'<section class="card wave-card.*?<span class="badge [^"]*">([^<]*)</span>', page, re.S)


def _cells(page: str, column: str) -> dict[str, list[str]]:
    """The `column` cell of each gate row, by gate name (one per evaluation)."""
    out: dict[str, list[str]] = {}
    for gate, row in re.findall(r'<tr class="gate-[a-z_]+-row" data-gate="([a-z_0-9]+)"(.*?)</tr>', page, re.S):
        out.setdefault(gate, []).extend(re.findall(rf'data-label="{column}">(.*?)</td>', row, re.S))
    return out


def test_a_rollout_says_which_devices_its_wave_waits_for(running_hub: RunningHub, samples: Path) -> None:
    """A wave whose devices have not updated names them with their state, and says until when it waits
    before offline ones are set aside."""
    rollout = _start_rollout(running_hub, samples, 2, "activating", waves=["100%"], offline_timeout_s=3600)
    with _fresh(running_hub).client("admin") as c:
        page = c.get(f"/rollouts/{rollout['id']}").text
    assert 'data-waiting="2"' in page
    start = page.index('class="waiting')
    waiting = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page[start : page.index("</p>", start)]))
    assert "Waiting for 2 devices to update: cam-1 · offline" in waiting and "cam-2 · offline." in waiting
    until = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(rollout["waves"][0]["started_at"] + 3600))
    assert f"Until {until} (in " in waiting
    assert "offline ones are set aside" in waiting


def test_a_waiting_wave_shows_each_devices_error_beside_it(running_hub: RunningHub, samples: Path) -> None:
    """A device that took the rollout's desired state but whose download fails (a network blip: the agent
    retries, the wave keeps waiting) is listed with its error beside its state, on the page and in the API's
    device view the CLI prints; the offline one beside it has none."""
    rollout = _start_rollout(running_hub, samples, 2, "activating", waves=["100%"], offline_timeout_s=3600)
    h = running_hub.hub
    now = time.time()
    desired = h.store.get_desired("cam-1")
    assert desired is not None
    h.store.enqueue_status(DeviceStatus(device_id="cam-1", state="online", ts=now, session="s1"), now)
    err = ErrorInfo(code="download_failed", message="chunk wants unanswered: broker unreachable", permanent=False,
                    at=now)  # fmt: skip
    models = [ModelStatus(name="mobilenet-like", phase=Phase.DOWNLOADING, error=err)]
    report = ReportedState(device_id="cam-1", seq=1, ts=now, desired_version=desired.version, models=models)
    h.store.enqueue_reported(report, now)
    h.store.flush()
    path = f"/rollouts/{rollout['id']}"
    with _fresh(running_hub).client("admin") as c:
        # the controller's next tick judges the report: "updating" (taken, not yet reported) comes first
        page = wait_for(lambda: next((p for p in [c.get(path).text] if 'data-device-error="cam-1"' in p), None), 30)
        with running_hub.client() as api:
            st = api.get(f"/api/v1/rollouts/{rollout['id']}", params={"devices": True}).json()
    start = page.index('class="waiting')
    waiting = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page[start : page.index("</p>", start)]))
    assert "cam-1 · updating download_failed: chunk wants unanswered: broker unreachable cam-2 · offline" in waiting
    assert page.count("data-device-error=") == 1 and 'data-device-error="cam-1"' in page
    assert st["state"] == "running" and st["waves"][0]["device_states"] == {"cam-1": "updating", "cam-2": "offline"}
    assert st["waves"][0]["device_errors"] == {"cam-1": "download_failed: chunk wants unanswered: broker unreachable"}
    args = ["rollout", "status", rollout["id"], "--devices", "--url", running_hub.url]
    res = CliRunner().invoke(app, [*args, "--token", running_hub.admin_token], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    # the table may wrap the error within its cell (the console's width is the one it was made with): read it
    # as words, from the device's row on
    words = " ".join(re.sub(r"[│┃]", " ", res.output[res.output.index("cam-1") :]).split())
    assert words.startswith("cam-1 updating download_failed: chunk wants unanswered: broker"), words
    assert "unreachable" in words.split("cam-2")[0], words


def test_a_device_whose_rollback_failed_is_listed_with_its_error(running_hub: RunningHub, samples: Path) -> None:
    """A rollback signs 1.0.0 again; cam-1 takes it and fails to activate it. The waiting wave's list (a running
    rollout's alone) went with the rollback, so the page named the device nowhere with its error; the API and the
    CLI called it "updating" for ever. Now the wave lists it as failed with its error, as a waiting wave does."""
    rollout = _start_rollout(running_hub, samples, 2, "activating", waves=["100%"], offline_timeout_s=3600)
    path = f"/api/v1/rollouts/{rollout['id']}"
    with running_hub.client() as api:
        api.post(f"{path}/rollback").raise_for_status()
        wait_for(lambda: api.get(path).json()["state"] == "rolled_back", 30)
    h = running_hub.hub
    now = time.time()
    desired = h.store.get_desired("cam-1")
    assert desired is not None and [s.model_version for s in desired.slots] == ["1.0.0"]
    h.store.enqueue_status(DeviceStatus(device_id="cam-1", state="online", ts=now, session="s1"), now)
    err = ErrorInfo(code="activation_failed", message="golden output outside tolerance", permanent=True, at=now)
    models = [ModelStatus(name="mobilenet-like", phase=Phase.FAILED, error=err)]
    report = ReportedState(device_id="cam-1", seq=1, ts=now, desired_version=desired.version, models=models)
    h.store.enqueue_reported(report, now)
    h.store.flush()
    with _fresh(running_hub).client("admin") as c:
        page = c.get(f"/rollouts/{rollout['id']}").text
    with running_hub.client() as api:
        st = api.get(path, params={"devices": True}).json()
    assert 'data-not-rolled-back="2"' in page, "the wave names the devices the rollback has not brought back"
    start = page.index("data-not-rolled-back")
    listed = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page[start : page.index("</p>", start)]))
    assert "cam-1 · failed activation_failed: golden output outside tolerance cam-2 · offline" in listed, listed
    assert page.count("data-device-error=") == 1 and 'data-device-error="cam-1"' in page
    assert st["waves"][0]["device_states"] == {"cam-1": "failed", "cam-2": "offline"}
    assert st["waves"][0]["device_errors"] == {"cam-1": "activation_failed: golden output outside tolerance"}
    args = ["rollout", "status", rollout["id"], "--devices", "--url", running_hub.url]
    res = CliRunner().invoke(app, [*args, "--token", running_hub.admin_token], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    words = " ".join(re.sub(r"[│┃]", " ", res.output[res.output.index("cam-1") :]).split())
    assert words.startswith("cam-1 failed activation_failed: golden output"), words


def test_waves_an_aborted_rollout_never_reached_say_so(running_hub: RunningHub, samples: Path) -> None:
    """After an abort, the waves it never started read "not run (aborted)", not "pending" as if they would still
    run; abort's question agrees with its counts ("1 device in later waves never gets it")."""
    rollout = _start_rollout(running_hub, samples, 2, "activating", waves=["1", "100%"], offline_timeout_s=3600)
    with _fresh(running_hub).client("admin") as c:
        page = c.get(f"/rollouts/{rollout['id']}").text
        asked = html.unescape(" ".join(re.findall(r'data-action="abort".*?hx-confirm="([^"]*)"', page, re.S)))
        assert "1 device in later waves never gets it." in asked, asked
        assert _badges(page) == ["activating", "pending"]
        with running_hub.client() as api:
            api.post(f"/api/v1/rollouts/{rollout['id']}/abort").raise_for_status()
        assert _badges(c.get(f"/rollouts/{rollout['id']}").text) == ["activating", "not run (aborted)"]


def test_a_failed_canary_of_one_device(running_hub: RunningHub, samples: Path) -> None:
    """A rollout of one device: the waves after the canary hold no device (the controller passes them at once)
    and say "empty" (and, in place of a gate table, that they pass at once), and so does the wave count ("Wave 1
    of 4" read as if three waves were still to run); the gate table names the phase each gate was evaluated in;
    the overview's event list says which gate failed and why in words, not as JSON; the reason names the wave
    in words ("canary, 1 device", not "(1)")."""
    rollout = _start_rollout(running_hub, samples, 1, "paused", offline_timeout_s=0.5)  # waves 1,10%,50%,100%
    with _fresh(running_hub).client("admin") as c:
        page = c.get(f"/rollouts/{rollout['id']}").text
        overview = c.get("/").text
        listed = c.get("/rollouts").text
    assert _badges(page) == ["failed", "empty", "empty", "empty"]
    cards = page.split('<section class="card wave-card')[1:]
    assert all("No devices: passes at once when its turn comes." in card for card in cards[1:]), cards[1:]
    assert not any("No gate evaluated yet" in card for card in cards)
    reason = html.unescape(page)
    assert "wave 1 of 4 (canary, 1 device) failed: availability: 0 of 1 device(s) ready" in reason
    assert '<span class="k">Wave</span><span>1 of 4 (3 empty) · ' in page
    assert 'data-label="Wave">1 of 4 (3 empty) <span' in overview
    assert 'data-label="Wave">1 of 4 (3 empty) <span' in listed
    assert _cells(page, "Phase") == {"activation": ["activating"], "availability": ["activating"]}
    row = next(r for r in overview.split("<tr") if "rollout.gate_failed" in r)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row[row.index("<td") :])))
    assert "gates=availability fail: 0 of 1 device(s) ready; 1 offline set aside" in text, text
    assert "{" not in html.unescape(row), row  # neither in the text nor in its tooltip


def test_gates_name_the_phase_they_were_evaluated_in(dash: Dash) -> None:
    """Error rate and p95 are judged after the bake, not while the wave activates."""
    with dash.client("viewer") as c:
        page = c.get(f"/rollouts/{dash.rollouts[0]}").text
    phases = {gate: set(cells) for gate, cells in _cells(page, "Phase").items()}
    assert phases == {"activation": {"activating"}, "availability": {"activating"}, "error_rate": {"baking"},
                      "p95_latency": {"baking"}}  # fmt: skip


def _event_rows(page: str) -> dict[str, list[str]]:
    """The text of each row of a page's event list, by action."""
    table = page[page.index('<table class="dense events') :]
    table = table[: table.index("</table>")]
    out: dict[str, list[str]] = {}
    for row in table.split("<tr")[2:]:  # past the header
        action = re.search(r'data-label="Action"><span class="tag">([^<]*)<', row)
        assert action is not None, row
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", "<tr" + row))).strip()
        out.setdefault(action[1], []).append(text)
    return out


def test_the_overview_lists_every_operator_action(running_hub: RunningHub, samples: Path) -> None:
    """Revoking or rekeying a device, undeploying a model and revoking a token are on the overview's recent
    events beside deploys and enrolments, each with its details in words."""
    _deploy(running_hub, samples, "1.0.0", {"cam-1": {"site": "a"}, "cam-2": {"site": "a"}}, "site=a")
    with running_hub.client() as c:
        c.delete("/api/v1/deployments/mobilenet-like", params={"selector": "site=a"}).raise_for_status()
        c.post("/api/v1/devices/cam-1/revoke").raise_for_status()
        c.post("/api/v1/devices/cam-1/rekey").raise_for_status()  # admitted again
        c.post("/api/v1/devices/cam-2/rekey").raise_for_status()
        made = c.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"})
        made.raise_for_status()
        token_id = next(t["id"] for t in c.get("/api/v1/tokens").json() if t["name"] == "ci")
        c.delete(f"/api/v1/tokens/{token_id}").raise_for_status()
    with _fresh(running_hub).client("admin") as c:
        rows = _event_rows(c.get("/").text)
    for action in ("deploy", "undeploy", "device.add", "device.revoke", "device.rekey", "token.create", "token.revoke"):
        assert action in rows, (action, sorted(rows))
    assert any("device/cam-1" in r for r in rows["device.revoke"]), rows["device.revoke"]
    rekeys = sorted(rows["device.rekey"])
    assert any("device/cam-1" in r and "readmitted=yes" in r for r in rekeys), rekeys
    assert any("device/cam-2" in r and "readmitted=no" in r for r in rekeys), rekeys
    assert any("selector=site=a" in r and "2 devices" in r for r in rows["undeploy"]), rows["undeploy"]
    assert any(f"token/{token_id}" in r for r in rows["token.revoke"]), rows["token.revoke"]


def test_an_empty_wave_that_passed_says_so(dash: Dash) -> None:
    """A wave left empty by rounding ("5%" of a small fleet) passed without devices or gates: it says so, not
    "No gate evaluated yet" as if gates were still to come."""
    with dash.client("viewer") as c:
        page = c.get(f"/rollouts/{dash.rollouts[1]}").text
    cards = page.split('<section class="card wave-card')[1:]
    assert _badges(page) == ["passed", "empty", "passed"]
    assert "No devices: passed at once." in cards[1] and "No gate evaluated yet" not in page


def test_the_seeded_gate_failure_reads_as_the_controllers(dash: Dash) -> None:
    """The seeded rollout's gate failure is in the controller's format (`wave` and the failed `gates`, which the
    event list shows in words), and its reason names the wave as the controller does."""
    with dash.hub.client() as api:
        params = {"action": "rollout.gate_failed", "subject": f"rollout/{dash.rollouts[0]}"}
        (event,) = api.get("/api/v1/events", params=params).json()
    with dash.client("viewer") as c:
        page = html.unescape(c.get(f"/rollouts/{dash.rollouts[0]}").text)
    assert set(event["details"]) == {"wave", "gates"} and event["details"]["wave"] == 3
    said = detail(event["details"]["gates"])
    assert said == "p95_latency fail: p95 17.10 ms vs control 12.80 ms: +33.6% (over 20%)", said
    with dash.hub.client() as api:
        waves = api.get(f"/api/v1/rollouts/{dash.rollouts[0]}").json()["waves"]
    n, upto, total = waves[2]["devices"], waves[2]["cumulative"], waves[-1]["cumulative"]
    assert upto == sum(w["devices"] for w in waves[:3]) and total == sum(w["devices"] for w in waves)
    # a wave's size is cumulative and its device count its own: said so ("50%, 17 devices" read as 17 = 50%)
    assert f"wave 3 of 4 ({n} devices; cumulative 50%: {upto} of {total}) failed: p95_latency: p95 17.10" in page
    assert f'Wave 3 <span class="muted" data-wave-size>· {n} devices · cumulative 50%: {upto} of {total}<' in page
    assert 'Wave 1 <span class="muted" data-wave-size>· 1 device</span>' in page  # the canary: its own alone

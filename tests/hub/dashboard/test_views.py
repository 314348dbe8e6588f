"""The dashboard's data assembly against the seeded hub (no HTTP)."""

from __future__ import annotations

import time
from dataclasses import replace

from hub.dashboard.views import DeviceQuery, device_page, fleet_rows, overview, traffic
from hub.registry import version_key
from tests.hub.dashboard.conftest import DEVICES, Dash
from tests.support.hub import RunningHub


def test_desired_heads_match_the_full_records(dash: Dash) -> None:
    store = dash.hub.hub.store
    full = store.list_desired()
    heads = store.list_desired_heads()
    assert len(heads) == len(full) > 0
    for h, f in zip(heads, full, strict=True):
        assert h == replace(f, envelope="")


def test_overview_counts_and_versions(dash: Dash) -> None:
    o = overview(dash.hub.hub)
    assert o.total == DEVICES
    assert sum(o.counts.values()) == DEVICES
    assert list(o.versions) == ["mobilenet-like", "tiny-detector"]
    assert [v.version for v in o.versions["tiny-detector"]] == ["0.5.0-rc.1", "0.4.0"]  # newest first
    assert [r.id for r in o.rollouts] == [dash.rollouts[0]]  # the completed one is not active
    assert all(e.action != "device.phase" for e in o.events)


def test_the_overview_shows_what_the_hub_did_about_its_own_faults(running_hub: RunningHub) -> None:
    hub = running_hub.hub
    sha = "ab" * 32
    before = [e.action for e in overview(hub).events]  # the admin token made at init
    hub.store.add_event(time.time(), "hub", "blob.corrupt", f"blob/{sha}", {"detail": "chunk 3 of 7"})
    hub.store.add_event(time.time(), "hub-b", "hub.session.adopted", "hub-a", {"messages": 12})
    assert [e.action for e in overview(hub).events] == ["hub.session.adopted", "blob.corrupt", *before]


def test_traffic_sums_the_hour_inside_the_day(dash: Dash) -> None:
    t = traffic(dash.hub.hub)
    assert 0 < t.hour.requests < t.day.requests
    assert t.hour.p95_ms is not None
    assert t.day.error_rate is not None
    assert 0 < t.day.error_rate < 0.05


def test_device_page_sorts_and_pages_stably(dash: Dash) -> None:
    rows = fleet_rows(dash.hub.hub)
    page1 = device_page(rows, DeviceQuery(sort="state"), 25)
    page2 = device_page(rows, DeviceQuery(sort="state", page=2), 25)
    page3 = device_page(rows, DeviceQuery(sort="state", page=3), 25)
    ids = [r.id for p in (page1, page2, page3) for r in p.rows]
    assert len(ids) == len(set(ids)) == DEVICES
    assert page1.rows[0].state == "failed"  # worst first
    assert (page3.first, page3.last, page3.pages) == (51, DEVICES, 3)
    empty = device_page(rows, DeviceQuery(selector="site=nowhere"), 25)
    assert (empty.matched, empty.first, empty.last, empty.pages) == (0, 0, 0, 1)


def test_version_order() -> None:
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9", "garbage"]
    assert sorted(versions, key=version_key, reverse=True) == ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9", "garbage"]

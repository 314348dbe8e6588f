"""The dashboard's data assembly against the seeded hub (no HTTP)."""

from __future__ import annotations

import ast
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import get_args

import hub
from hub.dashboard.views import (
    NOT_ON_OVERVIEW,
    OPERATOR_ACTIONS,
    DeviceQuery,
    device_page,
    fleet_rows,
    overview,
    traffic,
)
from hub.registry import version_key
from hub.rollouts.controller import Command
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


_ACTION = re.compile(r"^[a-z_]+(\.[a-z_]+)*$")
_SQL_EVENT = re.compile(r"INSERT INTO events \(ts, actor, action, subject, details\) VALUES \(\?, \?, (.+?), \?, \?\)")


def _str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _names(node: ast.AST) -> list[str] | None:
    """The action names an expression can take: a constant, either branch of `a if c else b`, and the rollout
    commands' `f"rollout.{action}"`; None when it cannot tell."""
    if (name := _str(node)) is not None:
        return [name]
    if isinstance(node, ast.IfExp) and (body := _names(node.body)) is not None:
        other = _names(node.orelse)
        return None if other is None else body + other
    if isinstance(node, ast.JoinedStr) and ast.unparse(node) == "f'rollout.{action}'":
        return [f"rollout.{command}" for command in get_args(Command)]
    return None


def _recorded_actions() -> dict[str, str]:
    """Every audit action the hub's code can record, read from its source (action -> where): the constant action
    of each `add_event` / `audit.record` call and each SQL insert into `events`, and the rollout engine's
    `(action, details)` events. A call whose action is not a constant it can read is named, not skipped."""
    found: dict[str, str] = {}
    unreadable: list[str] = []
    root = Path(hub.__file__).parent
    for path in sorted(root.rglob("*.py")):
        where = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            at = f"{where}:{getattr(node, 'lineno', 0)}"
            action: ast.AST | None = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                audit = ast.unparse(node.func.value).endswith("audit")
                if node.func.attr == "add_event" and len(node.args) >= 3:
                    action = node.args[2]
                elif node.func.attr == "record" and audit and len(node.args) >= 2:
                    action = node.args[1]
            if isinstance(node, ast.Call) and node.args and ast.unparse(node.args[0]).endswith("audit.record"):
                action = node.args[2]  # handed to a thread: run_in_threadpool(self.audit.record, actor, action, ...)
            elif (text := _str(node)) is not None and (sql := _SQL_EVENT.search(text)):
                if sql.group(1) != "?":  # a literal action in the statement; "?" takes it from a caller seen here
                    found[sql.group(1).strip("'")] = at
            elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and "rollouts" in path.parts:
                first = node.elts[0]  # the rollout engine's (action, details) events
                if (_str(first) or ast.unparse(first)).lstrip("f'").startswith("rollout."):
                    action = first
            if action is None:
                continue
            if (names := _names(action)) is not None:
                found.update(dict.fromkeys(names, at))
            elif ast.unparse(action) != "action":  # `action` is a parameter passed on (AuditLog, the store, _save)
                unreadable.append(f"{at}: {ast.unparse(action)}")
    assert not unreadable, f"audit actions this test cannot read: {unreadable}: teach it, or make them constants"
    return found


def test_every_audit_action_is_on_the_overview_or_left_out_on_purpose() -> None:
    recorded = _recorded_actions()
    assert {"deploy", "api.call", "device.phase", "rollout.pause", "rollout.wave_started"} <= set(recorded)
    assert all(_ACTION.match(a) for a in recorded), recorded
    undecided = {a: at for a, at in recorded.items() if a not in OPERATOR_ACTIONS and a not in NOT_ON_OVERVIEW}
    assert not undecided, f"add each to OPERATOR_ACTIONS or NOT_ON_OVERVIEW (hub/dashboard/views.py): {undecided}"
    assert not set(OPERATOR_ACTIONS) & NOT_ON_OVERVIEW
    stale = (set(OPERATOR_ACTIONS) | NOT_ON_OVERVIEW) - set(recorded)
    assert not stale, f"listed but recorded nowhere: {stale}"

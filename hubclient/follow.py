"""A rollout's status as people read it (tables that fit the terminal, waves counted from 1), following one
until it needs nobody (`rollout status --watch`, `rollout start --wait`), and the words of a confirmation.

Exit codes of a followed rollout: 0 completed, 1 failed (rolled back or aborted), 2 paused (a person must
decide), 3 the hub stopped answering while we followed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from hubclient.errors import ClientError
from hubclient.tables import Col, fit, plural

COMPLETED, FAILED, PAUSED, LOST = 0, 1, 2, 3
OUTCOMES = {"completed": COMPLETED, "rolled_back": FAILED, "aborted": FAILED, "paused": PAUSED}


def _ts(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S")


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def wave_label(res: dict[str, Any]) -> str:
    """`wave 2 of 4 (baking)`: the wave in progress, counted from 1."""
    n, total = min(int(res["wave"]) + 1, int(res["wave_count"])), int(res["wave_count"])
    phase = (res.get("wave_phase") or "").replace("_", " ")
    return f"wave {n} of {total}" + (f" ({phase})" if phase else "")


def progress(res: dict[str, Any]) -> str:
    """`17/42 on mobilenet-like:1.2.0`, or back on their previous version while rolling back."""
    totals, devices = res.get("totals") or {}, int(res["devices"])
    if res["state"] in ("rolling_back", "rolled_back"):
        return f"{totals.get('rolled_back', 0)}/{devices} back on their previous version"
    return f"{totals.get('active', 0)}/{devices} on {res['model']}:{res['version']}"


def headline(res: dict[str, Any]) -> str:
    """One line: id, ref, state, wave, progress (what `--watch` prints when it is not a terminal)."""
    return f"{res['id']} {res['model']}:{res['version']} {res['state']}, {wave_label(res)}, {progress(res)}"


def _cumulative(w: dict[str, Any], total: int) -> str:
    """A wave's size as given, which is cumulative, with the devices it stands for: `50%: 21 of 42`, `20 of 42`."""
    return (f"{w['size']}: " if w["size"].endswith("%") else "") + f"{w['cumulative']} of {total}"


def status_view(res: dict[str, Any]) -> RenderableType:
    """The status with its waves and gates, as tables that keep refs, gate names and numbers whole."""
    parts: list[RenderableType] = [
        Text.from_markup(
            f"{res['id']}  {escape(res['model'])}:{escape(res['version'])}  selector "
            f"{escape(res['selector'])}  [bold]{res['state']}[/bold]  {wave_label(res)}"
        ),
        Text(progress(res)),
    ]
    if res.get("reason"):
        parts.append(Text(f"reason: {res['reason']}"))
    if res.get("note"):
        parts.append(Text(f"operator note: {res['note']}"))
    total = res["waves"][-1]["cumulative"] if res["waves"] else 0
    cols = [Col("wave", 9, justify="right"), Col("devices", 5, justify="right"), Col("cumulative", 6, whole=True),
            Col("phase", 8, whole=True), Col("states", 4), Col("started", 3), Col("bake until", 2),
            Col("finished", 1)]  # fmt: skip
    rows = [
        [str(w["index"] + 1), str(w["devices"]), _cumulative(w, total), w["phase"].replace("_", " "),
         ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in w["counts"].items() if v) or "-",
         _ts(w["started_at"]), _ts(w["bake_until"]), _ts(w["finished_at"])]
        for w in res["waves"]
    ]  # fmt: skip
    parts.append(fit(cols, rows))
    gates = [(w, g) for w in res["waves"] for g in w["gates"]]
    if gates:
        cols = [Col("wave", 9, justify="right"), Col("gate", 9, whole=True), Col("result", 9, whole=True),
                Col("value", 7, whole=True, justify="right"), Col("limit", 6, whole=True, justify="right"),
                Col("phase", 3), Col("detail", 5)]  # fmt: skip
        rows = [
            [str(w["index"] + 1), g["name"], g["status"], _num(g["value"]), _num(g["threshold"]), g["phase"],
             g["detail"]]
            for w, g in gates
        ]  # fmt: skip
        parts.append(fit(cols, rows))
    return Group(*parts)


def confirmation(action: str, res: dict[str, Any]) -> str:
    """What abort or rollback would do to how many devices (asked before it is sent)."""
    ref = f"{res['model']}:{res['version']}"
    totals = res.get("totals") or {}
    if action == "abort":
        return (f"Abort {res['id']}? It stops where it stands and signs nothing: "
                f"{plural(totals.get('active', 0), 'device')} keep {ref}, "
                f"{plural(totals.get('updating', 0), 'device')} finish what they were sent, "
                f"{plural(totals.get('pending', 0), 'device')} in later waves never get it.")  # fmt: skip
    back = ", ".join(f"{r} to {plural(n, 'device')}" for r, n in (res.get("rollback_to") or {}).items())
    return (f"Roll back {res['id']}? The version each device ran before is signed again for "
            f"{plural(int(res.get('changed_devices', 0)), 'device')} ({back or 'nothing to re-sign'}).")  # fmt: skip


def follow(fetch: Callable[[], dict[str, Any]], console: Console, interval: float) -> tuple[int, dict[str, Any]]:
    """Poll the status until the rollout needs nobody; a live table on a terminal, a line per change otherwise.

    Returns the exit code (see the module) and the last status. A hub that stops answering ends it with LOST.
    """
    last_line = ""
    res: dict[str, Any] = {}
    live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else None
    try:
        if live is not None:
            live.start()
        while True:
            try:
                res = fetch()
            except ClientError as e:
                console.print(f"[red]error[/red] ({e.code}): stopped following: {escape(e.message)}")
                return LOST, res
            if live is not None:
                live.update(status_view(res), refresh=True)
            else:
                line = headline(res)
                if line != last_line:
                    console.print(f"{_ts(time.time())} {line}")
                    last_line = line
            outcome = OUTCOMES.get(res["state"])
            if outcome is not None:
                return outcome, res
            time.sleep(interval)
    finally:
        if live is not None:
            live.stop()

"""Times as people read them, worded the same on the dashboard and in the CLI: `12 s ago`, `in 4 min`.

One wording for both faces of the hub (the dashboard renders with it, the `edgefleet` CLI prints its tables
with it), so an operator reads the same words in a browser and in a terminal. Pure: no clock unless `now`
is left out.
"""

from __future__ import annotations

import time


def span(seconds: float) -> str:
    """A duration rounded down to its largest unit: `12 s`, `4 min`, `3 h`, `2 d`."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def ago(ts: float | None, now: float | None = None) -> str:
    """`12 s ago`, `4 min ago`, `3 h ago`, `2 d ago`; `just now` under a second (or a clock ahead of ours);
    `never` for None."""
    if ts is None:
        return "never"
    dt = (time.time() if now is None else now) - ts
    return "just now" if dt < 1 else span(dt) + " ago"


def until(ts: float, now: float | None = None) -> str:
    """`in 12 s`, `in 4 min`, ...; `now` once it passed."""
    dt = ts - (time.time() if now is None else now)
    return "now" if dt < 1 else "in " + span(dt)

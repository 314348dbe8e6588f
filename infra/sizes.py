"""Byte counts as an operator reads them in an error or a CLI line: the one format the hub and the agent share.

The dashboard shows sizes with a unit that fits (`hub.dashboard.render.size`: `12.3 MiB`, `840 KiB`); error
messages and CLI summaries compare sizes with each other (needed, free, budget), so they keep one unit.
"""

from __future__ import annotations

MIB = 1 << 20


def mib(n: float) -> str:
    """Bytes as MiB with one decimal: `12.3 MiB`."""
    return f"{n / MIB:.1f} MiB"

"""Tables that fit the terminal without cutting what matters: model refs, versions and ids are never shortened.

A table declares its columns with a priority. When the terminal is too narrow for every column at its smallest,
the least useful columns go first; then the columns that may wrap are folded onto several lines, and the ones
marked `whole` (a model ref, a version, a device id, a gate name) keep their full width on one line.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table

_MIN_WRAPPED = 8  # narrowest a wrapping column is squeezed to
_PER_COLUMN = 3  # a rich box column: one rule and a space of padding on each side
_EDGE = 1  # the last rule


@dataclass(frozen=True)
class Col:
    """One column: its header, whether its values must stay whole, and how long it stays when space runs out."""

    header: str
    keep: int = 1  # columns with the lowest `keep` are dropped first; 9: never dropped
    whole: bool = False  # never cut or wrapped (refs, versions, ids)
    justify: Literal["left", "right"] = "left"


def terminal_width() -> int:
    """The terminal's width now (`COLUMNS` when set, as for a pipe or a test)."""
    return shutil.get_terminal_size((100, 24)).columns


def _need(col: Col, values: Sequence[str]) -> int:
    longest = max((len(line) for v in values for line in (v.splitlines() or [""])), default=0)
    longest = max(longest, len(col.header))
    return longest if col.whole else min(longest, _MIN_WRAPPED)


def fit(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None = None, **table: object) -> Table:
    """A rich Table of `rows` under `cols` that fits `width` (default: the terminal) as described above."""
    width = terminal_width() if width is None else width
    keep = list(range(len(cols)))
    needs = [_need(c, [r[i] for r in rows]) for i, c in enumerate(cols)]

    def total(idx: list[int]) -> int:
        return sum(needs[i] for i in idx) + _PER_COLUMN * len(idx) + _EDGE

    for i in sorted(range(len(cols)), key=lambda k: (cols[k].keep, -k)):
        if total(keep) <= width or cols[i].keep >= 9:
            continue
        keep.remove(i)
    out = Table(**table)  # type: ignore[arg-type]
    for i in keep:
        c = cols[i]
        if c.whole:
            out.add_column(c.header, justify=c.justify, no_wrap=True, min_width=needs[i])
        else:
            out.add_column(c.header, justify=c.justify, overflow="fold")
    for r in rows:
        out.add_row(*(r[i] for i in keep))
    return out


def plural(n: int, what: str) -> str:
    """`1 device`, `3 devices`: a number and its noun (plural with an s)."""
    return f"{n} {what}{'' if n == 1 else 's'}"

"""Outcomes the security and fault suites record, printed as one table at the end of the run.

Each test calls `record(suite, klass, outcome, count, lost)`: for example ("attack", "replayed desired
state", "refused", 1, 0) or ("fault", "broker restart mid-transfer", "recovered", 1, 0). tests/conftest.py
calls `print_table` from `pytest_terminal_summary`, so every run that recorded something ends with the table. In a
parallel run each worker hands its rows to the controller (`export`, then `merge` there), which prints one table.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

_rows: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])


def record(suite: str, klass: str, outcome: str, count: int = 1, lost: int = 0) -> None:
    """Add `count` inputs or faults of `klass` that ended in `outcome` ("refused", "recovered", "clamped": taken with
    out-of-bounds values set back to the bound)."""
    row = _rows[(suite, klass, outcome)]
    row[0] += count
    row[1] += lost


def export() -> list[tuple[str, str, str, int, int]]:
    """This process's rows as plain tuples (a pytest-xdist worker sends them to the controller)."""
    return [(suite, klass, outcome, count, lost) for (suite, klass, outcome), (count, lost) in _rows.items()]


def merge(rows: list[tuple[str, str, str, int, int]]) -> None:
    """Add the rows another process exported."""
    for suite, klass, outcome, count, lost in rows:
        record(suite, klass, outcome, count, lost)


def print_table(terminalreporter: Any) -> None:
    """Write the table (nothing when no test recorded an outcome)."""
    if not _rows:
        return
    tr = terminalreporter
    tr.section("security and fault outcomes")
    width = max(len(k[1]) for k in _rows) + 2
    tr.write_line(f"{'suite':<8} {'fault or input class':<{width}} {'outcome':<10} {'count':>7} {'lost':>5}")
    total_lost = 0
    for (suite, klass, outcome), (count, lost) in sorted(_rows.items()):
        total_lost += lost
        tr.write_line(f"{suite:<8} {klass:<{width}} {outcome:<10} {count:>7} {lost:>5}")
    totals: defaultdict[str, int] = defaultdict(int)
    for (_s, _k, outcome), (count, _l) in _rows.items():
        totals[outcome] += count
    summary = ", ".join(f"{o}: {n}" for o, n in sorted(totals.items()))
    tr.write_line(f"total: {summary}; lost: {total_lost}")

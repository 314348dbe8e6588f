"""Jinja2 templates (autoescaped) and the filters the pages use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

from infra.timefmt import ago, until

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def utc(ts: float | None) -> str:
    """`2026-12-01 06:00:25Z`, or an em dash for None."""
    if ts is None:
        return "\u2014"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def hms(ts: float | None) -> str:
    """`06:00:25Z` (the time of day only)."""
    return "\u2014" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


def size(n: int | None) -> str:
    """Bytes as `12.3 MiB`."""
    if n is None:
        return "\u2014"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def num(v: float | None, digits: int = 1) -> str:
    """A number with thousands separators, or an em dash."""
    if v is None:
        return "\u2014"
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def pct(v: float | None, digits: int = 2) -> str:
    """A ratio as a percentage."""
    return "\u2014" if v is None else f"{v * 100:.{digits}f} %"


def bar(part: int, whole: int) -> str:
    """A CSS class `w-N` (N in 0..100) for a bar of part/whole (no inline styles under our CSP)."""
    return f"w-{round(100 * part / whole) if whole else 0}"


def qs(params: dict[str, str]) -> str:
    """A query string (with the leading `?`), or an empty string."""
    return "?" + urlencode(params) if params else ""


def tojson_compact(value: Any) -> str:
    """JSON for data attributes (autoescaped by the template)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def detail(value: Any) -> str:
    """An event detail as text: a string as is, a flag as `yes` / `no`, a mapping as `a=1,b=2`, a gate result as
    `name status: why` (a list of them joined by `; `), anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        if "name" in value and "status" in value:
            return f"{value['name']} {value['status']}: {value.get('detail', '')}"
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return "; ".join(detail(v) for v in value)
    return tojson_compact(value)


def environment() -> Environment:
    """The template environment."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True), undefined=ChainableUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.filters.update(
        ago=ago, until=until, utc=utc, hms=hms, size=size, num=num, pct=pct, qs=qs, j=tojson_compact, detail=detail
    )
    env.globals.update(bar=bar)
    return env

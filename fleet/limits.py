"""Numeric ranges shared by every wire message, chosen to fit where the numbers go.

A device is a trust boundary: every number it sends ends up in a SQLite INTEGER (signed 64-bit), a REAL,
a sum over many rows, a `datetime`, a dashboard's JavaScript number or a float32 tensor. Each alias below
names one kind of number once, with the range that keeps every one of those places working:

- `Seq`, `Version`, `Bytes`: at most 2**53, the largest integer JSON consumers (JavaScript) hold exactly,
  and far inside SQLite's 2**63 - 1.
- `Count`: events in one telemetry window or things on one device; at most 2**32 - 1, so that sums over
  two billion rows still fit a signed 64-bit integer (SQLite's `sum()` raises on overflow).
- `Timestamp`: Unix seconds a `datetime` can show (before year 10000). How far ahead of the hub's clock a
  device may be is checked on the hub (`CLOCK_SKEW_S`), where there is a clock.
- `Millis`, `Percent`: finite floats in plain ranges.
- `JsonObject`: free-form JSON (a model description, a command's result) at most `MAX_JSON_DEPTH` deep,
  with finite numbers and integers inside SQLite's range, so every later `json.dumps`, canonical signing
  or recursive walk over it works.

Non-finite floats (NaN, Infinity) are refused by every message (`allow_inf_nan=False` on the base models).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field

MAX_SQL_INT = 2**63 - 1
"""The largest SQLite INTEGER."""
MAX_JSON_INT = 2**53
"""The largest integer every JSON consumer holds exactly (JavaScript's Number)."""
MAX_COUNT = 2**32 - 1
"""The largest per-window count: 2**31 such rows still sum inside MAX_SQL_INT."""
MAX_TIMESTAMP = 253402300799.0
"""9999-12-31T23:59:59Z, the last second `datetime` can represent."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: larger values would turn into infinity in a float32 tensor."""
MAX_JSON_DEPTH = 32
"""How deeply free-form JSON (`JsonObject`) may nest."""
CLOCK_SKEW_S = 300.0
"""How far ahead of the hub's clock a device's timestamps may be: a telemetry window ending later is refused, a
status's or report's later stamps are set back to this bound (`hub.ingest.clamped`)."""

Seq = Annotated[int, Field(ge=0, le=MAX_JSON_INT, description="sequence number")]
Version = Annotated[int, Field(ge=1, le=MAX_JSON_INT, description="monotonic version counter")]
Bytes = Annotated[int, Field(ge=0, le=MAX_JSON_INT, description="a size in bytes")]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, description="a count")]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, description="Unix time, seconds")]
Millis = Annotated[float, Field(ge=0, le=1e12, description="milliseconds")]
SignedMillis = Annotated[float, Field(ge=-1e12, le=1e12, description="a difference in milliseconds")]
Percent = Annotated[float, Field(ge=0, le=100, description="percent")]


def is_finite_float32(value: Any) -> bool:
    """True when `value` is a number a float32 holds without becoming infinite or NaN."""
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(f) and abs(f) <= FLOAT32_MAX


def too_far_ahead(ts: float | None, now: float, skew_s: float = CLOCK_SKEW_S) -> bool:
    """True when a device's timestamp `ts` lies more than `skew_s` after the hub's clock `now`."""
    return ts is not None and ts > now + skew_s


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH, where: str = "value") -> Any:
    """Return `value` if it is JSON at most `max_depth` deep with finite numbers and SQLite-sized integers.

    Valid values (nearly all) are walked without building a path for every element (that took 40 % of
    signing a desired state); an invalid one is walked again to name the offending path.

    Raises:
        ValueError: naming the first offending path.
    """
    if _is_json(value, max_depth):
        return value
    _explain(value, max_depth, where)
    raise ValueError(f"{where}: not a JSON value")  # unreachable: _explain raises for whatever _is_json refused


def _is_json(item: Any, max_depth: int, depth: int = 0) -> bool:
    """The test of `check_json`, without paths (recursion is bounded: nothing deeper than `max_depth` is entered)."""
    kind = type(item)
    if kind is str or kind is bool or item is None:
        return True
    if kind is int:
        return bool(-MAX_SQL_INT - 1 <= item <= MAX_SQL_INT)
    if kind is float:
        return math.isfinite(item)
    if isinstance(item, dict | list):
        if depth >= max_depth:
            return False
        for v in item.values() if isinstance(item, dict) else item:
            if type(v) is not str and not _is_json(v, max_depth, depth + 1):
                return False
        return True
    if isinstance(item, bool | str):
        return True
    if isinstance(item, int):
        return -MAX_SQL_INT - 1 <= item <= MAX_SQL_INT
    if isinstance(item, float):
        return math.isfinite(item)
    return False


def _explain(value: Any, max_depth: int, where: str) -> None:
    """Raise ValueError naming the first path of `value` that `_is_json` refuses."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise ValueError(f"{path}: nested deeper than {max_depth} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in pairs)
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not -MAX_SQL_INT - 1 <= item <= MAX_SQL_INT:
                raise ValueError(f"{path}: integer {str(item)[:40]} is outside the signed 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path}: {item} is not a finite number")
        else:
            raise ValueError(f"{path}: {type(item).__name__} is not a JSON value")


JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]
"""A free-form JSON object, bounded in depth, with finite numbers (see `check_json`)."""

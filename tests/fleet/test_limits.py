"""`fleet.limits.check_json`: what it accepts, and the path it names for what it refuses."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from fleet.limits import MAX_SQL_INT, check_json


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, True, None, "s", {"b": -MAX_SQL_INT - 1}], "c": MAX_SQL_INT},
        OrderedDict(x=[OrderedDict(y=1)]),  # subclasses of dict and list are JSON objects and arrays
        nested(32),
        [],
        "plain",
    ],
)
def test_json_values_are_returned_as_they_are(value: Any) -> None:
    assert check_json(value) is value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, {"b": float("nan")}]}, "doc.a.1.b: nan is not a finite number"),
        ({"a": [MAX_SQL_INT + 1]}, "doc.a.0: integer 9223372036854775808 is outside the signed 64-bit range"),
        ({"ok": 1, "bad": {1, 2}}, "doc.bad: set is not a JSON value"),
        ([b"bytes"], "doc.0: bytes is not a JSON value"),
        (nested(33), "nested deeper than 32 levels"),
        ({"a": float("-inf")}, "doc.a: -inf is not a finite number"),
    ],
)
def test_what_is_refused_is_named_by_its_path(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.") if message.startswith("doc") else message):
        check_json(value, where="doc")

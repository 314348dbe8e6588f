"""Label and field selectors as the Kubernetes API server parses them (the subset clients send)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]
LabelTest = Callable[[dict[str, str]], bool]

_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
FIELDS = {"metadata.name", "metadata.namespace"}


class SelectorError(ValueError):
    """A selector the server refuses (answered as 400 BadRequest)."""


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def label_selector(text: str | None) -> Predicate:
    """A predicate over objects for `labelSelector` (=, ==, !=, in, notin, exists, !exists)."""
    if not text:
        return lambda obj: True
    tests: list[LabelTest] = []
    for term in _split(text):
        eq = _EQ.match(term)
        if eq:
            key, op, value = eq.groups()
            tests.append(_label_differs(key, value) if op == "!=" else _label_equals(key, value))
            continue
        st = _SET.match(term)
        if not st:
            raise SelectorError(f"unable to parse requirement: {term!r}")
        negate, key, op, values = st.groups()
        if op:
            if negate:
                raise SelectorError(f"unable to parse requirement: {term!r}")
            options = {v.strip() for v in values.split(",") if v.strip()}
            tests.append(_label_in(key, options) if op == "in" else _label_not_in(key, options))
        elif negate:
            tests.append(_label_missing(key))
        else:
            tests.append(_label_exists(key))

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(t(labels) for t in tests)

    return matches


def field_selector(text: str | None) -> Predicate:
    """A predicate for `fieldSelector` on metadata.name / metadata.namespace (=, ==, !=)."""
    if not text:
        return lambda obj: True
    tests: list[Predicate] = []
    for term in _split(text):
        eq = _EQ.match(term)
        if not eq:
            raise SelectorError(f"invalid field selector: {term!r}")
        field, op, value = eq.groups()
        if field not in FIELDS:
            raise SelectorError(f'field label not supported: "{field}"')
        attr = field.split(".", 1)[1]
        tests.append(_field_differs(attr, value) if op == "!=" else _field_equals(attr, value))
    return lambda obj: all(t(obj) for t in tests)


# one requirement each (a function per requirement binds its own key and value, as a loop's lambda would not)
def _label_equals(key: str, value: str) -> LabelTest:
    return lambda labels: labels.get(key) == value


def _label_differs(key: str, value: str) -> LabelTest:
    return lambda labels: labels.get(key) != value


def _label_in(key: str, options: set[str]) -> LabelTest:
    return lambda labels: labels.get(key) in options


def _label_not_in(key: str, options: set[str]) -> LabelTest:
    return lambda labels: labels.get(key) not in options


def _label_exists(key: str) -> LabelTest:
    return lambda labels: key in labels


def _label_missing(key: str) -> LabelTest:
    return lambda labels: key not in labels


def _field_equals(attr: str, value: str) -> Predicate:
    return lambda obj: obj["metadata"].get(attr, "") == value


def _field_differs(attr: str, value: str) -> Predicate:
    return lambda obj: obj["metadata"].get(attr, "") != value

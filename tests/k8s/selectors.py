"""Label and field selectors as the Kubernetes API server parses them (the subset clients send)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

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
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split(text):
        eq = _EQ.match(term)
        if eq:
            key, op, value = eq.groups()
            if op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        st = _SET.match(term)
        if not st:
            raise SelectorError(f"unable to parse requirement: {term!r}")
        negate, key, op, values = st.groups()
        if op:
            if negate:
                raise SelectorError(f"unable to parse requirement: {term!r}")
            options = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                tests.append(lambda labels, k=key, o=options: labels.get(k) in o)
            else:
                tests.append(lambda labels, k=key, o=options: labels.get(k) not in o)
        elif negate:
            tests.append(lambda labels, k=key: k not in labels)
        else:
            tests.append(lambda labels, k=key: k in labels)

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
        if op == "!=":
            tests.append(lambda obj, a=attr, v=value: obj["metadata"].get(a, "") != v)
        else:
            tests.append(lambda obj, a=attr, v=value: obj["metadata"].get(a, "") == v)
    return lambda obj: all(t(obj) for t in tests)

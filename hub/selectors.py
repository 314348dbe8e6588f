"""Label selectors in the Kubernetes syntax: `site=berlin,tier!=canary`, `site in (a,b)`, `gpu`, `!canary`.

Requirements are joined by commas (AND). Operators: `=`/`==`, `!=`, `in (...)`, `notin (...)`, a bare key
(exists) and `!key` (does not exist). A parse error names the 1-based character position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fleet import labels as labels_rules
from fleet.errors import InvalidLabel
from hub.errors import InvalidInput, InvalidSelector

Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a selector."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """True when `labels` satisfies this requirement."""
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.values[0]
        if self.op == "!=":
            return labels.get(self.key) != self.values[0]
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


@dataclass(frozen=True)
class Selector:
    """A parsed selector: all requirements must hold. The empty selector matches every device."""

    requirements: tuple[Requirement, ...]
    text: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        """True when every requirement holds for `labels`."""
        return all(r.matches(labels) for r in self.requirements)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> InvalidSelector:
        near = self.text[self.pos : self.pos + 10]
        found = f"found {near!r}" if near else "found the end"
        return InvalidSelector(f"bad selector at position {self.pos + 1}: expected {what}, {found}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def take(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def word(self, what: str) -> str:
        self.skip_ws()
        m = _WORD.match(self.text, self.pos)
        if not m:
            raise self.fail(what)
        self.pos = m.end()
        return m.group(0)

    def keyword(self, kw: str) -> bool:
        self.skip_ws()
        m = _WORD.match(self.text, self.pos)
        if m and m.group(0) == kw:
            self.pos = m.end()
            return True
        return False

    def values(self) -> tuple[str, ...]:
        if not self.take("("):
            raise self.fail("'('")
        out = [self.word("a value")]
        while self.take(","):
            out.append(self.word("a value"))
        if not self.take(")"):
            raise self.fail("',' or ')'")
        return tuple(out)

    def requirement(self) -> Requirement:
        if self.take("!"):
            return Requirement(self.word("a label key after '!'"), "!exists")
        key = self.word("a label key")
        if self.take("!="):
            return Requirement(key, "!=", (self.word("a value after '!='"),))
        if self.take("==") or self.take("="):
            return Requirement(key, "=", (self.word("a value after '='"),))
        if self.keyword("notin"):
            return Requirement(key, "notin", self.values())
        if self.keyword("in"):
            return Requirement(key, "in", self.values())
        return Requirement(key, "exists")

    def parse(self) -> Selector:
        reqs: list[Requirement] = []
        self.skip_ws()
        if self.pos == len(self.text):
            return Selector((), self.text)
        reqs.append(self.requirement())
        while self.take(","):
            reqs.append(self.requirement())
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.fail("',' or the end")
        return Selector(tuple(reqs), self.text)


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises InvalidSelector naming the position of the first error."""
    if len(text) > 4096:
        raise InvalidSelector("selector longer than 4096 characters")
    return _Parser(text).parse()


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """`fleet.labels.check_labels`, refusing with InvalidInput (HTTP 400 with the reason)."""
    try:
        return labels_rules.check_labels(labels)
    except InvalidLabel as e:
        raise InvalidInput(str(e)) from e


def parse_label_args(items: list[str]) -> dict[str, str]:
    """`fleet.labels.parse_labels`, refusing with InvalidInput naming the bad item."""
    try:
        return labels_rules.parse_labels(items)
    except InvalidLabel as e:
        raise InvalidInput(str(e)) from e

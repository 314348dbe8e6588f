"""Device labels: the Kubernetes label rules, and `key=value` arguments as people type them.

The hub checks every label it stores with `check_labels`; the CLI and the simulator parse what people type
with `parse_labels`, so a bad label is refused with the same words wherever it is typed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fleet.errors import InvalidLabel

MAX_LABELS = 64
_LABEL_KEY = re.compile(r"^(?:[a-z0-9][a-z0-9.-]{0,252}/)?[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return `labels` if every key and value follows the Kubernetes label rules, else raise InvalidLabel."""
    if len(labels) > MAX_LABELS:
        raise InvalidLabel(f"a device carries at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise InvalidLabel(f"invalid label key {key[:80]!r}: use a-z A-Z 0-9 . _ - (63 chars), optional prefix/")
        if not _LABEL_VALUE.match(value):
            raise InvalidLabel(f"invalid label value {value[:80]!r} for {key!r}: use a-z A-Z 0-9 . _ - (63 chars)")
    return labels


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """`["site=berlin", "tier=canary"]` (or one `site=berlin,tier=canary`) into a checked dict.

    Raises:
        InvalidLabel: naming the item that is not `key=value`, or the key or value that breaks the rules.
    """
    out: dict[str, str] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidLabel(f"label {item!r} must look like key=value")
        out[key.strip()] = value.strip()
    return check_labels(out)

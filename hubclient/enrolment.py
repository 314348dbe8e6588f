"""Lists of devices to enrol in one request: from a CSV file, or a count and a name pattern.

Client-side parsing for `edgefleet device add --csv/--count`; the hub checks every id and label again.
`MAX_BATCH` is the hub's bound per request (`fleet.bundle.MAX_ENROL_BATCH`, shared by both sides).
"""

from __future__ import annotations

import csv
import string
from pathlib import Path

from fleet.bundle import MAX_ENROL_BATCH
from hubclient.errors import ClientError

MAX_BATCH = MAX_ENROL_BATCH
MAX_CSV_BYTES = 16 << 20


class InvalidInput(ClientError):
    """The list of devices to enrol is malformed; nothing was sent."""

    code = "invalid_input"


Entry = tuple[str, dict[str, str]]


def read_csv(path: Path, labels: dict[str, str] | None = None) -> list[Entry]:
    """Devices from a CSV file with a header row: an `id` column; every other column is a label.

    Empty cells set no label; `labels` are added to every device (a cell overrides them).

    Raises:
        InvalidInput: the file is missing, too large, not UTF-8, has no `id` column or one named twice, an
            empty id or too many rows.
    """
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise InvalidInput(f"{path}: larger than {MAX_CSV_BYTES} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {path}: {e}") from e
    rows = csv.DictReader(text.splitlines())
    if rows.fieldnames is None or "id" not in [f.strip() for f in rows.fieldnames]:
        raise InvalidInput(f"{path}: the header row needs an `id` column (the others are labels)")
    header = [f.strip() for f in rows.fieldnames]
    twice = sorted({f for f in header if header.count(f) > 1})
    if twice:  # a row would keep only the last of its cells
        raise InvalidInput(f"{path}:1: the header row names column {twice[0]!r} twice")
    out: list[Entry] = []
    for line, row in enumerate(rows, start=2):
        clean = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise InvalidInput(f"{path}:{line}: more cells than header columns")
        device_id = clean.pop("id")
        if not device_id:
            raise InvalidInput(f"{path}:{line}: empty id")
        out.append((device_id, {**(labels or {}), **{k: v for k, v in clean.items() if v}}))
        if len(out) > MAX_BATCH:
            raise InvalidInput(f"{path}: more than {MAX_BATCH} devices; split the file")
    if not out:
        raise InvalidInput(f"{path}: no devices (only a header row?)")
    return out


def from_pattern(pattern: str, start: int, count: int, labels: dict[str, str] | None = None) -> list[Entry]:
    """`count` devices named by `pattern` with {n} = start, start+1, ... (format spec allowed: {n:04d}).

    Raises:
        InvalidInput: the pattern has no {n}, another field, or the count is out of range.
    """
    if not 1 <= count <= MAX_BATCH:
        raise InvalidInput(f"enrol 1 to {MAX_BATCH} devices per request, not {count}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as e:
        raise InvalidInput(f"pattern {pattern!r}: {e}") from e
    if fields != {"n"}:
        raise InvalidInput(f"pattern {pattern!r} must contain {{n}} (and no other field), e.g. cam-{{n:04d}}")
    try:
        ids = [pattern.format(n=n) for n in range(start, start + count)]
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"pattern {pattern!r}: {e}") from e
    if len(set(ids)) != len(ids):
        raise InvalidInput(f"pattern {pattern!r} gives the same id twice")
    return [(i, dict(labels or {})) for i in ids]

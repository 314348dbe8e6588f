"""Lists of devices to enrol in one request: from a CSV file, or a count and a name pattern.

Client-side parsing for `edgefleet device add --csv/--count`; the hub checks every id and label again.
`MAX_BATCH` is the hub's bound per request (`fleet.bundle.MAX_ENROL_BATCH`, shared by both sides).
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path

from fleet.bundle import MAX_ENROL_BATCH
from fleet.errors import FleetError
from fleet.ids import check_device_id
from fleet.labels import check_labels
from hubclient.errors import ClientError

MAX_BATCH = MAX_ENROL_BATCH
MAX_CSV_BYTES = 16 << 20


class InvalidInput(ClientError):
    """The list of devices to enrol is malformed; nothing was sent."""

    code = "invalid_input"


Entry = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class CsvDevices:
    """Devices read from a CSV file, with the line each came from: the hub's refusals name devices, and a
    person fixes the file by line."""

    path: Path
    entries: list[Entry]
    lines: dict[str, int]

    def locate(self, devices: list[str]) -> str:
        """Each of `devices` (ids the hub's refusal names) with its file and line, in file order:
        "cam-2 (fleet.csv:3), cam-4 (fleet.csv:6)"."""
        order = sorted(devices, key=lambda d: (self.lines.get(d, 0), d))
        return ", ".join(f"{d} ({self.path}:{self.lines[d]})" if d in self.lines else d for d in order)


def read_csv(path: Path, labels: dict[str, str] | None = None) -> CsvDevices:
    """Devices from a CSV file with a header row: an `id` column; every other column is a label.

    Empty cells set no label; `labels` are added to every device (a cell overrides them). Ids and labels are
    checked as the hub checks them, so a bad row is named by its line before anything is sent.

    Raises:
        InvalidInput: the file is missing, too large, not UTF-8, has no `id` column or one named twice, an
            empty, invalid or repeated id, an invalid label, or too many rows (`FILE:LINE: ...`).
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
    lines: dict[str, int] = {}
    for row in rows:
        line = rows.line_num  # the file's line where the row ends (a quoted cell may span lines)
        clean = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise InvalidInput(f"{path}:{line}: more cells than header columns")
        device_id = clean.pop("id")
        if not device_id:
            raise InvalidInput(f"{path}:{line}: empty id")
        if device_id in lines:
            raise InvalidInput(f"{path}:{line}: device {device_id} is listed twice (first on line {lines[device_id]})")
        entry = (device_id, {**(labels or {}), **{k: v for k, v in clean.items() if v}})
        try:
            check_device_id(device_id)
            check_labels(entry[1])
        except FleetError as e:
            raise InvalidInput(f"{path}:{line}: {e}") from None
        out.append(entry)
        lines[device_id] = line
        if len(out) > MAX_BATCH:
            raise InvalidInput(f"{path}: more than {MAX_BATCH} devices; split the file")
    if not out:
        raise InvalidInput(f"{path}: no devices (only a header row?)")
    return CsvDevices(path, out, lines)


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

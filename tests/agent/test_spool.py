"""The telemetry spool on a real SQLite file: order, bound, drop count, persistence, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.spool import Spool


def test_order_ack_and_sequence_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path, capacity=10)
    for _ in range(4):
        seq = s.allocate_seq()
        s.push(seq, f"w{seq}".encode())
    assert [q for q, _ in s.peek(10)] == [0, 1, 2, 3]
    s.ack(0)
    s.ack(1)
    s.close()
    s = Spool(path, capacity=10)
    assert s.peek(10) == [(2, b"w2"), (3, b"w3")] and s.pending == 2
    assert s.allocate_seq() == 4, "sequence numbers never repeat across restarts"
    s.close()


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.sqlite", capacity=3)
    dropped = [s.push(s.allocate_seq(), b"x") for _ in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [q for q, _ in s.peek(10)] == [2, 3, 4]
    assert s.dropped == 2 and s.pending == 3 and s.capacity == 3
    s.close()


def test_not_a_database_is_a_spool_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SpoolError, match="cannot open"):
        Spool(path, capacity=3)


def test_capacity_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SpoolError):
        Spool(tmp_path / "s.sqlite", capacity=0)

"""Chunk planning: content-defined boundaries within bounds, stable under shifts; strict manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleet.chunks import chunk_of
from fleet.messages import BlobManifest
from fleet.plan import DEFAULT_CHUNK_SIZE, content_bounds, plan_bytes, plan_file
from tests.support.fuzz import examples


def _blob(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"plan-{seed}".encode()).digest(n)


@settings(max_examples=examples(40), deadline=None)
@given(n=st.integers(0, 40_000), target=st.sampled_from([1024, 2048, 4096]))
def test_content_chunks_cover_the_blob_within_bounds(n: int, target: int) -> None:
    data = _blob(n)
    m = plan_bytes(data, target)
    low, _, high = content_bounds(target)
    assert m.sizes is not None and sum(m.sizes) == n and m.chunk_size == high
    assert all(low <= s <= high for s in m.sizes[:-1]), "only the last chunk may be shorter than the minimum"
    assert b"".join(bytes(chunk_of(data, m, i)) for i in range(m.count)) == data
    assert all(hashlib.sha256(chunk_of(data, m, i)).hexdigest() == m.chunks[i] for i in range(m.count))
    assert m == plan_bytes(data, target), "deterministic"


def test_an_insertion_moves_only_nearby_boundaries() -> None:
    """What makes a new version cheap: bytes inserted near the start shift everything after them."""
    data = _blob(4 << 20)
    before = plan_bytes(data)
    after = plan_bytes(data[:1000] + b"inserted bytes" + data[1000:])
    assert len(set(before.chunks) & set(after.chunks)) >= before.count - 2
    fixed_before = plan_bytes(data, chunking="fixed")
    fixed_after = plan_bytes(data[:1000] + b"inserted bytes" + data[1000:], chunking="fixed")
    assert not set(fixed_before.chunks) & set(fixed_after.chunks), "fixed-size chunks all change"


def test_plan_file_maps_the_file_and_matches_plan_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * DEFAULT_CHUNK_SIZE + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert plan_file(path) == plan_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    empty = plan_file(tmp_path / "empty")
    assert empty.count == 0 and empty.sizes == [] and empty.size == 0


@pytest.mark.parametrize("target", [1023, (4 << 20) + 1])
def test_content_targets_outside_fastcdc_bounds_are_refused(target: int) -> None:
    with pytest.raises(ValueError, match="1 KiB..4 MiB"):
        plan_bytes(b"x", target)


SHA = "a" * 64


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"size": 10, "chunks": [SHA], "sizes": [4, 6]}, "1 chunk digests but 2 chunk sizes"),
        ({"size": 11, "chunks": [SHA, SHA], "sizes": [4, 6]}, "add up to 10 bytes"),
        ({"size": 2048, "chunks": [SHA], "sizes": [2048], "chunk_size": 1024}, "larger than chunk_size"),
        ({"size": 4, "chunks": [SHA, SHA], "sizes": [4, 0]}, "greater than or equal to 1"),
        ({"size": -1, "chunks": [], "sizes": []}, "greater than or equal to 0"),
        ({"size": 3000, "chunks": [SHA, SHA]}, "need 3 chunk digests"),
    ],
)
def test_manifests_that_do_not_add_up_are_refused(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        BlobManifest.model_validate({"sha256": SHA, "chunk_size": 1024} | fields)


def test_a_manifest_cannot_list_more_chunks_than_the_bound() -> None:
    with pytest.raises(ValidationError, match="at most"):
        BlobManifest.model_validate(
            {
                "sha256": SHA,
                "size": (1 << 20) + 1,
                "chunk_size": 1024,
                "chunks": [SHA] * ((1 << 20) + 1),
                "sizes": [1] * ((1 << 20) + 1),
            }  # fmt: skip
        )


def test_offsets_follow_the_sizes_even_after_a_copy() -> None:
    m = BlobManifest(sha256=SHA, size=10, chunk_size=1024, chunks=[SHA, SHA], sizes=[4, 6])
    assert [m.offset(i) for i in range(2)] == [0, 4] and m.chunk_length(1) == 6
    other = m.model_copy(update={"sizes": [7, 3]})
    assert other.offset(1) == 7 and m.offset(1) == 4

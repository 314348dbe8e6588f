from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.bitmap import ChunkBitmap
from fleet.messages import to_ranges


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, max(n - 1, 0))))))
def test_bits_ranges_and_saved_form_agree(case: tuple[int, list[int]]) -> None:
    count, adds = case
    adds = [i for i in adds if i < count]
    bm = ChunkBitmap(count)
    seen: set[int] = set()
    for i in adds:
        assert bm.add(i) is (i not in seen), "add() says new exactly once per index"
        seen.add(i)
    held = sorted(set(adds))
    assert bm.held() == held and bm.have == len(held)
    assert bm.missing() == sorted(set(range(count)) - set(held))
    assert bm.missing_ranges() == to_ranges(bm.missing())
    assert bm.complete is (len(held) == count)
    again = ChunkBitmap(count, bm.to_bytes())
    assert again.held() == held and again.have == bm.have


def test_add_refuses_an_index_outside_the_blob() -> None:
    bm = ChunkBitmap(3)
    with pytest.raises(IndexError):
        bm.add(3)
    with pytest.raises(IndexError):
        bm.add(-1)
    assert bm.have == 0


@pytest.mark.parametrize(
    ("count", "raw", "reason"),
    [(9, b"\x00", "has 2 bytes"), (3, b"\x08", "beyond"), (8, b"\x00\x00", "has 1 bytes")],
)
def test_a_saved_bitmap_that_does_not_fit_the_blob_is_refused(count: int, raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ChunkBitmap(count, raw)


def test_clear_forgets_everything() -> None:
    bm = ChunkBitmap(10)
    for i in (0, 9):
        bm.add(i)
    bm.clear()
    assert bm.have == 0 and bm.missing_ranges() == [(0, 10)]

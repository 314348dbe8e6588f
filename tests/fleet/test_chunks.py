from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.chunks import HEADER_SIZE, Accepted, ChunkReceiver, chunk_of, decode_frame, encode_frame, iter_frames
from fleet.errors import (
    ChunkDecodeError,
    ChunkDigestMismatch,
    ChunkForeignBlob,
    ChunkOutOfRange,
)
from fleet.messages import BlobManifest
from fleet.plan import plan_bytes, plan_file
from tests.support.fuzz import examples

CHUNK = 1024


def blob_of(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(n) if n else b""


def manifest_cut(data: bytes, sizes: list[int]) -> BlobManifest:
    """A manifest with chunks of the given sizes (any cut points, not only FastCDC's)."""
    view, at, chunks = memoryview(data), 0, []
    for n in sizes:
        chunks.append(hashlib.sha256(view[at : at + n]).hexdigest())
        at += n
    largest = max([1024, *sizes])
    return BlobManifest(sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunk_size=largest,
                        chunks=chunks, sizes=sizes)  # fmt: skip


def frames_of(data: bytes, m: BlobManifest | None = None) -> tuple[BlobManifest, list[bytes]]:
    m = m or plan_bytes(data, CHUNK, chunking="fixed")
    return m, [encode_frame(m.sha256, i, m.count, chunk_of(data, m, i)) for i in range(m.count)]


fs = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def planned(draw: st.DrawFn, max_size: int = 12 * CHUNK, min_size: int = 0) -> tuple[bytes, BlobManifest]:
    """A blob and its manifest: fixed-size chunks, FastCDC's content-defined chunks, or arbitrary cut points."""
    data = blob_of(draw(st.integers(min_size, max_size)), draw(st.integers(0, 5)))
    how = draw(st.sampled_from(["fixed", "content", "arbitrary"]))
    if how != "arbitrary":
        return data, plan_bytes(data, CHUNK, chunking=how)  # type: ignore[arg-type]
    sizes, left = [], len(data)
    while left:
        n = draw(st.integers(1, min(left, 2 * CHUNK)))
        sizes.append(n)
        left -= n
    return data, manifest_cut(data, sizes)


@fs
@given(blob=planned(), plan=st.data())
def test_any_order_duplicates_and_loss(tmp_path: Path, blob: tuple[bytes, BlobManifest], plan: st.DataObject) -> None:
    data, m = blob
    m, frames = frames_of(data, m)
    order = plan.draw(st.lists(st.integers(0, max(m.count - 1, 0)), max_size=3 * m.count)) if m.count else []
    workdir = tmp_path / os.urandom(4).hex()
    rx = ChunkReceiver(m, workdir)
    for i in order:
        rx.accept(frames[i])
    assert rx.missing() == sorted(set(range(m.count)) - set(order))
    assert rx.have_count == len(set(order))
    if rx.complete:
        out = rx.finish(workdir / "blob")
        assert out.read_bytes() == data
        assert not rx.part_path.exists() and not rx.bitmap_path.exists()
    else:
        rx.close()


@fs
@given(blob=planned(8 * CHUNK, 1), where=st.data())
def test_a_flipped_bit_is_refused_and_wanted_again(
    tmp_path: Path, blob: tuple[bytes, BlobManifest], where: st.DataObject
) -> None:
    data, m = blob
    m, frames = frames_of(data, m)
    i = where.draw(st.integers(0, m.count - 1))
    bit = where.draw(st.integers(0, (len(frames[i]) - HEADER_SIZE) * 8 - 1))
    bad = bytearray(frames[i])
    bad[HEADER_SIZE + bit // 8] ^= 1 << (bit % 8)
    rx = ChunkReceiver(m, tmp_path / os.urandom(4).hex())
    with pytest.raises(ChunkDigestMismatch):
        rx.accept(bytes(bad))
    assert i in rx.missing()
    assert rx.accept(frames[i]) is Accepted.NEW
    assert i not in rx.missing()
    rx.close()


@fs
@given(blob=planned(10 * CHUNK, 1), plan=st.data())
def test_restart_at_any_point_resumes(tmp_path: Path, blob: tuple[bytes, BlobManifest], plan: st.DataObject) -> None:
    data, m = blob
    m, frames = frames_of(data, m)
    order = plan.draw(st.permutations(list(range(m.count))))
    cut = plan.draw(st.integers(0, m.count))
    sync_every = plan.draw(st.integers(1, 4))
    workdir = tmp_path / os.urandom(4).hex()
    rx = ChunkReceiver(m, workdir, sync_every=sync_every, sync_interval_s=1e9)
    for i in order[:cut]:
        rx.accept(frames[i])
    durable = {i for i in range(m.count) if rx.has(i)} if rx._unsynced == 0 else None
    # crash without close(): only what the last flush recorded survives
    os.close(rx._fd)
    rx2 = ChunkReceiver(m, workdir, sync_every=sync_every, sync_interval_s=1e9)
    assert rx2.discarded is None
    recovered = {i for i in range(m.count) if rx2.has(i)}
    assert recovered <= set(order[:cut])
    if durable is not None:
        assert recovered == durable
    # verified chunks are not accepted twice; the rest are wanted
    for i in recovered:
        assert rx2.accept(frames[i]) is Accepted.DUPLICATE
    assert rx2.missing() == sorted(set(range(m.count)) - recovered)
    for i in rx2.missing():
        assert rx2.accept(frames[i]) is Accepted.NEW
    assert rx2.finish(workdir / "blob").read_bytes() == data


def test_resume_after_clean_close_keeps_everything(tmp_path: Path) -> None:
    data = blob_of(5 * CHUNK + 17)
    m, frames = frames_of(data)
    with ChunkReceiver(m, tmp_path, sync_every=100) as rx:
        for i in (0, 2, 5):
            rx.accept(frames[i])
    rx = ChunkReceiver(m, tmp_path)
    assert rx.missing() == [1, 3, 4]
    assert rx.bytes_done == 2 * CHUNK + 17


def test_state_of_another_manifest_is_discarded(tmp_path: Path) -> None:
    data = blob_of(3 * CHUNK)
    m, frames = frames_of(data)
    with ChunkReceiver(m, tmp_path) as rx:
        rx.accept(frames[0])
    # same blob digest, different chunking: the bitmap no longer describes the file
    other = plan_bytes(data, 2 * CHUNK, chunking="fixed")
    rx = ChunkReceiver(other, tmp_path)
    assert rx.discarded is not None and "another manifest" in rx.discarded
    assert rx.missing() == [0, 1]
    rx.discard()
    assert not rx.part_path.exists()


def test_corrupt_bitmap_is_discarded(tmp_path: Path) -> None:
    m, frames = frames_of(blob_of(2 * CHUNK))
    with ChunkReceiver(m, tmp_path) as rx:
        rx.accept(frames[1])
    rx.bitmap_path.write_bytes(b"garbage")
    rx = ChunkReceiver(m, tmp_path)
    assert rx.discarded and rx.missing() == [0, 1]


def test_foreign_out_of_range_and_oversized_chunks_are_refused(tmp_path: Path) -> None:
    m, frames = frames_of(blob_of(3 * CHUNK))
    other, other_frames = frames_of(blob_of(3 * CHUNK, seed=9))
    rx = ChunkReceiver(m, tmp_path)
    with pytest.raises(ChunkForeignBlob):
        rx.accept(other_frames[0])
    with pytest.raises(ChunkOutOfRange):
        rx.accept(encode_frame(m.sha256, 3, m.count, b"x" * CHUNK))
    with pytest.raises(ChunkOutOfRange):
        rx.accept(encode_frame(m.sha256, 0, m.count + 1, b"x" * CHUNK))
    with pytest.raises(ChunkDecodeError, match="exceeds"):
        rx.accept(encode_frame(m.sha256, 0, m.count, b"x" * (CHUNK + 1)))
    with pytest.raises(ChunkDigestMismatch, match="bytes"):
        rx.accept(encode_frame(m.sha256, 0, m.count, b"x" * (CHUNK - 1)))
    assert rx.missing() == [0, 1, 2]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:10], "shorter"),
        (lambda f: b"XXXX" + f[4:], "magic"),
        (lambda f: f[:4] + b"\x02" + f[5:], "version"),
        (lambda f: f[:-1], "carries"),
        (lambda f: f + b"\x00", "carries"),
    ],
)
def test_malformed_frames(mutate: object, reason: str) -> None:
    _, frames = frames_of(blob_of(CHUNK))
    with pytest.raises(ChunkDecodeError, match=reason):
        decode_frame(mutate(frames[0]))  # type: ignore[operator]


@given(st.binary(max_size=200))
def test_decoding_garbage_frames_raises_only_decode_errors(payload: bytes) -> None:
    try:
        decode_frame(payload)
    except ChunkDecodeError:
        pass


def test_a_complete_blob_enters_the_store_without_a_whole_blob_pass(tmp_path: Path) -> None:
    """Each byte is hashed once, as it arrives: finish() trusts the chunks the signed list vouched for.

    Proof that finish() does not read the partial file back: bytes changed on disk after every chunk was
    verified reach the destination unchanged (on a real device only the agent writes this file).
    """
    data = blob_of(3 * CHUNK)
    m, frames = frames_of(data)
    rx = ChunkReceiver(m, tmp_path)
    for frame in frames:
        rx.accept(frame)
    with rx.part_path.open("r+b") as f:
        f.write(b"X")
    out = rx.finish(tmp_path / "out")
    assert out.read_bytes() == b"X" + data[1:]
    assert not rx.part_path.exists() and not rx.bitmap_path.exists()


def test_finish_refuses_an_incomplete_blob(tmp_path: Path) -> None:
    m, _ = frames_of(blob_of(2 * CHUNK))
    with pytest.raises(ChunkOutOfRange, match="incomplete"):
        ChunkReceiver(m, tmp_path).finish(tmp_path / "out")


def test_empty_blob_is_complete_at_once(tmp_path: Path) -> None:
    m = plan_bytes(b"", CHUNK)
    rx = ChunkReceiver(m, tmp_path)
    assert rx.complete and rx.missing() == []
    assert rx.finish(tmp_path / "empty").read_bytes() == b""


def test_plan_file_and_iter_frames_match_plan_bytes(tmp_path: Path) -> None:
    data = blob_of(7 * CHUNK + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    m = plan_file(path, CHUNK, chunking="fixed")
    assert m == plan_bytes(data, CHUNK, chunking="fixed")
    rx = ChunkReceiver(m, tmp_path / "rx")
    for frame in iter_frames(path, m, indexes=[7, 0, 3]):
        rx.accept(frame)
    assert rx.missing() == [1, 2, 4, 5, 6]


def test_put_takes_a_chunk_held_locally_and_verifies_it(tmp_path: Path) -> None:
    data = blob_of(6 * CHUNK)
    m = plan_bytes(data, CHUNK)
    rx = ChunkReceiver(m, tmp_path)
    assert rx.put(1, chunk_of(data, m, 1)) is Accepted.NEW
    assert rx.put(1, chunk_of(data, m, 1)) is Accepted.DUPLICATE
    with pytest.raises(ChunkDigestMismatch):
        rx.put(2, chunk_of(data, m, 3))  # a corrupt local copy is refused, the chunk stays wanted
    assert 2 in rx.missing() and rx.have_count == 1
    for i in rx.missing():
        rx.put(i, chunk_of(data, m, i))
    assert rx.finish(tmp_path / "blob").read_bytes() == data

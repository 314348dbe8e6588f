"""Mutation fuzzing of the wire decoders: valid messages, signed envelopes and chunk frames with bytes
flipped, inserted, deleted or cut, and arbitrary topics, fed to the decoders and to the hub's ingestion.

The plain-garbage cases live in tests/fleet (test_messages, test_chunks); here every input starts valid,
which reaches the deeper checks. The property: only the documented errors are raised, a mutated signed
state or chunk is never accepted as something other than the original, and ingestion never raises.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.chunks import ChunkReceiver, chunk_of, decode_frame, encode_frame
from fleet.codec import decode_any, encode
from fleet.errors import ChunkError, MessageError, SignatureError
from fleet.messages import DesiredState
from fleet.signing import HubSigningKey, Verifier
from fleet.topics import Topics
from hub.ingest import Ingestor
from hub.settings import TransferSettings
from hub.store import SqlStore, open_store
from hub.transfer import ChunkServer
from tests.fleet.samples import BLOB, MANIFEST, T0, all_messages, desired
from tests.support.fuzz import examples
from tests.support.outcomes import record

FUZZ = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SAMPLES = [encode(m) for m in all_messages()]
KEY = HubSigningKey.generate()
STATE = desired("cam-001", version=7)
ENVELOPE = encode(KEY.sign(STATE))
TOPICS = Topics("fuzz/v1")
outcomes: Counter[str] = Counter()


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with up to 4 byte-level edits (flip, insert, delete) and maybe cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
    return bytes(data)


@given(st.sampled_from(SAMPLES).flatmap(mutated))
@FUZZ
def test_mutated_messages_decode_or_raise_message_error(payload: bytes) -> None:
    try:
        decode_any(payload)
        outcomes["message accepted (equivalent)"] += 1
    except MessageError:
        outcomes["messages"] += 1


@given(mutated(ENVELOPE))
@FUZZ
def test_a_mutated_signed_state_is_refused_or_is_the_original(payload: bytes) -> None:
    verifier = Verifier(KEY.public, "cam-001")
    try:
        body = verifier.verify(payload, DesiredState, now=T0 + 1, last_version=6)
    except SignatureError:
        outcomes["signed envelopes"] += 1
        return
    assert body == STATE  # an edit that kept the same signed content (e.g. JSON whitespace)


@pytest.fixture(scope="module")
def receiver_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


FRAME = encode_frame(MANIFEST.sha256, 3, MANIFEST.count, chunk_of(BLOB, MANIFEST, 3))


@given(mutated(FRAME))
@FUZZ
def test_a_mutated_chunk_frame_is_refused_or_is_the_original(receiver_dir: Path, payload: bytes) -> None:
    receiver = ChunkReceiver(MANIFEST, receiver_dir)
    try:
        frame = decode_frame(payload, max_chunk=MANIFEST.chunk_size)
        receiver.accept(frame)
    except (MessageError, ChunkError):
        outcomes["chunk frames"] += 1
        return
    finally:
        receiver.close()
        for p in receiver_dir.iterdir():
            p.unlink()
    assert frame.index == 3 and bytes(frame.data) == chunk_of(BLOB, MANIFEST, 3)


@pytest.fixture(scope="module")
def ingestor() -> Iterator[tuple[Ingestor, SqlStore]]:
    with tempfile.TemporaryDirectory() as d:
        store = open_store(Path(d) / "hub.db")
        chunks = ChunkServer(store, lambda sha: Path(d) / sha, TOPICS, lambda _t, _f: None, TransferSettings())
        ing = Ingestor(store, TOPICS, is_enrolled=lambda dev: dev == "cam-001", chunk_server=chunks,
                       max_message_bytes=256 * 1024)  # fmt: skip
        yield ing, store
        store.close()


topics = st.sampled_from(
    [TOPICS.status("cam-001"), TOPICS.reported("cam-001"), TOPICS.telemetry("cam-001"), TOPICS.cmd_ack("cam-001"),
     TOPICS.want(MANIFEST.sha256), TOPICS.desired("cam-001"), TOPICS.chunk(MANIFEST.sha256)]
) | st.text(max_size=80)  # fmt: skip


@given(topics, st.sampled_from(SAMPLES).flatmap(mutated) | st.binary(max_size=256))
@FUZZ
def test_hub_ingestion_never_raises_on_hostile_messages(ingestor: tuple[Ingestor, SqlStore], topic: str,
                                                       payload: bytes) -> None:  # fmt: skip
    ing, store = ingestor
    store.flush()  # telemetry is counted by the writer, after `handle` returns: settle earlier examples first
    before = ing.rejected_total + sum(ing.accepted.values())
    ing.handle(topic, payload)
    store.flush()
    after = ing.rejected_total + sum(ing.accepted.values())
    assert after - before <= 1
    outcomes["hub ingestion"] += after - before


def test_zz_record_fuzz_outcomes(ingestor: tuple[Ingestor, SqlStore]) -> None:
    """Put the counts into the outcome table (runs after the fuzz tests of this module)."""
    ing, store = ingestor
    store.flush()
    assert store.ingest_stats().write_errors == 0
    for klass in ("messages", "signed envelopes", "chunk frames"):
        record("fuzz", f"mutated {klass}", "refused", outcomes[klass])
    record("fuzz", "hostile topics and payloads at hub ingestion", "refused", ing.rejected_total)

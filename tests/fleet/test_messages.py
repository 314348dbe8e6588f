from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleet.codec import decode, decode_any, encode
from fleet.errors import MessageError, UnsupportedSchema
from fleet.histogram import Histogram, LatencyRecorder, merge_all
from fleet.messages import MESSAGE_TYPES, BlobManifest, TelemetryWindow, Want, Wire, to_ranges
from tests.fleet.samples import MANIFEST, T0, all_messages
from tests.support.fuzz import examples


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in all_messages()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Wire) -> None:
    payload = encode(message)
    assert decode(payload, type(message)) == message
    assert decode_any(payload) == message


def test_messages_are_frozen_and_forbid_extra_fields() -> None:
    want = Want(device_id="d1", sha256=MANIFEST.sha256, missing=[(0, 1)])
    with pytest.raises(ValidationError):
        want.device_id = "d2"  # type: ignore[misc]
    obj = json.loads(encode(want))
    obj["surprise"] = 1
    with pytest.raises(MessageError, match="surprise"):
        decode(json.dumps(obj), Want)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"kind": "want"}', "schema_version"),
        (b'{"schema_version": 3, "kind": "want"}', "schema_version 3 is newer than this build speaks"),
        (b'{"schema_version": 1, "kind": "want"}', "schema_version 1 is older than this build speaks"),
        (b'{"schema_version": "2", "kind": "want"}', "schema_version"),
        (b'{"schema_version": 2, "kind": "nope"}', "unknown message kind"),
        (b'{"schema_version": 2, "kind": "want", "device_id": "D!"}', "invalid Want"),
        (b"[" * 200_000 + b"]" * 200_000, "exceeds"),
        (b"[" * 5000 + b"]" * 5000, "JSON object|not valid JSON"),
        (json.dumps({"schema_version": 2, "kind": "want", "x": "a" * 300_000}).encode(), "exceeds"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        decode_any(payload)


def test_unsupported_schema_is_its_own_error() -> None:
    with pytest.raises(UnsupportedSchema):
        decode_any(b'{"schema_version": 99, "kind": "want"}')


def test_decode_checks_the_expected_kind() -> None:
    payload = encode(Want(device_id="d1", sha256=MANIFEST.sha256, missing=[(0, 1)]))
    with pytest.raises(MessageError, match="expected a 'telemetry'"):
        decode(payload, TelemetryWindow)


@settings(max_examples=examples(300))
@given(st.binary(max_size=512) | st.text(max_size=512).map(str.encode))
def test_decoding_garbage_raises_only_message_error(payload: bytes) -> None:
    try:
        decode_any(payload)
    except MessageError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=examples(300))
@given(st.sampled_from(["status", "desired", "reported", "telemetry", "want", "command", "signed"]), json_values)
def test_decoding_hostile_objects_raises_only_message_error(kind: str, extra: object) -> None:
    obj = {"schema_version": 1, "kind": kind, "device_id": "d1", "x": extra}
    try:
        decode_any(json.dumps(obj))
    except MessageError:
        pass


def test_want_ranges_must_be_sorted_and_disjoint() -> None:
    for bad in ([(3, 3)], [(2, 4), (3, 5)], [(5, 6), (1, 2)], [(-1, 2)]):
        with pytest.raises(ValidationError):
            Want(device_id="d1", sha256=MANIFEST.sha256, missing=bad)
    want = Want(device_id="d1", sha256=MANIFEST.sha256, missing=[(0, 2), (5, 100)])
    assert want.indexes(limit=7) == [0, 1, 5, 6]


@given(st.sets(st.integers(0, 300)))
def test_to_ranges_round_trips(indexes: set[int]) -> None:
    want = Want(device_id="d1", sha256=MANIFEST.sha256, missing=to_ranges(indexes))
    assert want.indexes(limit=1000) == sorted(indexes)


def test_manifest_chunk_count_must_match_size() -> None:
    with pytest.raises(ValidationError, match="need 2 chunk digests"):
        BlobManifest(sha256=MANIFEST.sha256, size=2048, chunk_size=1024, chunks=[MANIFEST.sha256])


def test_histogram_merges_and_estimates_quantiles() -> None:
    a, b = LatencyRecorder(), LatencyRecorder()
    for i in range(100):
        (a if i % 2 else b).observe(1.0 + i * 0.1)
    merged = a.snapshot().merge(b.snapshot())
    assert merged.count == 100
    assert merged == merge_all([a.snapshot(), b.snapshot()])
    p50 = merged.quantile(0.5)
    assert p50 is not None and 4.0 <= p50 <= 7.5
    assert merged.quantile(1.0) is not None
    assert Histogram().quantile(0.95) is None
    assert a.snapshot(reset=True).count == 50 and a.snapshot().count == 0
    with pytest.raises(ValidationError):
        Histogram(counts=(1, 2))


def test_telemetry_window_rejects_negative_counts() -> None:
    with pytest.raises(ValidationError):
        TelemetryWindow.model_validate(
            {"device_id": "d1", "seq": 0, "start": T0, "end": T0 + 1,
             "models": [{"name": "m", "version": "1.0.0", "requests": -1}]}
        )  # fmt: skip


def test_a_desired_state_names_each_model_once_and_shadows_only_its_own_versions() -> None:
    from fleet.messages import MAX_MODELS, DesiredModel, DesiredState, ShadowSpec  # noqa: PLC0415
    from tests.fleet.samples import model_ref  # noqa: PLC0415

    base = {"device_id": "cam-001", "version": 1, "issued_at": 1.0, "expires_at": 2.0}
    two = DesiredState(**base, models=[DesiredModel(model=model_ref()), DesiredModel(model=model_ref(name="ocr"))])
    assert [m.name for m in two.models] == ["resnet-lite", "ocr"] and two.slot("ocr") is two.models[1]
    assert two.slot("absent") is None
    with pytest.raises(ValidationError, match="repeated: resnet-lite"):
        DesiredState(**base, models=[DesiredModel(model=model_ref()), DesiredModel(model=model_ref("2.0.0"))])
    with pytest.raises(ValidationError, match="must be a version of it"):
        DesiredModel(model=model_ref(), shadow=ShadowSpec(model=model_ref(name="ocr"), sample_rate=0.5))
    many = [DesiredModel(model=model_ref(name=f"m{i}")) for i in range(MAX_MODELS + 1)]
    with pytest.raises(ValidationError, match="at most 16"):
        DesiredState(**base, models=many)


def test_the_reported_phase_of_a_device_sums_up_its_models() -> None:
    from fleet.messages import ModelStatus, Phase, ReportedState  # noqa: PLC0415

    def rep(*phases: Phase) -> ReportedState:
        models = [ModelStatus(name=f"m{i}", phase=p) for i, p in enumerate(phases)]
        return ReportedState(device_id="cam-001", seq=1, ts=1.0, models=models)

    assert rep().phase is Phase.IDLE
    assert rep(Phase.ACTIVE, Phase.IDLE).phase is Phase.ACTIVE
    assert rep(Phase.ACTIVE, Phase.FAILED).phase is Phase.FAILED
    assert rep(Phase.FAILED, Phase.DOWNLOADING).phase is Phase.DOWNLOADING
    assert rep(Phase.ACTIVE).model("m0") is not None and rep(Phase.ACTIVE).model("x") is None

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleet.codec import encode
from fleet.errors import (
    BadSignature,
    Expired,
    MalformedEnvelope,
    SignatureError,
    StaleVersion,
    UnknownSigningKey,
    WrongSubject,
)
from fleet.messages import Command, DesiredState, SignedEnvelope
from fleet.signing import HubPublicKey, HubSigningKey, Verifier, canonical_json
from tests.fleet.samples import T0, desired

KEY = HubSigningKey.generate()


def verifier(device_id: str = "cam-001", key: HubSigningKey = KEY) -> Verifier:
    return Verifier(key.public, device_id)


def test_a_signed_state_verifies_from_bytes_and_object() -> None:
    state = desired()
    envelope = KEY.sign(state)
    assert verifier().verify(envelope, DesiredState, now=T0, last_version=None) == state
    assert verifier().verify(encode(envelope), DesiredState, now=T0, last_version=6) == state


def test_each_refusal_is_a_distinct_error() -> None:
    envelope = KEY.sign(desired(version=7))
    tampered = envelope.model_copy(update={"body": {**envelope.body, "models": []}})
    other_key = HubSigningKey.generate()
    forged = other_key.sign(desired())
    # same key id, wrong key: a signature made by another key under our key id
    wrong_key = forged.model_copy(update={"key_id": KEY.public.key_id})
    cases: list[tuple[type[SignatureError], SignedEnvelope | bytes, int | None, float, str]] = [
        (BadSignature, tampered, None, T0, "cam-001"),
        (UnknownSigningKey, forged, None, T0, "cam-001"),
        (BadSignature, wrong_key, None, T0, "cam-001"),
        (Expired, envelope, None, T0 + 7200, "cam-001"),
        (StaleVersion, envelope, 7, T0, "cam-001"),
        (StaleVersion, envelope, 9, T0, "cam-001"),
        (WrongSubject, envelope, None, T0, "cam-002"),
        (MalformedEnvelope, b"{not json", None, T0, "cam-001"),
    ]
    seen = set()
    for error, env, last, now, device in cases:
        with pytest.raises(error):
            verifier(device).verify(env, DesiredState, now=now, last_version=last)
        seen.add(error)
    assert len(seen) == 6


def test_a_valid_signature_over_the_wrong_body_type_is_refused() -> None:
    command = Command(device_id="cam-001", version=1, issued_at=T0, expires_at=T0 + 60, correlation_id="c", name="ping")
    with pytest.raises(MalformedEnvelope, match="DesiredState"):
        verifier().verify(KEY.sign(command), DesiredState, now=T0, last_version=None)


def test_a_bad_base64_signature_is_malformed_or_bad() -> None:
    envelope = KEY.sign(desired())
    for sig in ("", "!!!!", "A" * 86):
        with pytest.raises((MalformedEnvelope, BadSignature)):
            verifier().verify(envelope.model_copy(update={"sig": sig}), DesiredState, now=T0, last_version=None)


def test_canonical_json_is_order_independent_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == canonical_json({"a": [1.5, "é"], "b": 1})
    assert canonical_json({"a": 1}) == b'{"a":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_keys_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hub.key"
    KEY.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = HubSigningKey.load(path)
    assert loaded.public.key_id == KEY.public.key_id
    pub = HubPublicKey.from_text(KEY.public.to_text())
    assert pub.raw == KEY.public.raw
    with pytest.raises(MalformedEnvelope):
        HubPublicKey.from_text("not a key")


def test_a_body_of_another_schema_is_refused_saying_which_side_is_behind() -> None:
    from fleet.errors import UnsupportedBodySchema  # noqa: PLC0415
    from fleet.signing import _b64e  # noqa: PLC0415

    body = {**desired().model_dump(mode="json"), "schema_version": 3, "models": [{"from": "the future"}]}
    newer = SignedEnvelope(key_id=KEY.public.key_id, body=body, sig=_b64e(KEY._key.sign(canonical_json(body))))
    with pytest.raises(UnsupportedBodySchema, match="newer than this build speaks"):
        verifier().verify(newer, DesiredState, now=T0, last_version=None)

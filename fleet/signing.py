"""Ed25519 signatures over canonical JSON: the hub signs desired states and commands, agents verify.

Canonical JSON here: UTF-8, keys sorted, no insignificant whitespace, no NaN or Infinity. The envelope
carries the body as a JSON object (readable on the wire); the verifier re-canonicalises it, which is
stable because a JSON round trip preserves every value a message can hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from fleet.codec import check_schema, decode, summarise
from fleet.desired import read_desired
from fleet.errors import (
    BadSignature,
    Expired,
    MalformedEnvelope,
    MessageError,
    StaleVersion,
    UnknownSigningKey,
    UnsupportedBodySchema,
    UnsupportedModel,
    UnsupportedSchema,
    WrongSubject,
)
from fleet.messages import Command, DesiredState, SignedEnvelope

SignedBody = DesiredState | Command
B = TypeVar("B", DesiredState, Command)


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of `obj` (sorted keys, compact, UTF-8, finite numbers only)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HubPublicKey:
    """The hub's public signing key, as pinned on every device."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.raw).hexdigest()[:32]

    @classmethod
    def from_text(cls, text: str) -> HubPublicKey:
        """Load from base64url of the 32 raw bytes (the bootstrap bundle's form) or from PEM."""
        try:
            if "BEGIN PUBLIC KEY" in text:
                key = serialization.load_pem_public_key(text.encode())
                if not isinstance(key, Ed25519PublicKey):
                    raise ValueError("not an Ed25519 key")
                return cls(key)
            return cls(Ed25519PublicKey.from_public_bytes(_b64d(text.strip())))
        except ValueError as e:
            raise MalformedEnvelope(f"cannot load hub public key: {e}") from e

    def to_text(self) -> str:
        return _b64e(self.raw)

    def verify_raw(self, signature: bytes, data: bytes) -> None:
        """Raise BadSignature unless `signature` is this key's signature of `data`."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature as e:
            raise BadSignature("signature does not match the body (altered, or signed by another key)") from e


class HubSigningKey:
    """The hub's private Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = HubPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> HubSigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> HubSigningKey:
        """Load a PEM (PKCS#8, unencrypted) private key file."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key as PEM, readable by the owner only."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    def sign(self, body: SignedBody) -> SignedEnvelope:
        """Sign a desired state or command into an envelope."""
        obj = body.model_dump(mode="json")
        sig = self._key.sign(canonical_json(obj))
        return SignedEnvelope(key_id=self.public.key_id, body=obj, sig=_b64e(sig))


class Verifier:
    """Checks envelopes for one device against the pinned hub key.

    The checks run in a fixed order and each refusal is its own error type: the key id
    (UnknownSigningKey), the signature (BadSignature), the body's schema version (UnsupportedBodySchema: a
    state from a newer hub, say), the body schema (MalformedEnvelope), the subject
    device (WrongSubject), the expiry (Expired) and the version counter (StaleVersion). `verify_desired`
    reads a desired state's model slots one by one: a slot it cannot read is no refusal of the document but
    an `UnsupportedModel` for that model (`fleet.desired`).
    """

    def __init__(self, public_key: HubPublicKey, device_id: str, *, clock_skew_s: float = 30.0) -> None:
        self.public_key = public_key
        self.device_id = device_id
        self.clock_skew_s = clock_skew_s

    def verify(self, envelope: SignedEnvelope | bytes, cls: type[B], *, now: float, last_version: int | None) -> B:
        """Return the verified body, or raise a SignatureError subclass saying which check failed.

        Every field of the body is read strictly. An agent reads desired states with `verify_desired`.
        """
        obj = self._open(envelope, cls)
        try:
            body = cls.model_validate(obj)
        except ValidationError as e:
            raise MalformedEnvelope(f"signed body is not a valid {cls.__name__}: {summarise(e)}") from e
        return self._check(body, now=now, last_version=last_version)

    def verify_desired(
        self, envelope: SignedEnvelope | bytes, *, now: float, last_version: int | None
    ) -> tuple[DesiredState, tuple[UnsupportedModel, ...]]:
        """Verify a desired state as `verify` does, then read it slot by slot (`fleet.desired.read_desired`):
        the state with the slots this build reads, and one `UnsupportedModel` per slot it does not.

        The signature covers the whole document, unread slots included; device-level fields are read strictly.
        """
        obj = self._open(envelope, DesiredState)
        try:
            body, unread = read_desired(obj)
        except ValidationError as e:
            raise MalformedEnvelope(f"signed body is not a valid DesiredState: {summarise(e)}") from e
        except ValueError as e:
            raise MalformedEnvelope(f"signed body is not a valid DesiredState: {e}") from e
        return self._check(body, now=now, last_version=last_version), unread

    def _open(self, envelope: SignedEnvelope | bytes, cls: type[SignedBody]) -> dict[str, Any]:
        """The signed body of `envelope` once its key, signature and schema version are checked."""
        if not isinstance(envelope, SignedEnvelope):
            try:
                envelope = decode(envelope, SignedEnvelope)
            except MessageError as e:
                raise MalformedEnvelope(f"not a signed envelope: {e}") from e
        if envelope.key_id != self.public_key.key_id:
            raise UnknownSigningKey(
                f"signed by key {envelope.key_id}, but this device pins hub key {self.public_key.key_id}"
            )
        try:
            signature = _b64d(envelope.sig)
            data = canonical_json(envelope.body)
        except ValueError as e:
            raise MalformedEnvelope(f"unreadable signature or body: {e}") from e
        self.public_key.verify_raw(signature, data)
        try:
            check_schema(envelope.body.get("schema_version"))
        except UnsupportedSchema as e:
            raise UnsupportedBodySchema(f"signed {cls.__name__} refused: {e}") from e
        except MessageError as e:
            raise MalformedEnvelope(f"signed body is not a valid {cls.__name__}: {e}") from e
        return envelope.body

    def _check(self, body: B, *, now: float, last_version: int | None) -> B:
        """`body` once its subject, expiry and version counter are checked."""
        if body.device_id != self.device_id:
            raise WrongSubject(f"signed for device {body.device_id!r}, this is {self.device_id!r}")
        if now > body.expires_at + self.clock_skew_s:
            raise Expired(f"expired at {body.expires_at:.0f}, now is {now:.0f}")
        if last_version is not None and body.version <= last_version:
            raise StaleVersion(f"version {body.version} is not newer than accepted version {last_version}")
        return body

"""Typed errors of the wire contract. Each says what failed; callers decide to drop, report or retry."""

from __future__ import annotations

import re


class FleetError(Exception):
    """Base of every error raised by the fleet package."""


class InvalidId(FleetError, ValueError):
    """A device id, blob digest or topic prefix breaks its rules."""


class InvalidBrokerUrl(FleetError, ValueError):
    """A broker URL is not `mqtt://host:port` or `mqtts://host:port` (the message quotes it)."""


class InvalidLabel(FleetError, ValueError):
    """A device label breaks the Kubernetes label rules, or an argument is not `key=value`."""


class InvalidTopic(FleetError, ValueError):
    """A topic string does not match any topic of the protocol."""


class MessageError(FleetError, ValueError):
    """A payload is not a valid message: malformed, oversized, unknown kind or schema version."""


class UnsupportedSchema(MessageError):
    """The message names a schema version this build does not speak."""


class UnknownContent(MessageError):
    """The message is JSON of a known kind and schema version but has fields or values this build does not know
    (a newer sender's, most likely)."""


class UnsupportedModel(MessageError):
    """One model slot of a verified desired state is not readable by this build (a field or value it does not
    know, as a newer hub sends): that model is refused, the other slots apply (`fleet.desired`)."""

    def __init__(self, model: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.reason = reason or message  # why the slot is not readable, without what the agent does about it


class SignatureError(FleetError):
    """A signed envelope was refused. Subclasses say which check failed."""


class MalformedEnvelope(SignatureError):
    """The envelope itself cannot be parsed (bad JSON, bad base64, missing fields)."""


class UnsupportedBodySchema(SignatureError):
    """The signed body names a schema version this build does not speak (newer or older than its own)."""


class UnknownSigningKey(SignatureError):
    """The envelope names a signing key other than the pinned hub key."""


class BadSignature(SignatureError):
    """The signature does not match the body: the body was altered or signed by another key."""


class Expired(SignatureError):
    """The signed body's expiry has passed."""


class StaleVersion(SignatureError):
    """The signed body's version is not newer than the last one accepted (replay or downgrade)."""


class WrongSubject(SignatureError):
    """The signed body is for another device than the one verifying it."""


class ChunkError(FleetError):
    """A chunk or blob was refused by the receiver."""


class ChunkDecodeError(ChunkError, MessageError):
    """A chunk frame is truncated, oversized or has a bad header."""


class ChunkOutOfRange(ChunkError):
    """A chunk index outside 0..count-1 for its blob."""


class ChunkForeignBlob(ChunkError):
    """A chunk frame names another blob than the receiver's."""


class ChunkDigestMismatch(ChunkError):
    """A chunk's bytes do not hash to the digest in the signed chunk list."""


class ReceiverStateError(ChunkError):
    """The on-disk partial state belongs to another manifest or is unreadable; it was discarded."""


def error_code(e: BaseException) -> str:
    """The stable snake_case code reported for an error: its class name (GoldenMismatch -> golden_mismatch).

    The agent and the simulator report refusals with this one function, so the hub sees the same code for
    the same refusal whichever sent it.
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(e).__name__).lower()[:64]


def refusal_reason(e: MessageError) -> str:
    """The reason a receiver counts a refused message under: `unsupported_schema` (another schema version),
    `unknown_content` (fields or values this build does not know: a newer sender), else `malformed`."""
    if isinstance(e, UnsupportedSchema):
        return "unsupported_schema"
    return "unknown_content" if isinstance(e, UnknownContent) else "malformed"

"""Encode and decode JSON wire messages with typed errors: never guess, never crash a caller's loop."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import ValidationError

from fleet.errors import MessageError, UnknownContent, UnsupportedSchema
from fleet.messages import MESSAGE_TYPES, SCHEMA_VERSION, Wire

# JSON messages are small (a birth of a 64-node cluster is ~40 KiB). Chunks travel as binary frames
# and have their own limit (fleet.chunks). Oversized input is refused before it is parsed.
MAX_MESSAGE_BYTES = 256 * 1024

W = TypeVar("W", bound=Wire)
# validation errors of a field or value this build does not know (a newer sender's), not of a malformed message
_UNKNOWN = frozenset({"extra_forbidden", "literal_error", "enum"})
_BY_KIND: dict[str, type[Wire]] = {t.model_fields["kind"].default: t for t in MESSAGE_TYPES}


def encode(message: Wire) -> bytes:
    """Serialise a message to compact UTF-8 JSON."""
    return message.model_dump_json().encode()


def _load(payload: bytes | str, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise MessageError(f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise MessageError(f"not valid JSON: {str(e)[:200]}") from e
    if not isinstance(obj, dict):
        raise MessageError(f"a message must be a JSON object, got {type(obj).__name__}")
    check_schema(obj.get("schema_version"))
    return obj


def check_schema(version: object) -> None:
    """Raise UnsupportedSchema unless `version` is the schema this build speaks, saying which side is behind
    (MessageError when it is no version number at all)."""
    if version == SCHEMA_VERSION and isinstance(version, int):
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise UnsupportedSchema(
            f"schema_version {version} is newer than this build speaks ({SCHEMA_VERSION}): upgrade this side"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        raise UnsupportedSchema(
            f"schema_version {version} is older than this build speaks ({SCHEMA_VERSION}): upgrade the sender"
        )
    raise MessageError(
        f"schema_version {str(version)[:20]!r} is not a schema version (this build speaks {SCHEMA_VERSION})"
    )


def _validate(cls: type[W], obj: dict[str, Any]) -> W:
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        if all(err["type"] in _UNKNOWN for err in e.errors()):
            raise UnknownContent(
                f"{cls.__name__} with fields or values this build does not know: {summarise(e)} "
                "(from a newer sender? upgrade this side)"
            ) from e
        raise MessageError(f"invalid {cls.__name__}: {summarise(e)}") from e


def summarise(error: ValidationError, limit: int = 3) -> str:
    """A one-line summary of a pydantic ValidationError: the first few field paths and reasons."""
    parts = []
    for err in error.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode(payload: bytes | str, cls: type[W], *, max_bytes: int = MAX_MESSAGE_BYTES) -> W:
    """Parse `payload` as a message of type `cls`. Raises MessageError (or UnsupportedSchema)."""
    if len(payload) > max_bytes:
        raise MessageError(f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:  # fast path: pydantic parses the JSON itself (about twice as fast as json.loads + model_validate)
        return cls.model_validate_json(payload)
    except ValidationError:
        pass  # anything wrong takes the slow path below, which names the problem precisely
    obj = _load(payload, max_bytes)
    expected = cls.model_fields["kind"].default
    if obj.get("kind") != expected:
        raise MessageError(f"expected a {expected!r} message, got kind {str(obj.get('kind'))[:40]!r}")
    return _validate(cls, obj)


def decode_any(payload: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Wire:
    """Parse any JSON message by its `kind`."""
    obj = _load(payload, max_bytes)
    kind = obj.get("kind")
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message kind {str(kind)[:40]!r}")
    return _validate(cls, obj)

"""Identifiers as frozen value types that validate on construction."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

from fleet.errors import InvalidId

# Device ids are topic segments, file names and Kubernetes label values at once, so the rules are the
# intersection: lowercase letters, digits, '-', '_' and '.', starting and ending alphanumeric, 1..63 chars.
_DEVICE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_PREFIX = "fleet/v1"


def check_device_id(value: str) -> str:
    """Return `value` if it is a valid device id, else raise InvalidId saying which rule it breaks."""
    if not isinstance(value, str):
        raise InvalidId(f"device id must be a string, got {type(value).__name__}")
    if not _DEVICE_ID.match(value):
        raise InvalidId(
            f"invalid device id {value!r}: use 1-63 chars of a-z 0-9 . _ -, starting and ending with a-z or 0-9"
        )
    return value


def check_sha256(value: str) -> str:
    """Return `value` if it is 64 lowercase hex digits (a sha256), else raise InvalidId."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidId(f"invalid sha256 {str(value)[:80]!r}: expected 64 lowercase hex digits")
    return value


def check_prefix(value: str) -> str:
    """Return `value` if it is a valid topic prefix (segments of A-Za-z0-9._-, no wildcards, no '$')."""
    if not isinstance(value, str) or not value:
        raise InvalidId("topic prefix must be a non-empty string")
    for segment in value.split("/"):
        if not _PREFIX_SEGMENT.match(segment):
            raise InvalidId(
                f"invalid topic prefix {value!r}: segment {segment!r} must be 1-64 chars of A-Za-z0-9 . _ -"
            )
    return value


def _validated(check: Any) -> Any:
    def run(value: str) -> str:
        try:
            return str(check(value))
        except InvalidId as e:
            raise ValueError(str(e)) from e

    return AfterValidator(run)


DeviceId = Annotated[str, _validated(check_device_id)]
"""A device id inside pydantic models (validated on construction)."""

Sha256 = Annotated[str, _validated(check_sha256)]
"""A lowercase hex sha256 inside pydantic models."""

Prefix = Annotated[str, _validated(check_prefix)]
"""A topic prefix inside pydantic models."""

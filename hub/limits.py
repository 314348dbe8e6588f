"""Limits the hub checks at push and deploy because agents would refuse the result later.

An agent refuses a message larger than `fleet.codec.MAX_MESSAGE_BYTES` before parsing it. A desired
state that large (a long chunk list, a description with thousands of labels, a shadow beside the model)
was accepted at push and deploy, and the device then sat in "updating" for ever. `desired_state_bytes`
computes the size of the signed state with the worst case of everything the hub fills in (the longest
device id, the largest version, full timestamps); the registry refuses a model whose state alone does
not fit, the deployer every state that does not fit (with the device's other model slots), before a
version is allocated.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from fleet.codec import MAX_MESSAGE_BYTES, encode
from fleet.limits import MAX_JSON_INT, MAX_TIMESTAMP
from fleet.messages import DesiredModel, DesiredState, SignedEnvelope

_WORST_DEVICE = "d" * 63
_SIGNATURE = base64.urlsafe_b64encode(bytes(64)).rstrip(b"=").decode()  # an Ed25519 signature's length


def desired_state_bytes(models: Sequence[DesiredModel]) -> int:
    """The size on the wire of the signed desired state carrying these model slots, for any device and version."""
    body = DesiredState(
        device_id=_WORST_DEVICE, version=MAX_JSON_INT, issued_at=MAX_TIMESTAMP - 0.123456, expires_at=MAX_TIMESTAMP,
        models=list(models),
    )  # fmt: skip
    envelope = SignedEnvelope(key_id="0" * 32, body=body.model_dump(mode="json"), sig=_SIGNATURE)
    return len(encode(envelope))


def fits(size: int) -> bool:
    """Whether a message of `size` bytes is one every agent accepts."""
    return size <= MAX_MESSAGE_BYTES


def too_large_message(size: int, what: str) -> str:
    return (
        f"{what} would be {size} bytes signed, above the {MAX_MESSAGE_BYTES}-byte message limit every agent "
        "enforces: use larger chunks (fewer chunk digests), a shorter description (labels), no shadow, or fewer "
        "models on the device"
    )

"""Typed errors of the `models` package.

Every error says what went wrong and what to do next. `permanent` tells a caller whether retrying the same
request can ever succeed (a corrupt file stays corrupt; a full queue drains). The HTTP layer maps them in one
place: `InvalidInput`/`InvalidImage` -> 400, `ImageTooLarge` -> 413, `QueueFull`/`EngineNotReady` -> 503.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error raised by `models`; `permanent` is False when a retry may succeed."""

    permanent: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class DescriptorError(ModelError):
    """The model description (sidecar YAML/JSON or JSON object) is malformed or inconsistent."""


class InvalidModelFile(ModelError):
    """The file is not a well-formed ONNX model (truncated, not protobuf, fails onnx.checker)."""


class ShapeInferenceFailed(InvalidModelFile):
    """ONNX shape inference found inconsistent shapes or types in the graph."""


class UnsupportedOpset(ModelError):
    """The model's opset or IR version is newer than the installed onnxruntime supports."""


class SignatureMismatch(ModelError):
    """The graph's inputs or outputs do not match the task and the description."""


class OutputMismatch(SignatureMismatch):
    """The golden run's concrete outputs do not fit the declared decoder; the message names the likely kind."""


class DigestMismatch(ModelError):
    """The .onnx bytes do not have the sha256 or size that the description records."""


class GoldenMismatch(ModelError):
    """The model's output on the golden input differs from the recorded digest beyond tolerance."""


class TooLargeToCheck(ModelError):
    """The golden input at the graph's fixed batch size would exceed the memory budget of the check."""


class ProviderUnavailable(ModelError):
    """None of the requested execution providers can create a session on this host."""


class InvalidImage(ModelError):
    """The image bytes are empty, not JPEG/PNG, or do not decode."""


class ImageTooLarge(InvalidImage):
    """The image's header claims more pixels than allowed (decompression bomb guard)."""


class InvalidInput(ModelError):
    """An input tensor is missing, unknown, or has the wrong shape or dtype; the message names it."""


class InferenceFailed(ModelError):
    """onnxruntime raised while running the model on otherwise valid-looking inputs."""


class Incomparable(ModelError):
    """Two versions' answers cannot be compared (different tasks, or an answer that cannot be read)."""


class EngineNotReady(ModelError):
    """The engine or batcher is closed or not started; retry against the replacement engine."""

    permanent = False


class QueueFull(ModelError):
    """The batcher's queue is full; shed load (HTTP 503 with Retry-After) and retry shortly."""

    permanent = False

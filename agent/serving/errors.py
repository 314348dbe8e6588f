"""Errors of the serving core, and the one rule that says which outcome is the client's fault and which ours.

`classify` gives every error raised while serving a request its HTTP status and reason. The HTTP API
answers with them (`agent.api.errors.to_http` adds its own request errors); headless serving uses the same
status to count a request as a server error or not, so telemetry means the same thing in both modes:
400/404/413 are the client's mistakes, 503 is load or not-ready, 500 is a failure of the engine itself.
"""

from __future__ import annotations

from models.errors import (
    EngineNotReady,
    ImageTooLarge,
    InferenceFailed,
    InvalidImage,
    InvalidInput,
    ModelError,
    QueueFull,
)


class ServingError(Exception):
    """Base of the serving core's own errors; `status` is the HTTP status it maps to."""

    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ModelNotFound(ServingError):
    """No model (or no such version of it) is served here."""

    status = 404


class NotReady(ServingError):
    """No model is active yet, or the model is being unloaded; retry later."""

    status = 503


class Overloaded(ServingError):
    """Too many requests in progress or queued, or the request timed out waiting; retry later."""

    status = 503


def classify(exc: BaseException) -> tuple[int, str]:
    """HTTP status and reason for an error raised while serving a request."""
    if isinstance(exc, ServingError):
        return exc.status, exc.reason
    if isinstance(exc, ImageTooLarge):
        return 413, str(exc)
    if isinstance(exc, InvalidInput | InvalidImage):
        return 400, str(exc)
    if isinstance(exc, QueueFull):
        return 503, f"overloaded: {exc}"
    if isinstance(exc, EngineNotReady):
        return 503, f"not ready: {exc}"
    if isinstance(exc, TimeoutError):
        return 503, "overloaded: the request timed out waiting for the engine; retry later"
    if isinstance(exc, InferenceFailed):
        return 500, str(exc)
    if isinstance(exc, ModelError):
        return 500, f"{type(exc).__name__}: {exc}"
    return 500, f"internal error: {type(exc).__name__}"

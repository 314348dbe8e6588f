"""Errors of the inference API and the one place where every error becomes an HTTP status.

400 bad input, 404 unknown model or version, 413 too large, 503 not ready or overloaded (with
Retry-After), 500 only for a failure of the engine itself. Every error body is `{"error": reason}`, the
shape the Open Inference Protocol (and tritonclient) expects.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect

from models.errors import (
    EngineNotReady,
    ImageTooLarge,
    InferenceFailed,
    InvalidImage,
    InvalidInput,
    ModelError,
    QueueFull,
)


class ApiError(Exception):
    """Base of the API's own errors; `status` is the HTTP status it maps to."""

    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class BadRequest(ApiError):
    """The request is malformed: bad JSON, wrong tensor description, bad parameter."""

    status = 400


class ModelNotFound(ApiError):
    """No model (or no such version of it) is served here."""

    status = 404


class TooLarge(ApiError):
    """The body or image exceeds a configured limit."""

    status = 413


class NotReady(ApiError):
    """No model is active yet, or the server is stopping; retry later."""

    status = 503


class Overloaded(ApiError):
    """Too many requests in progress or queued, or the request timed out waiting; retry later."""

    status = 503


RETRYABLE = frozenset({503})


def to_http(exc: BaseException) -> tuple[int, str]:
    """HTTP status and reason for any error raised while serving a request (the single mapping)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.reason
    if isinstance(exc, ClientDisconnect):  # the client is gone; nginx's 499, never counted as an error
        return 499, "client closed the connection before the request body arrived"
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

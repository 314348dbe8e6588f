"""Errors of the inference API and the one place where every error becomes an HTTP status.

400 bad input, 404 unknown model or version, 408 body not sent in time, 413 too large, 503 not ready or overloaded (with
Retry-After), 500 only for a failure of the engine itself. Every error body is `{"error": reason}`, the
shape the Open Inference Protocol (and tritonclient) expects. Errors of serving itself (the model, the
engine, the slot) are classified by `agent.serving.errors.classify`, the rule headless serving counts by too.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect

from agent.serving.errors import ModelNotFound, NotReady, Overloaded, ServingError, classify

__all__ = ["ApiError", "BadRequest", "BodyTimeout", "ModelNotFound", "NotReady", "Overloaded", "TooLarge", "to_http"]


class ApiError(ServingError):
    """Base of the HTTP layer's own errors; `status` is the HTTP status it maps to."""


class BadRequest(ApiError):
    """The request is malformed: bad JSON, wrong tensor description, bad parameter."""

    status = 400


class TooLarge(ApiError):
    """The body or image exceeds a configured limit."""

    status = 413


class BodyTimeout(ApiError):
    """The request's body did not arrive within `read_timeout_s` of its headers (a stalled or vanished client).

    The answer closes the connection: the rest of the body, if it ever comes, cannot be told from a next request.
    """

    status = 408


def to_http(exc: BaseException) -> tuple[int, str]:
    """HTTP status and reason for any error raised while serving a request (the single mapping)."""
    if isinstance(exc, ClientDisconnect):  # the client is gone; nginx's 499, never counted as an error
        return 499, "client closed the connection before the request body arrived"
    return classify(exc)

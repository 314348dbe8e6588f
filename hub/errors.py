"""Typed errors of the hub. Each carries a stable `code` and the HTTP status it maps to (in one place: hub.api)."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""

    code = "hub_error"
    status = 500
    retry_after_s: int | None = None
    """When to try again, in seconds (the Retry-After header; a message that gives a wait gives this one)."""
    devices: list[str] | None = None
    """Every device the error is about, for a program to act on (the error's `devices`; the message may shorten
    the list). Bounded by what the request named."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after_s: int | None = None,
        devices: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        if devices is not None:
            self.devices = devices


class InvalidInput(HubError):
    """The request or file is not acceptable; the message says why."""

    code = "invalid_input"
    status = 400


class InvalidSelector(InvalidInput):
    """A label selector does not parse; the message names the position."""

    code = "invalid_selector"


class InvalidModel(InvalidInput):
    """An uploaded model failed validation; nothing was stored."""

    code = "invalid_model"


class Unplaceable(InvalidInput):
    """A runtime option asks for more than a targeted device advertises (GPUs, MIG slices, pods)."""

    code = "insufficient_capacity"
    status = 422


class NotFound(HubError):
    """The named model, version, device or blob does not exist."""

    code = "not_found"
    status = 404


class Conflict(HubError):
    """The request contradicts what is stored (duplicate id, a version still wanted by devices)."""

    code = "conflict"
    status = 409


class StaleDocument(Conflict):
    """A document changed since it was read (another replica wrote it): read it again and retry."""

    code = "stale_document"


class LeaseLost(Conflict):
    """This hub no longer holds the leader lease: the write it tried (fenced by its token) was refused."""

    code = "lease_lost"


class TooLarge(HubError):
    """An upload or payload exceeds its configured limit."""

    code = "too_large"
    status = 413


class Unauthorized(HubError):
    """No bearer token, or one the hub does not know."""

    code = "unauthorized"
    status = 401


class Forbidden(HubError):
    """The token's role is too low for the request."""

    code = "forbidden"
    status = 403


class NotInitialised(HubError):
    """The data directory has no hub in it: run `edgefleet hub init` first."""

    code = "not_initialised"
    status = 503


class DataDirLocked(HubError):
    """Another hub process is running on this data directory (with the same replica name)."""

    code = "data_dir_locked"
    status = 409


class BrokerError(HubError):
    """The MQTT broker cannot be started or reached."""

    code = "broker_unavailable"
    status = 503


class RateLimited(HubError):
    """Too many failed authentications (or messages) from one sender; retry after the delay given."""

    code = "rate_limited"
    status = 429

    retry_after_s: int | None = 60


class WriterUnavailable(HubError):
    """The telemetry writer did not answer in time (it is restarted; what it had not committed is counted lost)."""

    code = "writer_unavailable"
    status = 503


class RefusedWindow(InvalidInput):
    """A telemetry payload the writer refuses: `reason` is "malformed", "unknown_content" or "unsupported_schema"
    (`fleet.errors.refusal_reason`: a newer agent's fields, values or schema), "foreign" (names another device) or
    "clock_ahead" (ends further ahead of the hub's clock than fleet.limits.CLOCK_SKEW_S)."""

    code = "refused_window"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DatabaseUnavailable(HubError):
    """The store's database server cannot be reached (PostgreSQL): check the database URL and the server."""

    code = "database_unavailable"
    status = 503
    retry_after_s: int | None = 5  # the writers' pace while it is away (`away_retry_s`); a "not tried" error knows


class BackupRefused(HubError):
    """`hub backup` will not write to the destination it was given (not empty, not writable, inside the data
    directory); nothing was copied."""

    code = "backup_refused"
    status = 409


class BackupFailed(HubError):
    """A backup could not be made or did not check out; the message says why."""

    code = "backup_failed"

"""Errors of the hub client. Each carries a stable `code` and says what went wrong."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client raises on purpose; `code` is stable, `message` says what to do."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class HubApiError(ClientError):
    """The hub answered with an error (`status`, and `code`, `message` and, for an error about devices, every
    device it names in `devices`, from its JSON body), or could not be reached (`status` 0, code `unreachable`)."""

    def __init__(self, status: int, code: str, message: str, *, devices: list[str] | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.devices = devices

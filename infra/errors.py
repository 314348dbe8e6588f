"""Errors of the shared plumbing. Each says what to fix."""

from __future__ import annotations


class SettingsError(ValueError):
    """A setting (environment variable, option or override) is unknown or has a bad value; the message names it.

    Permanent: nothing is retried; the operator fixes the variable and starts the process again.
    """

    code = "bad_settings"
    permanent = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

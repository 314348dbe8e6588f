"""Secrets: device MQTT passwords hashed in Mosquitto's `$7$` form, API bearer tokens hashed with sha256.

`$7$` is PBKDF2-HMAC-SHA512 (`$7$<iterations>$<base64 salt>$<base64 hash>`), the format of
`mosquitto_passwd`, so the security issue can write a broker password file straight from the registry.
API tokens are 32 random bytes: a fast sha256 is enough for them (no dictionary to attack), and it lets the
API look a token up by its hash in one indexed query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import StrEnum

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default for $7$
TOKEN_PREFIX = "eft_"  # noqa: S105  (a prefix, not a secret)


class Role(StrEnum):
    """API roles, each including the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "operator": 1, "admin": 2}[self.value]

    def allows(self, needed: Role) -> bool:
        """True when this role may do what `needed` may."""
        return self.rank >= needed.rank


def new_password() -> str:
    """A fresh device MQTT password (24 random bytes, URL-safe)."""
    return secrets.token_urlsafe(24)


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """The `$7$` PBKDF2-SHA512 hash of `password`, as mosquitto_passwd writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(password: str, hashed: str) -> bool:
    """True when `password` matches a `$7$` hash."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False


def new_token() -> str:
    """A fresh API bearer token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of a token (sha256 hex)."""
    return hashlib.sha256(token.encode()).hexdigest()

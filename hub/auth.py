"""Bearer tokens with roles (viewer < operator < admin). Tokens are stored as sha256 hashes only."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hub.credentials import Role, new_token, token_hash
from hub.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from hub.store import Store


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (recorded in the audit log) and role."""

    name: str
    role: Role


class Auth:
    """Issues and checks API tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create_token(self, name: str, role: str, *, actor: str) -> str:
        """A new token for `role`; the secret is returned once and stored only as a hash."""
        try:
            r = Role(role)
        except ValueError as e:
            raise InvalidInput(f"unknown role {role!r}: use viewer, operator or admin") from e
        if not name or len(name) > 64:
            raise InvalidInput("a token name must be 1-64 characters")
        token = new_token()
        self.store.add_token(name, r.value, token_hash(token), time.time())
        self.store.add_event(time.time(), actor, "token.create", f"token/{name}", {"role": r.value})
        return token

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer ...` header; Unauthorized when absent or unknown."""
        if not authorization:
            raise Unauthorized("missing bearer token (send `Authorization: Bearer <token>`)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or len(token) > 256:
            raise Unauthorized("malformed Authorization header: expected `Bearer <token>`")
        found = self.store.token_by_hash(token_hash(token.strip()))
        if found is None or found.revoked:
            raise Unauthorized("invalid or revoked token")
        return Principal(found.name, Role(found.role))

    @staticmethod
    def require(principal: Principal, role: Role) -> None:
        """Forbidden unless the principal's role includes `role`."""
        if not principal.role.allows(role):
            raise Forbidden(f"this needs the {role.value} role; token {principal.name!r} is {principal.role.value}")

    def revoke(self, token_id: int, *, actor: str) -> None:
        """Revoke a token at once (its next request gets 401).

        Raises:
            NotFound: unknown or already revoked.
            Conflict: the last active admin token (no one could then create or revoke tokens).
        """
        if not self.store.revoke_token(token_id):
            token = next((t for t in self.store.list_tokens() if t.id == token_id and not t.revoked), None)
            if token is not None and token.role == "admin":
                raise Conflict(
                    f"token {token_id} is the last active admin token: create another admin token first "
                    "(`edgefleet hub token NAME --role admin`), then revoke this one"
                )
            raise NotFound(f"no active token with id {token_id}")
        self.store.add_event(time.time(), actor, "token.revoke", f"token/{token_id}", {})

"""Role dependencies of the routes: `Viewer`, `Operator`, `Admin` resolve the caller's bearer token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from hub.auth import Auth, Principal
from hub.credentials import Role


def _needs(role: Role) -> Callable[[Request], Principal]:
    def check(request: Request) -> Principal:
        auth: Auth = request.app.state.auth
        principal = auth.authenticate(request.headers.get("authorization"))
        auth.require(principal, role)
        return principal

    return check


Viewer = Annotated[Principal, Depends(_needs(Role.VIEWER))]
Operator = Annotated[Principal, Depends(_needs(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(_needs(Role.ADMIN))]

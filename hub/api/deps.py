"""Role dependencies of the routes: `Viewer`, `Operator`, `Admin` resolve the caller's bearer token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from hub.api.security import authenticate
from hub.auth import Principal
from hub.credentials import Role


def _needs(role: Role) -> Callable[[Request], Principal]:
    def check(request: Request) -> Principal:
        return authenticate(request, role)  # failed-auth rate limit, principal recorded for the audit log

    return check


Viewer = Annotated[Principal, Depends(_needs(Role.VIEWER))]
Operator = Annotated[Principal, Depends(_needs(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(_needs(Role.ADMIN))]

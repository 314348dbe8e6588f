"""API hardening: a rate limit on failed authentication, CORS off unless configured, baseline security
headers on API responses (the dashboard adds its CSP in hub.dashboard.security), and an audit event for
every mutating call (POST, PUT, PATCH, DELETE), refused ones included.

`install(app, hub)` adds the middleware; `authenticate(request, role)` is what the role dependencies call.
Tokens are random 32-byte secrets stored only as sha256 hashes; the secret itself is never compared: the
store is indexed by the hash, so lookup timing can only reveal bits of a hash, from which no token can be
built (preimage resistance).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.auth import Auth, Principal
from hub.credentials import Role
from hub.dashboard.security import is_dashboard_path
from hub.errors import RateLimited, Unauthorized
from hub.ratelimit import KeyedLimiter

if TYPE_CHECKING:
    from hub.audit import AuditLog
    from hub.services import HubServices

log = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}
HSTS = "max-age=31536000"


def client_key(request: Request) -> str:
    """Who a failed authentication is counted against: the client address."""
    return request.client.host if request.client is not None else "unknown"


def authenticate(request: Request, role: Role) -> Principal:
    """Resolve the bearer token and check its role; 429 while the client has failed too often.

    Raises:
        RateLimited: the client's failed-authentication budget is spent (Retry-After says when to retry).
        Unauthorized, Forbidden: as Auth raises them.
    """
    principal = authenticate_header(request, request.headers.get("authorization"))
    auth: Auth = request.app.state.auth
    auth.require(principal, role)
    return principal


def authenticate_header(request: Request, authorization: str | None) -> Principal:
    """Authenticate an `Authorization` value (the API's header, the dashboard's login form) under the
    failed-authentication limit of the request's client; records the principal for the audit log."""
    auth: Auth = request.app.state.auth
    limiter: KeyedLimiter | None = getattr(request.app.state, "auth_failures", None)
    key = client_key(request)
    if limiter is not None and limiter.blocked(key):
        wait = max(1, round(limiter.retry_after(key)))
        raise RateLimited(f"too many failed authentications from {key}; retry in {wait} s", retry_after_s=wait)
    try:
        principal = auth.authenticate(authorization)
    except Unauthorized:
        if limiter is not None:
            limiter.allow(key)
        raise
    request.state.principal = principal
    return principal


class AuditAndHeaders:
    """ASGI middleware: security headers on every response, an audit event for every mutating call."""

    def __init__(self, app: ASGIApp, audit: AuditLog, *, hsts: bool) -> None:
        self.app = app
        self.audit = audit
        self.hsts = hsts
        self.audited = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                if not is_dashboard_path(path):  # the dashboard sets its own (CSP, same-origin referrers)
                    for k, v in API_HEADERS.items():
                        if k not in headers:
                            headers[k] = v
                if path.startswith("/api/") and "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
                if self.hsts:
                    headers["strict-transport-security"] = HSTS
                if status == 429 and "retry-after" not in headers:
                    headers["retry-after"] = "60"  # a 429 that did not say when (the failed-auth one does)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if scope.get("method") in MUTATING and status != 429:  # rate-limited floods must not flood the log
                await self._audit(scope, status)

    async def _audit(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal = state.get("principal")
        actor = principal.name if isinstance(principal, Principal) else "anonymous"
        client = scope.get("client")
        details = {"method": scope["method"], "status": status, "client": client[0] if client else None}
        subject = str(scope.get("path", ""))[:200]
        try:
            await run_in_threadpool(self.audit.record, actor, "api.call", subject, details, ts=time.time())
            self.audited += 1
        except Exception:  # the audit log must not turn a served request into an error
            log.exception("api: audit event not written")


def install(app: FastAPI, hub: HubServices) -> None:
    """Add CORS (only when origins are configured), the failed-auth limiter, headers and auditing."""
    sec = hub.settings.security
    app.state.auth_failures = KeyedLimiter(sec.auth_failure_per_minute / 60.0, sec.auth_failure_burst)
    app.add_middleware(AuditAndHeaders, audit=hub.audit, hsts=hub.security.tls is not None)
    if sec.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(sec.cors_origins), allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type"],
        )  # fmt: skip

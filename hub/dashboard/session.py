"""Dashboard sessions: the login cookie (the API token itself, HttpOnly, SameSite=Strict) and CSRF tokens.

The cookie holds the same bearer token the REST API takes, so roles and revocation work exactly as there.
Every state-changing dashboard request must carry a CSRF token derived from the session token (an HMAC only a
holder of the session can compute) in the `X-CSRF-Token` header or a `csrf` form field, and a same-origin
`Origin`/`Referer` when the browser sends one.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from hub.auth import Auth, Principal
from hub.credentials import Role
from hub.errors import Forbidden, RateLimited, Unauthorized
from hub.ratelimit import KeyedLimiter
from hub.settings import DashboardSettings

COOKIE = "edgefleet_session"
CSRF_HEADER = "x-csrf-token"
_CSRF_CONTEXT = b"edgefleet-dashboard-csrf-v1"


def csrf_token(session_token: str) -> str:
    """The CSRF token bound to one session token."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()[:40]


def session_token(request: Request) -> str | None:
    """The token in the session cookie, if any (bounded in size)."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 256:
        return None
    return token


def client_key(request: Request) -> str:
    """Who failed authentications are counted against: the client address (as the REST API counts them)."""
    return request.client.host if request.client is not None else "unknown"


def check_token(request: Request, auth: Auth, token: str) -> Principal:
    """The principal of `token`. Failures count against the client in the API's failed-auth limiter
    (`app.state.auth_failures`), so the login form and forged cookies are no way around it; RateLimited
    (429) while the client's budget is spent."""
    limiter: KeyedLimiter | None = getattr(request.app.state, "auth_failures", None)
    key = client_key(request)
    if limiter is not None and limiter.blocked(key):
        wait = max(1, round(limiter.retry_after(key)))
        raise RateLimited(f"too many failed logins from {key}; try again in {wait} s", retry_after_s=wait)
    try:
        return auth.authenticate(f"Bearer {token}")
    except Unauthorized:
        if limiter is not None:
            limiter.allow(key)
        raise


def principal(request: Request, auth: Auth) -> Principal:
    """The logged-in principal; Unauthorized without a valid session."""
    token = session_token(request)
    if token is None:
        raise Unauthorized("not logged in")
    return check_token(request, auth, token)


def check_csrf(request: Request, form_value: str | None = None) -> None:
    """Forbidden unless the request carries this session's CSRF token and comes from this origin."""
    token = session_token(request)
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    if token is None or not hmac.compare_digest(sent.encode(), csrf_token(token).encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    check_origin(request)


def check_origin(request: Request) -> None:
    """Forbidden when the browser says the request comes from another origin."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise Forbidden("cross-origin request refused")


def require(p: Principal, role: Role) -> None:
    """Forbidden unless `p` has `role` (the dashboard's wording)."""
    Auth.require(p, role)


def set_session(response: Response, token: str, settings: DashboardSettings) -> None:
    """Store the token in the session cookie."""
    response.set_cookie(
        COOKIE, token, max_age=settings.session_max_age_s, httponly=True, samesite="strict",
        secure=settings.cookie_secure, path="/",
    )  # fmt: skip


def clear_session(response: Response, settings: DashboardSettings) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=settings.cookie_secure)

"""Security headers on every dashboard response (not on the REST API, /docs or /metrics)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_NOT_DASHBOARD = ("/api/", "/docs", "/redoc", "/openapi.json", "/metrics", "/healthz")


def _cache_control(path: str) -> str:
    if path.startswith("/static/vendor/"):
        return "public, max-age=86400"  # file names carry the version
    if path.startswith("/static/"):
        return "no-cache"
    return "no-store"


def is_dashboard_path(path: str) -> bool:
    """True for paths the dashboard serves (everything but the API, its docs and the ops endpoints)."""
    return not path.startswith(_NOT_DASHBOARD)


class SecurityHeaders:
    """ASGI middleware adding CSP, frame, sniffing and referrer headers to dashboard responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_dashboard_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in HEADERS.items():
                    if k not in headers:
                        headers[k] = v
                if "cache-control" not in headers:
                    headers["cache-control"] = _cache_control(scope["path"])
            await send(message)

        await self.app(scope, receive, send_with_headers)

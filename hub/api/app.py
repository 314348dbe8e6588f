"""The REST API app: thin routes over the hub's services, bearer-token roles, errors as JSON in one place.

Every error answers `{"error": {"code": "...", "message": "..."}}` with the status of its HubError class
(400, 401, 403, 404, 409, 413); request validation failures are 400 `invalid_request`. An error about devices
(a batch naming ids already enrolled) adds `"devices": [...]`, every one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.routes_fleet import fleet_router
from hub.api.routes_models import models_router
from hub.api.routes_rollouts import rollouts_router
from hub.api.routes_security import security_router
from hub.api.security import install as install_security
from hub.dashboard import mount_dashboard
from hub.errors import HubError
from hub.metrics import metrics_text
from hub.views.schemas import Health

if TYPE_CHECKING:
    from hub.services import HubServices

log = logging.getLogger(__name__)
HtmlError = Callable[[Request, int, str], Awaitable[Response]]  # the dashboard's error page (when mounted)


def _error(status: int, code: str, message: str, devices: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if devices is not None:
        body["devices"] = devices
    return JSONResponse({"error": body}, status_code=status)


def _wants_html(request: Request) -> bool:
    """A browser asking for a page outside the API (API paths answer JSON to everyone)."""
    path = request.url.path
    if path.startswith(("/api/", "/docs", "/openapi.json", "/metrics", "/healthz")):
        return False
    return "text/html" in request.headers.get("accept", "")


def create_app(hub: HubServices, *, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The FastAPI app serving `hub` (OpenAPI at /docs and /openapi.json).

    `extra_routers` are mounted after the hub's own routes (the dashboard and rollouts add theirs this way);
    their HubErrors map to JSON errors like everything else.
    """
    app = FastAPI(
        title="edgefleet hub",
        description="Models, devices, deployments, telemetry and events of an edge fleet. "
        "Send `Authorization: Bearer <token>`; roles: viewer < operator < admin. "
        'Every error answers `{"error": {"code", "message"}}` with the status each operation lists.',
        version="1",
    )

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without its 422 answers: request validation failures answer 400 here."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for op in operations.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(HubError)
    async def _hub_error(_r: Request, e: HubError) -> JSONResponse:
        response = _error(e.status, e.code, e.message, e.devices)
        if e.retry_after_s is not None:
            response.headers["retry-after"] = str(e.retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(400, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Response:
        page: HtmlError | None = getattr(request.app.state, "html_error", None)
        if page is not None and _wants_html(request):
            return await page(request, e.status_code, str(e.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    app.state.auth = hub.auth
    app.add_middleware(Unexpected)  # innermost: audit and security headers wrap its 500 like any response
    install_security(app, hub)

    @app.get("/healthz", tags=["ops"], summary="Liveness and broker connection (no token needed)")
    def healthz() -> Health:
        return Health(status="ok", mqtt_connected=hub.mqtt_connected, broker_url=hub.broker_url)

    @app.get(
        "/metrics", tags=["ops"], summary="Prometheus metrics (no token needed)", response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "exposition text"}},
    )  # fmt: skip
    def metrics() -> Response:
        return Response(metrics_text(hub), media_type="text/plain; version=0.0.4")

    app.include_router(models_router(hub))
    app.include_router(fleet_router(hub))
    app.include_router(rollouts_router(hub))
    app.include_router(security_router(hub))
    for router in extra_routers:
        app.include_router(router)
    mount_dashboard(app, hub)
    return app


class Unexpected:
    """ASGI middleware: an exception no handler mapped becomes one logged 500 with the JSON error shape.

    Starlette's handler for `Exception` re-raises after answering, so the server logged the traceback a
    second time and reset the keep-alive connection; answering here keeps the connection and logs once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as e:
            log.exception("api: unexpected error on %s %s", scope.get("method"), str(scope.get("path"))[:200])
            if started:  # too late for an error response: the server closes the connection
                raise
            response = _error(500, "internal", f"unexpected {type(e).__name__}; see the hub log")
            await response(scope, receive, send)

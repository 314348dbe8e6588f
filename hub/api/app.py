"""The REST API app: thin routes over the hub's services, bearer-token roles, errors as JSON in one place.

Every error answers `{"error": {"code": "...", "message": "..."}}` with the status of its HubError class
(400, 401, 403, 404, 409, 413); request validation failures are 400 `invalid_request`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.openapi import install as document_errors
from hub.api.routes_fleet import fleet_router
from hub.api.routes_models import models_router
from hub.api.routes_rollouts import rollouts_router
from hub.api.routes_security import security_router
from hub.api.security import install as install_security
from hub.dashboard import mount_dashboard
from hub.errors import HubError, RateLimited
from hub.metrics import metrics_text

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(hub: Hub, *, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The FastAPI app serving `hub` (OpenAPI at /docs and /openapi.json).

    `extra_routers` are mounted after the hub's own routes (the dashboard and rollouts add theirs this way);
    their HubErrors map to JSON errors like everything else.
    """
    app = FastAPI(
        title="edgefleet hub",
        description="Models, devices, deployments, telemetry and events of an edge fleet. "
        "Send `Authorization: Bearer <token>`; roles: viewer < operator < admin.",
        version="1",
    )

    @app.exception_handler(HubError)
    async def _hub_error(_r: Request, e: HubError) -> JSONResponse:
        response = _error(e.status, e.code, e.message)
        if isinstance(e, RateLimited):
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
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    app.state.auth = hub.auth
    app.add_middleware(Unexpected)  # innermost: audit and security headers wrap its 500 like any response
    install_security(app, hub)

    @app.get("/healthz", tags=["ops"], summary="Liveness and broker connection (no token needed)")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "mqtt_connected": hub.mqtt_connected, "broker_url": hub.broker_url}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics (no token needed)")
    def metrics() -> Response:
        return Response(metrics_text(hub), media_type="text/plain; version=0.0.4")

    app.include_router(models_router(hub))
    app.include_router(fleet_router(hub))
    app.include_router(rollouts_router(hub))
    app.include_router(security_router(hub))
    for router in extra_routers:
        app.include_router(router)
    mount_dashboard(app, hub)
    document_errors(app)
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

"""The hub's API under uvicorn (`infra.server.HttpServer`): a background thread (tests, embedding) or the
foreground (`hub serve`)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.types import ASGIApp

from hub.api.app import create_app
from infra.server import HttpServer, ServerCert

if TYPE_CHECKING:
    from hub.services import HubServices


def api_server(
    hub: HubServices, *, host: str | None = None, port: int | None = None, app: ASGIApp | None = None
) -> HttpServer:
    """Bind the started hub's API socket now and return the server (not yet serving: `start()` or `serve()`).

    Serves `app` (default: `create_app(hub)`) over HTTPS when the hub's TLS is on. Sets `hub.api_url` (what
    device bundles tell devices) when the settings do not: a wildcard address is no address to dial, so the
    host name stands in for it.

    Raises:
        OSError: the address cannot be bound.
    """
    host = host or hub.settings.api.host
    port = hub.settings.api.port if port is None else port
    tls = hub.security.tls  # a started hub: its services exist
    files = ServerCert(cert=tls.api_cert, key=tls.api_key) if tls else None
    served = app or create_app(hub)
    server = HttpServer(served, host=host, port=port, tls=files, name="hub-api")
    if isinstance(served, Starlette):  # the dashboard's live streams end as soon as the server is stopping,
        served.state.stopping = lambda: server.server.should_exit  # so an open browser never holds it up
    if hub.api_url is None:
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        scheme = "https" if files else "http"
        hub.api_url = f"{scheme}://{f'[{shown}]' if ':' in shown else shown}:{server.port}"
    return server

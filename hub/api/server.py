"""The hub's API under uvicorn (`infra.server.HttpServer`): a background thread (tests, embedding) or the
foreground (`hub serve`)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from starlette.types import ASGIApp

from hub.api.app import create_app
from infra.server import HttpServer, ServerCert

if TYPE_CHECKING:
    from hub.runtime import Hub


def api_server(hub: Hub, *, host: str | None = None, port: int | None = None, app: ASGIApp | None = None) -> HttpServer:
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
    server = HttpServer(app or create_app(hub), host=host, port=port, tls=files, name="hub-api")
    if hub.api_url is None:
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        scheme = "https" if files else "http"
        hub.api_url = f"{scheme}://{f'[{shown}]' if ':' in shown else shown}:{server.port}"
    return server

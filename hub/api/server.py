"""Run the API with uvicorn: in a background thread (tests, embedding) or in the foreground (`hub serve`)."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp

from hub.api.app import create_app

if TYPE_CHECKING:
    from hub.services import HubServices


class ApiServer:
    """uvicorn serving a hub's API on a socket bound up front (so port 0 resolves before serving)."""

    def __init__(
        self, hub: HubServices, *, host: str | None = None, port: int | None = None, app: ASGIApp | None = None
    ) -> None:
        """Bind the socket now; serve `app` (default: `create_app(hub)`) once started."""
        self.hub = hub
        host = host or hub.settings.api.host
        port = hub.settings.api.port if port is None else port
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them: no start-up race
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.tls = hub.security.tls  # HTTPS with the hub's TLS files
        if hub.api_url is None:  # what bundles tell devices: a wildcard address is no address to dial
            shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
            scheme = "https" if self.tls else "http"
            hub.api_url = f"{scheme}://{f'[{shown}]' if ':' in shown else shown}:{self.port}"
        tls = {"ssl_certfile": str(self.tls.api_cert), "ssl_keyfile": str(self.tls.api_key)} if self.tls else {}
        config = uvicorn.Config(
            app or create_app(hub), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
            **tls,  # type: ignore[arg-type]
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def serve(self) -> None:
        """Serve in this thread until interrupted (SIGINT/SIGTERM)."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread; returns once it accepts requests."""
        self._thread = threading.Thread(target=self.serve, name="hub-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop a background server."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()

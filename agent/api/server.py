"""Run the API under uvicorn: in a background thread of the agent (`ApiServer`) or blocking (`serve`)."""

from __future__ import annotations

import contextlib
import socket
import threading

import uvicorn

from agent.api.app import create_asgi
from agent.api.inference import FastPath
from agent.api.settings import ApiSettings
from agent.serving import ModelSlot
from models.batcher import BatcherOptions

_START_TIMEOUT_S = 30.0


def _configure(settings: ApiSettings, slot: ModelSlot) -> None:
    slot.defaults = BatcherOptions(
        max_batch=settings.max_batch, max_delay_ms=settings.max_queue_delay_ms, max_queue=settings.max_queue
    )
    slot.max_concurrency = settings.max_concurrency
    slot.request_timeout_s = settings.request_timeout_s
    slot.activate_timeout_s = settings.activate_timeout_s


def _server(settings: ApiSettings, slot: ModelSlot) -> uvicorn.Server:
    """uvicorn around the app; the slot learns how many HTTP requests uvicorn is handling."""
    app = create_asgi(settings, slot)
    server = uvicorn.Server(_config(settings, app))
    tasks = server.server_state.tasks  # one per request being handled, created before its handler runs
    slot.in_progress = tasks.__len__
    return server


def _config(settings: ApiSettings, app: FastPath) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
        server_header=False,
    )


class ApiServer:
    """The inference API on a background thread; `start()` returns once it accepts connections."""

    def __init__(self, settings: ApiSettings, slot: ModelSlot) -> None:
        self.settings = settings
        self.slot = slot
        _configure(settings, slot)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """http://host:port with the port actually bound (useful with port 0); kept after stop()."""
        if self._url is None:
            raise RuntimeError("server is not started")
        return self._url

    def start(self) -> None:
        """Bind, start uvicorn on a thread and wait until it serves.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: uvicorn did not start within 30 s (its error is in the log).
        """
        if self._thread is not None:
            return
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.host, self.settings.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        server = _server(self.settings, self.slot)
        self._server = server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), name="edgefleet-api", daemon=True)
        self._thread.start()
        deadline = _START_TIMEOUT_S
        while not server.started and self._thread.is_alive() and deadline > 0:
            self._thread.join(0.01)
            deadline -= 0.01
        if not server.started:
            self.stop()
            raise RuntimeError("the inference API did not start (see the log)")

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout_s), close batchers."""
        server, thread, sock = self._server, self._thread, self._sock
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(self.settings.drain_timeout_s + 10)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._server = self._thread = None

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(settings: ApiSettings, slot: ModelSlot) -> None:
    """Serve until interrupted (SIGINT/SIGTERM): cluster mode's `edgefleet agent serve`."""
    _configure(settings, slot)
    server = _server(settings, slot)
    server.config.host, server.config.port = settings.host, settings.port
    server.run()

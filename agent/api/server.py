"""Run the API under uvicorn (`infra.server.HttpServer`): in a background thread of the agent (`ApiServer`) or
blocking (`serve`)."""

from __future__ import annotations

from agent.api.app import create_asgi
from agent.api.protocol import protocol_for
from agent.api.settings import ApiSettings
from agent.serving import ModelSlot
from infra.server import HttpServer
from models.batcher import BatcherOptions

_START_TIMEOUT_S = 30.0


def _configure(settings: ApiSettings, slot: ModelSlot) -> None:
    slot.defaults = BatcherOptions(
        max_batch=settings.max_batch, max_delay_ms=settings.max_queue_delay_ms, max_queue=settings.max_queue
    )
    slot.max_concurrency = settings.max_concurrency
    slot.request_timeout_s = settings.request_timeout_s
    slot.activate_timeout_s = settings.activate_timeout_s


class ApiServer:
    """The inference API on a background thread (`infra.server.HttpServer`); `start()` returns once it serves."""

    def __init__(self, settings: ApiSettings, slot: ModelSlot) -> None:
        self.settings = settings
        self.slot = slot
        _configure(settings, slot)
        self._http: HttpServer | None = None
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
        if self._http is not None:
            return
        http = _http_server(self.settings, self.slot)
        self._http, self._url = http, http.url
        try:
            http.start(_START_TIMEOUT_S)
        except RuntimeError:
            self._http = None
            raise

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout_s), close batchers."""
        if self._http is not None:
            self._http.stop()
        self._http = None

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(settings: ApiSettings, slot: ModelSlot) -> None:
    """Serve until interrupted (SIGINT/SIGTERM): cluster mode's `edgefleet agent serve`."""
    _configure(settings, slot)
    _http_server(settings, slot).serve()


def _http_server(settings: ApiSettings, slot: ModelSlot) -> HttpServer:
    """The app under uvicorn, inference requests served from its parser (`agent.api.protocol`); the slot learns
    how many HTTP requests uvicorn is handling."""
    app = create_asgi(settings, slot)
    protocol = protocol_for(app.handlers, settings.max_body_bytes)
    http = HttpServer(
        app, host=settings.host, port=settings.port, drain_timeout_s=settings.drain_timeout_s, fast=True,
        protocol=protocol, lifespan="on", name="edgefleet-api",
    )  # fmt: skip
    slot.in_progress = http.tasks.__len__
    return http

"""uvicorn serving an ASGI app: on a background thread (agents, tests, embedding) or in the foreground.

The one way the hub's REST API and the agent's inference API are served. The listening socket is bound up
front, so port 0 resolves to a real port before serving and a taken port fails at once with OSError;
connections that arrive before uvicorn accepts wait in the socket's backlog, so there is no start-up race.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn

_BACKLOG = 2048


def bind_error(e: OSError, host: str, port: int, *, flag: str, env: str) -> str:
    """Why a server cannot listen on `host:port`, in one line that names the option (`flag`) and the
    environment variable (`env`) that choose another port."""
    if e.errno == errno.EADDRINUSE:
        taken = f"port {port} on {host} is taken (another process listens there)"
        return f"{taken}: pass {flag} (0 picks a free one) or set {env}"
    if e.errno == errno.EACCES:
        return f"no permission to listen on {host}:{port}: use a port above 1023 ({flag} or {env})"
    return f"cannot listen on {host}:{port}: {e.strerror or e}"


@dataclass(frozen=True)
class ServerCert:
    """A server certificate and its private key (PEM files): serve HTTPS."""

    cert: Path
    key: Path


class HttpServer:
    """One ASGI app under uvicorn on a socket bound at construction.

    Args:
        app: the ASGI application.
        host: interface to listen on (an IPv6 address listens on IPv6).
        port: TCP port; 0 picks a free one (`port` then holds the bound one).
        tls: serve HTTPS with these files (None: plain HTTP).
        drain_timeout_s: on stop, how long requests in flight may finish before connections close.
        fast: uvloop and httptools (the inference hot path); False: uvicorn's defaults.
        protocol: the HTTP protocol class instead of uvicorn's (with `fast`: a subclass of its httptools one,
            such as `agent.api.protocol.InferenceProtocol`).
        lifespan: run the app's startup/shutdown events ("on") or not ("off").
        name: the serving thread's name.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        tls: ServerCert | None = None,
        drain_timeout_s: float = 5.0,
        fast: bool = False,
        protocol: type[asyncio.Protocol] | None = None,
        lifespan: Literal["on", "off"] = "off",
        name: str = "http-server",
    ) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.sock = sock
        self.host, self.port = host, int(sock.getsockname()[1])
        self.tls = tls
        self.drain_timeout_s = drain_timeout_s
        self.name = name
        options: dict[str, Any] = {"loop": "uvloop", "http": "httptools"} if fast else {}
        if protocol is not None:
            options["http"] = protocol
        if tls is not None:
            options |= {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            access_log=False,  # per-request logging cost ~3.7 ms a request (pitfalls.md)
            log_level="warning",
            timeout_graceful_shutdown=max(1, round(drain_timeout_s)),
            server_header=False,
            **options,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http(s)://host:port` with the bound port (kept after `stop`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tasks(self) -> set[Any]:
        """uvicorn's set of tasks, one per request being handled (created before its handler runs)."""
        return self.server.server_state.tasks

    def serve(self) -> None:
        """Serve in this thread until interrupted (SIGINT/SIGTERM: uvicorn's handlers) or `stop`."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> None:
        """Serve on a background thread; return once it accepts requests.

        Raises:
            RuntimeError: uvicorn did not start within `timeout` (its error is in the log).
        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.serve, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self.name} did not start (see the log)")
            self._thread.join(0.01)

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to `drain_timeout_s`), close the socket."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.drain_timeout_s + 10)
            self._thread = None
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Liveness and readiness over HTTP for the cluster-mode control agent (kubelet's probes).

The control agent serves no inference API, so it has no `/v2/health/*`; this is the whole of its HTTP
surface: `GET /livez` and `GET /readyz` answer 200 `ok` or 503 with the reason, anything else 404. It is the
standard library's threaded HTTP server on purpose: the control pod stays without FastAPI and uvicorn
(about 40 MiB of its small memory limit), and two plain-text routes need neither.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.errors import AgentError

log = logging.getLogger(__name__)
Check = Callable[[], str | None]  # None: healthy; otherwise the reason it is not


class HealthServer:
    """Serves `/livez` and `/readyz` from two checks on a thread of its own.

    Args:
        host: interface to listen on ("0.0.0.0" in a pod: kubelet probes the pod's IP).
        port: TCP port; 0 picks a free one (see `port` after `start()`).
        live: why the process is stuck (kubelet restarts it after repeated failures), or None.
        ready: why the agent is not ready yet (shown as not READY, never restarted for it), or None.
    """

    def __init__(self, host: str, port: int, *, live: Check, ready: Check) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self._checks = {"/livez": live, "/readyz": ready}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            AgentError: the port cannot be bound (code `health_port`).
        """
        checks = self._checks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self._answer(404, "not found: /livez or /readyz")
                    return
                try:
                    reason = check()
                except Exception as e:  # a failing check is an unhealthy answer, never a dead server thread
                    reason = f"health check failed: {type(e).__name__}: {e}"
                self._answer(200, "ok") if reason is None else self._answer(503, reason)

            def _answer(self, code: int, text: str) -> None:
                body = (text[:1000] + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes come every few seconds: no access log

        try:
            self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        except OSError as e:
            where = f"{self.host}:{self.requested_port}"
            raise AgentError(f"cannot serve health on {where}: {e}", code="health_port") from e
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-health", daemon=True)
        self._thread.start()
        log.info("health on http://%s:%d/livez and /readyz", self.host, self.port)

    def stop(self) -> None:
        """Stop serving (safe to call twice)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)


def stalled(heartbeat: Callable[[], float], max_stall_s: float) -> Check:
    """A liveness check: unhealthy when `heartbeat()` (a `time.monotonic()` stamp) is older than `max_stall_s`."""

    def check() -> str | None:
        age = time.monotonic() - heartbeat()
        if age <= max_stall_s:
            return None
        return f"the control loop has not turned for {age:.0f}s (limit {max_stall_s:g}s)"

    return check

"""The one HTTP client of the hub's REST API: the CLI, the simulator's enrolment and scripts use it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from hubclient.errors import HubApiError

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset((429, 503))
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE"))


class _ProgressReader:
    """A file wrapper that reports bytes read (for an upload progress bar)."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._on_read(len(data))
        return data


def _not_the_api(r: httpx.Response) -> str:
    """An error answer without the API's JSON error: say what answered, from where, and what it sent."""
    text = " ".join(r.text.split())[:300]
    where = f"HTTP {r.status_code} {r.reason_phrase} from {r.request.method} {r.request.url}"
    said = f": {text}" if text else " with an empty body"
    return f"{where}{said} (not the hub API's error format: is the URL the hub's API, not a proxy in front of it?)"


def _retry_after_s(r: httpx.Response) -> float | None:
    """The wait a 429 or 503 answer asks for (its Retry-After in seconds), or None."""
    if r.status_code not in RETRY_STATUSES:
        return None
    try:
        wait = float(r.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date (the hub sends seconds)
    return wait if 0 <= wait <= 3600 else None


class HubClient:
    """Calls the hub API with a bearer token; raises HubApiError for error answers.

    A request that changes nothing twice (GET, PUT, DELETE...) answered 503 or 429 with a Retry-After (the hub's
    database away for a moment, a rate limit) is sent again after that wait, for up to `retry_for_s` in all;
    then the error is raised. POSTs are never sent twice.
    """

    def __init__(self, url: str, token: str | None, *, timeout: float = 300.0, retry_for_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retry_for_s = retry_for_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; the decoded JSON answer (None for 204)."""
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                raise HubApiError(0, "unreachable", f"cannot reach the hub at {self._http.base_url}: {e}") from e
            wait = _retry_after_s(r) if method.upper() in IDEMPOTENT else None
            if wait is None or time.monotonic() + wait > deadline:
                break
            log.warning("hub: %s %s answered %d; again in %g s (Retry-After)", method, path, r.status_code, wait)
            time.sleep(wait)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                devices = err.get("devices")
                named = [str(d) for d in devices] if isinstance(devices, list) else None
                raise HubApiError(r.status_code, str(err["code"]), str(err["message"]), devices=named)
            except (ValueError, KeyError, TypeError):
                raise HubApiError(r.status_code, "http_error", _not_the_api(r)) from None
        return None if r.status_code == 204 else r.json()

    def push_model(
        self,
        onnx: Path,
        descriptor: dict[str, Any],
        *,
        name: str | None = None,
        version: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a model file (streamed) with its description."""
        data = {"descriptor": json.dumps(descriptor)}
        if name:
            data["name"] = name
        if version:
            data["version"] = version
        with onnx.open("rb") as f:
            body: Any = _ProgressReader(f, on_progress) if on_progress else f
            return dict(self.request("POST", "/api/v1/models", data=data, files={"file": (onnx.name, body)}))

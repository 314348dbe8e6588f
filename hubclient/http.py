"""The one HTTP client of the hub's REST API: the CLI, the simulator's enrolment and scripts use it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from hubclient.errors import HubApiError


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


class HubClient:
    """Calls the hub API with a bearer token; raises HubApiError for error answers."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; the decoded JSON answer (None for 204)."""
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise HubApiError(0, "unreachable", f"cannot reach the hub at {self._http.base_url}: {e}") from e
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise HubApiError(r.status_code, str(err["code"]), str(err["message"]))
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

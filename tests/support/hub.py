"""A real hub for tests: `start_hub(...)` and the `running_hub` fixture.

Starts a `Hub` (store, MQTT link, ingestion, chunk serving) on the given broker with a temporary data dir
and serves its API over real HTTP on a free loopback port. Other teams use it for end-to-end tests:

    from tests.support.hub import running_hub  # noqa: F401  (in a conftest.py: makes the fixture available)

    def test_x(running_hub): ...
        running_hub.url, running_hub.admin_token, running_hub.hub, running_hub.client()
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.api.server import api_server
from hub.runtime import Hub, init_hub
from hub.settings import HubSettings
from infra.server import HttpServer
from tests.support.broker import Broker


def hub_settings(data_dir: Path, broker_url: str | None, topic_prefix: str, **overrides: Any) -> HubSettings:
    """Settings tuned for tests: API on a free port, fast chunk rounds, no background sweeps."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "topic_prefix": topic_prefix,
        "broker": {"url": broker_url, "local_port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "transfer": {"round_interval_s": 0.01, "join_gap_s": 0.05},
        "retention": {"sweep_interval_s": 3600},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return HubSettings.model_validate(base)


@dataclass
class RunningHub:
    """A started hub and its API server."""

    settings: HubSettings
    admin_token: str
    hub: Hub = field(init=False)
    api: HttpServer = field(init=False)

    def start(self) -> RunningHub:
        self.hub = Hub(self.settings)
        self.hub.start()
        try:
            self.api = api_server(self.hub)
            self.api.start()
        except BaseException:
            self.hub.stop()
            raise
        return self

    def stop(self) -> None:
        self.api.stop()
        self.hub.stop()

    def restart(self) -> RunningHub:
        """Stop and start again on the same data dir (a new API port)."""
        self.stop()
        return self.start()

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def client(self, token: str | None = "admin") -> httpx.Client:
        """An HTTP client on the API; `token="admin"` uses the admin token, None sends none."""
        if token == "admin":
            token = self.admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def token(self, role: str) -> str:
        """A new token of `role`."""
        with self.client() as c:
            r = c.post("/api/v1/tokens", json={"name": f"test-{role}", "role": role})
            r.raise_for_status()
            return str(r.json()["token"])

    def push_model(self, onnx: Path, descriptor: Path | dict[str, Any], **fields: str) -> httpx.Response:
        """Upload a model through the API (descriptor as a sidecar path or a dict)."""
        if isinstance(descriptor, Path):
            from models.descriptor import ModelDescriptor  # noqa: PLC0415

            descriptor = ModelDescriptor.load(descriptor).to_json()
        with self.client() as c, onnx.open("rb") as f:
            data = {"descriptor": json.dumps(descriptor), **fields}
            return c.post("/api/v1/models", data=data, files={"file": (onnx.name, f, "application/octet-stream")})


def start_hub(data_dir: Path, broker_url: str | None, topic_prefix: str, **overrides: Any) -> RunningHub:
    """Initialise a hub in `data_dir` and start it (and its API)."""
    settings = hub_settings(data_dir, broker_url, topic_prefix, **overrides)
    token = init_hub(settings)
    return RunningHub(settings, token).start()


@pytest.fixture
def running_hub(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[RunningHub]:
    """A hub on the session broker with a fresh data dir; stopped after the test."""
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix)
    yield h
    h.stop()

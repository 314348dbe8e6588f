"""The client sends a request that changes nothing twice again when the hub answers 503 with a Retry-After (its
database away for a moment), and never a POST. Against a real hub on a real PostgreSQL made to refuse
connections (`PostgresServer.block`), back a moment later."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hubclient import HubApiError, HubClient
from tests.support.broker import Broker
from tests.support.hub import start_hub
from tests.support.postgres import PostgresServer


def test_a_read_waits_out_a_short_database_outage_and_a_write_is_not_sent_twice(
    broker: Broker, postgres: PostgresServer, topic_prefix: str, tmp_path: Path
) -> None:
    url = postgres.create_database()
    h = start_hub(tmp_path / "hub", broker.url, topic_prefix, database_url=url)
    back = threading.Timer(2.0, lambda: postgres.block(url, blocked=False))
    try:
        with HubClient(h.url, h.admin_token) as c:
            c.request("POST", "/api/v1/devices", json={"id": "cam-1"})
            postgres.block(url)
            with pytest.raises(HubApiError) as e:  # a POST is not sent again: the caller decides
                c.request("POST", "/api/v1/devices", json={"id": "cam-2"})
            assert (e.value.status, e.value.code) == (503, "database_unavailable")
            back.start()
            devices = c.request("GET", "/api/v1/devices")  # 503 with Retry-After, then the answer
            assert [d["id"] for d in devices] == ["cam-1"]
        with HubClient(h.url, h.admin_token, retry_for_s=0) as c:  # no time to wait: the 503 is raised
            postgres.block(url)
            with pytest.raises(HubApiError) as e:
                c.request("GET", "/api/v1/devices")
            assert (e.value.status, e.value.code) == (503, "database_unavailable")
    finally:
        back.cancel()
        postgres.block(url, blocked=False)
        h.stop()

"""Simulated agents enrol through the product hub's REST API and come online there; refusals are clear."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.config import SimConfig
from sim.enrol import enrol_via_hub, load_bundles
from sim.errors import EnrolmentError
from sim.profile import Profiles
from sim.swarm import Simulator
from tests.support.broker import Broker
from tests.support.mqtt import wait_for

if importlib.util.find_spec("hub.runtime") is None:  # pragma: no cover - only before the hub is merged
    pytest.skip("needs the product hub (hub.runtime), which lands on another branch", allow_module_level=True)

from hub.api.server import api_server  # noqa: E402
from hub.runtime import Hub, init_hub  # noqa: E402
from hub.settings import HubSettings  # noqa: E402


@pytest.fixture
def hub_api(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[Hub, str, str]]:
    settings = HubSettings.model_validate({
        "data_dir": tmp_path / "hub", "topic_prefix": topic_prefix, "broker": {"url": broker.url},
        "api": {"host": "127.0.0.1", "port": 0}, "retention": {"sweep_interval_s": 3600},
    })  # fmt: skip
    token = init_hub(settings)
    hub = Hub(settings)
    hub.start()
    api = api_server(hub)
    api.start()
    try:
        yield hub, api.url, token
    finally:
        api.stop()
        hub.stop()


def test_agents_enrol_through_the_api_and_come_online(hub_api: tuple[Hub, str, str], tmp_path: Path) -> None:
    hub, url, token = hub_api
    identities = enrol_via_hub(url, token, 3, id_prefix="enr", labels={"ring": "a"}, bundle_dir=tmp_path / "b")
    assert [i.device_id for i in identities] == ["enr-00000", "enr-00001", "enr-00002"]
    assert all(i.username == i.device_id and i.password for i in identities)
    assert [i.device_id for i in load_bundles(tmp_path / "b")] == [i.device_id for i in identities]
    sim = Simulator(identities, SimConfig(telemetry_s=0.2), Profiles.parse([]), tmp_path / "cache", threads=1)
    with sim:
        wait_for(lambda: all(d.status == "online" for d in hub.store.list_devices()), timeout=20)
        wait_for(lambda: hub.ingest.accepted["telemetry"] >= 3, timeout=20)
    assert {d.labels["ring"] for d in hub.store.list_devices()} == {"a"}
    with pytest.raises(EnrolmentError, match="refused enr-00000..: HTTP 409"):
        enrol_via_hub(url, token, 1, id_prefix="enr")  # already enrolled
    with pytest.raises(EnrolmentError, match="HTTP 401"):
        enrol_via_hub(url, "not-a-token", 1, id_prefix="other")

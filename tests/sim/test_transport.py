"""The multiplexing transport: thousands of endpoints can be added before it starts; bad URLs are refused."""

from __future__ import annotations

import threading

import pytest

from fleet.address import BrokerAddress
from fleet.errors import InvalidBrokerUrl
from sim.actions import Action, Publish
from sim.enrol import direct_identities
from sim.errors import TransportError
from sim.transport import Transport


class Idle:
    """An endpoint that does nothing."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.connected = False

    def will(self, now: float) -> Publish | None:
        return None

    def on_connect(self, now: float) -> list[Action]:
        return []

    def on_disconnect(self) -> None:
        pass

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Action]:
        return []

    def tick(self, now: float) -> list[Action]:
        return []


def test_adding_thousands_of_endpoints_before_start_does_not_block() -> None:
    transport = Transport(threads=2)
    identities = direct_identities("mqtt://127.0.0.1:1", "A" * 43, 3000, id_prefix="t")
    done = threading.Event()

    def add_all() -> None:
        for ident in identities:
            transport.add(Idle(ident.device_id), ident)
        done.set()

    threading.Thread(target=add_all, daemon=True).start()
    assert done.wait(60), "Transport.add blocked (the wake pipe filled up before the shards ran)"
    transport.stop(timeout=1)


@pytest.mark.parametrize("url", ["http://h:1", "mqtt://", "mqtt://h:99999", "h:1883"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidBrokerUrl):
        BrokerAddress.parse(url)


def test_fd_limit_is_raised_or_refused_clearly() -> None:
    transport = Transport(threads=1)
    transport._count = 10**9  # as if that many endpoints were added: more than any hard limit
    with pytest.raises(TransportError, match="hard limit"):
        transport.start()
    transport.stop(timeout=1)

"""The MQTT link: retained birth with capabilities, retained last will, reconnect, backoff, commands."""

from __future__ import annotations

import random
import socket
import time

import pytest

from fleet.address import BrokerAddress
from fleet.backoff import Backoff
from fleet.codec import decode, encode
from fleet.errors import InvalidBrokerUrl
from fleet.messages import Command, CommandName, DeviceStatus
from tests.agent.conftest import AgentFactory
from tests.support.broker import Broker
from tests.support.hubside import HubSide
from tests.support.mqtt import TestClient


def test_birth_is_retained_with_capabilities_and_clean_stop_says_offline(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory
) -> None:
    agent, _ = make_agent(hub, device_id, broker.url)
    assert agent.wait_ready(10)
    # the hub side saw the birth, so the broker has stored it: a later subscriber gets the retained copy
    birth = hub.wait(lambda: next((s for s in hub.statuses if s.state == "online"), None))
    late = TestClient(broker.host, broker.port)
    try:
        late.subscribe(hub.topics.status(device_id))
        msg = late.get()
        retained = decode(bytes(msg.payload), DeviceStatus)
        assert msg.retain and retained.state == "online" and retained.session == birth.session
        caps = birth.capabilities
        assert caps is not None and caps.mode == "single"
        assert "CPUExecutionProvider" in caps.providers and caps.onnxruntime_version
        assert caps.cpu_count >= 1 and caps.memory_bytes > 0 and caps.disk_free_bytes
        assert caps.gpus == [] or all(g.memory_bytes > 0 for g in caps.gpus)
        agent.stop()
        hub.wait(lambda: hub.statuses[-1].state == "offline", what="offline")
        assert hub.statuses[-1].session == birth.session
    finally:
        late.close()


def test_a_connections_will_follows_its_birth_and_the_next_birth_follows_the_will(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory
) -> None:
    """The hub keeps a device's newest status by (`ts`, `offline` after `online`): each status the agent's
    connections publish, in the order they happen, is newer than the one before by that order."""
    agent, _ = make_agent(hub, device_id, broker.url)
    assert agent.wait_ready(10)
    first = hub.wait(lambda: next((s for s in hub.statuses if s.state == "online"), None), what="birth")
    agent.link.drop(0.3)  # abrupt: the broker publishes the will; the agent connects again after 0.3 s
    will = hub.wait(lambda: next((s for s in hub.statuses if s.state == "offline"), None), what="last will")
    second = hub.wait(lambda: next((s for s in hub.statuses if s.state == "online" and s.ts > first.ts), None))
    agent.stop()
    stop = hub.wait(lambda: next((s for s in hub.statuses if s.state == "offline" and s.ts > will.ts), None))
    assert first.session == will.session == second.session == stop.session
    assert will.ts == first.ts < second.ts <= stop.ts  # at equal ts, offline follows online


def test_reconnects_and_resubscribes_after_broker_restart(
    private_broker: Broker, topic_prefix: str, device_id: str, make_agent: AgentFactory
) -> None:
    hub = HubSide(private_broker.host, private_broker.port, topic_prefix)
    try:
        agent, _ = make_agent(hub, device_id, private_broker.url)
        assert agent.wait_ready(10)
        private_broker.kill()
        private_broker.start()
        hub.wait_connected()
        hub.wait(lambda: agent.link.connects >= 2, what="reconnect")
        hub.wait(lambda: sum(1 for s in hub.statuses if s.state == "online") >= 1)
        # the desired subscription was renewed: a new desired state is acted on (here refused as malformed)
        hub.publish_desired(device_id, b"garbage after restart")
        hub.wait_reported(lambda r: r.error is not None and r.error.code == "malformed_envelope")
    finally:
        hub.close()


def test_signed_commands_are_acknowledged_and_unsigned_ignored(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory
) -> None:
    agent, _ = make_agent(hub, device_id, broker.url)
    assert agent.wait_ready(10)
    now = time.time()
    cmd = Command(device_id=device_id, version=1, issued_at=now, expires_at=now + 60, correlation_id="c-1",
                  name=CommandName.PING)  # fmt: skip
    hub.publish_raw(hub.topics.cmd(device_id), encode(cmd))  # not signed: ignored
    hub.publish_raw(hub.topics.cmd(device_id), encode(hub.key.sign(cmd)))
    ack = hub.wait(lambda: next((a for a in hub.acks if a.correlation_id == "c-1"), None))
    assert ack.ok and ack.result == {"pong": True}
    hub.publish_raw(hub.topics.cmd(device_id), encode(hub.key.sign(cmd)))  # replay: refused
    gc = cmd.model_copy(update={"version": 2, "correlation_id": "c-2", "name": CommandName.COLLECT_GARBAGE})
    hub.publish_raw(hub.topics.cmd(device_id), encode(hub.key.sign(gc)))
    ack = hub.wait(lambda: next((a for a in hub.acks if a.correlation_id == "c-2"), None))
    assert ack.ok and ack.result == {"removed": 0}
    assert [a.correlation_id for a in hub.acks] == ["c-1", "c-2"]


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    backoff = Backoff(0.5, 30.0)
    delays = [backoff.delay(n, rng) for n in range(12)]
    for n, d in enumerate(delays):
        base = min(30.0, 0.5 * 2**n)
        assert 0.5 * base <= d <= 1.5 * base
    assert len({round(d, 6) for d in delays}) == len(delays), "jittered"
    assert backoff.delay(10_000, rng) <= 45.0
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(5.0, 1.0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://h:1884", BrokerAddress(host="h", port=1884)),
        ("mqtts://h", BrokerAddress(host="h", port=8883, tls=True)),
        ("mqtt://127.0.0.1", BrokerAddress(host="127.0.0.1", port=1883)),
    ],
)
def test_broker_urls(url: str, expected: BrokerAddress) -> None:
    assert BrokerAddress.parse(url) == expected
    assert BrokerAddress.parse(expected.url) == expected


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://", "h:1883", "mqtt://h:99999", ""])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidBrokerUrl, match="broker URL"):
        BrokerAddress.parse(url)


@pytest.mark.parametrize("bound_s", [15.0, 2.5, 0.0])
def test_the_links_socket_bounds_unacknowledged_bytes(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, bound_s: float
) -> None:
    """A partition that drops packets resets nothing: without TCP_USER_TIMEOUT the agent's publishes sat in a
    dead socket, retransmitted with exponential backoff, and after the link healed the link resumed only at the
    next retransmission (the behaviour across a real partition: tests/faults/test_netns.py). 0 leaves the
    kernel's default."""
    agent, _ = make_agent(hub, device_id, broker.url, link={"tcp_user_timeout_s": bound_s})
    assert agent.wait_ready(10)
    sock = agent.link._sock
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(bound_s * 1000)
    agent.link.drop(0.05)  # every new connection gets it
    hub.wait(lambda: agent.link.connects >= 2 and agent.link.connected, what="reconnect")
    again = agent.link._sock
    assert again is not None and again is not sock
    assert again.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(bound_s * 1000)

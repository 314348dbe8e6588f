"""The agent's MQTT link in external-loop mode: many links on one LinkLoop thread, against a real broker."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from agent.mqtt import MessageHandler, MqttLink
from agent.netloop import LinkLoop
from agent.settings import LinkSettings
from fleet.address import BrokerAddress
from tests.support.broker import Broker
from tests.support.mqtt import TestClient, wait_for

FAST = LinkSettings(backoff_initial_s=0.05, backoff_max_s=0.5)


def _links(broker: Broker, loop: LinkLoop, prefix: str, n: int, inbox: dict[int, list[bytes]]) -> list[MqttLink]:
    def deliver(i: int) -> MessageHandler:
        return lambda _t, p: inbox[i].append(p)

    links = []
    for i in range(n):
        link = MqttLink(
            BrokerAddress.parse(broker.url), f"netloop-{prefix.split('/')[1]}-{i}", username=None, password=None,
            will=(f"{prefix}/will/{i}", b"gone"), settings=FAST,
            on_message=deliver(i), on_connect=lambda: None, loop=loop, clean_session=True,
        )  # fmt: skip
        link.subscribe(f"{prefix}/to/{i}")
        links.append(link)
    return links


_PROBE = b"probe"


def _wait_subscribed(links: list[MqttLink], inbox: dict[int, list[bytes]], prefix: str) -> None:
    """Wait until every link's subscription is live at the broker.

    `connected` is set when CONNACK arrives; the SUBSCRIBE sent then may still be queued on the loop, so a
    publish from another connection can reach the broker first and be dropped. Each link probes its own
    topic (again, until one comes back); probes that arrive late are filtered out by `_sent`.
    """

    def live() -> bool:
        for i, link in enumerate(links):
            if _PROBE not in inbox[i]:
                link.publish(f"{prefix}/to/{i}", _PROBE)
        return all(_PROBE in inbox[i] for i in range(len(links)))

    wait_for(live, timeout=30, interval=0.2)


def _sent(messages: list[bytes]) -> list[bytes]:
    return [m for m in messages if m != _PROBE]


def test_one_loop_thread_serves_many_links(broker: Broker, topic_prefix: str) -> None:
    loop = LinkLoop("test-loop")
    inbox: dict[int, list[bytes]] = defaultdict(list)
    links = _links(broker, loop, topic_prefix, 40, inbox)
    threads_before = threading.active_count()
    for link in links:
        link.start()
    loop.start()
    try:
        wait_for(lambda: all(link.connected for link in links), timeout=30)
        assert threading.active_count() == threads_before + 1, "one thread for every link, not one each"
        _wait_subscribed(links, inbox, topic_prefix)
        for i, link in enumerate(links):  # each link publishes to the next one: every publish crosses the loop
            assert link.publish(f"{topic_prefix}/to/{(i + 1) % len(links)}", f"from {i}".encode())
        wait_for(lambda: all(len(_sent(inbox[i])) == 1 for i in range(len(links))), timeout=30)
        assert _sent(inbox[0]) == [f"from {len(links) - 1}".encode()]
        with pytest.raises(RuntimeError, match="own loop thread"):  # a PUBACK the loop itself must read
            done = threading.Event()
            errors: list[BaseException] = []

            def on_loop() -> None:
                try:
                    links[0].publish(f"{topic_prefix}/to/1", b"x", wait=True)
                except RuntimeError as e:
                    errors.append(e)
                done.set()

            loop.call_soon(on_loop)
            assert done.wait(10)
            raise errors[0]
    finally:

        def stop_links() -> None:
            for link in links:
                link.stop()

        loop.stop(before=stop_links)
        for link in links:
            link.close()


def test_a_dropped_link_leaves_its_will_and_comes_back(broker: Broker, topic_prefix: str) -> None:
    loop = LinkLoop("test-loop")
    inbox: dict[int, list[bytes]] = defaultdict(list)
    (link,) = _links(broker, loop, topic_prefix, 1, inbox)
    watcher = TestClient(broker.host, broker.port)
    watcher.subscribe(f"{topic_prefix}/will/0")
    link.start()
    loop.start()
    try:
        wait_for(lambda: link.connected, timeout=20)
        loop.call_soon(lambda: link.drop(0.5))  # abrupt: no DISCONNECT, so the broker publishes the will
        assert watcher.get(timeout=20).payload == b"gone"
        wait_for(lambda: link.connects == 2 and link.connected, timeout=20)  # back after the offline time
        assert link.publish(f"{topic_prefix}/to/0", b"again")
        wait_for(lambda: inbox[0] == [b"again"], timeout=20)  # its subscription was renewed on reconnect
    finally:
        watcher.close()
        loop.stop(before=link.stop)
        link.close()


def test_a_link_of_its_own_starts_and_stops_its_loop(broker: Broker, topic_prefix: str) -> None:
    inbox: list[bytes] = []
    link = MqttLink(
        BrokerAddress.parse(broker.url), f"netloop-own-{topic_prefix.split('/')[1]}", username=None, password=None,
        will=(f"{topic_prefix}/will", b"gone"), settings=FAST, on_message=lambda _t, p: inbox.append(p),
        on_connect=lambda: None,
    )  # fmt: skip
    link.subscribe(f"{topic_prefix}/in")
    watcher = TestClient(broker.host, broker.port)
    watcher.subscribe(f"{topic_prefix}/final")
    link.start()
    try:
        assert link.wait_connected(20)
        assert link.publish(f"{topic_prefix}/in", b"echo", wait=True)  # from another thread: waits for the PUBACK
        wait_for(lambda: inbox == [b"echo"], timeout=20)
    finally:
        link.stop(final=(f"{topic_prefix}/final", b"bye"))
    assert watcher.get(timeout=20).payload == b"bye" and not link.connected
    watcher.close()


def test_a_failing_callback_never_stops_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    loop = LinkLoop("test-loop")
    loop.start()
    ran = threading.Event()

    def broken() -> None:
        raise ValueError("a bug in one link's handler")

    try:
        loop.call_soon(broken)
        loop.call_later(0.01, broken)
        loop.call_soon(ran.set)
        assert ran.wait(10), "the loop died with the first failure"
        later = threading.Event()
        loop.call_later(0.05, later.set)
        assert later.wait(10)
    finally:
        loop.stop(timeout=5)
    assert "event handler failed" in caplog.text

"""A replica that stops for good: its broker session no longer holds the group's share of telemetry (hub.sessions).

Real Mosquitto 2.0 hands a shared subscription's messages round robin to every member's session, connected or
not; so with one of two replicas stopped, half of the windows the devices sent waited in the stopped one's
session (for an hour over MQTT 5, for ever over 3.1.1). Here replica `a` stops while `b` leads; the devices'
windows must all be stored while `a` stays away, `a`'s session must hold no subscription afterwards (everything
later reaches `b` at once), and `a` restarting takes its share again. Without the leader's adoption the first
wait fails with half the windows missing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.codec import encode
from hub.metrics import metrics_text
from hub.mqtt import HubLink
from hub.runtime import Hub, init_hub
from hub.sessions import PRESENCE, SessionAdoption
from hub.store import open_store
from tests.support.broker import Broker
from tests.support.hub import hub_settings
from tests.support.mqtt import TestClient, wait_for
from tests.support.wire import one_model_window

LEASE_S, RENEW_S = 1.0, 0.2


def _replica(tmp_path: Path, broker: Broker, topic_prefix: str, name: str, version: str) -> Hub:
    return Hub(hub_settings(tmp_path / "hub", broker.url, topic_prefix, ingest={"telemetry_process": False},
                            broker={"shared_group": "hubs", "replica": name, "mqtt_version": version},
                            leader={"lease_s": LEASE_S, "renew_s": RENEW_S}))  # fmt: skip


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_the_leader_takes_over_a_stopped_replicas_session_so_no_share_of_telemetry_waits_in_it(
    broker: Broker, topic_prefix: str, tmp_path: Path, version: str
) -> None:
    init_hub(_replica(tmp_path, broker, topic_prefix, "a", version).settings)
    b = _replica(tmp_path, broker, topic_prefix, "b", version)
    a = _replica(tmp_path, broker, topic_prefix, "a", version)
    dev = TestClient(broker.host, broker.port)
    seq = 0

    def send(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            now = time.time()
            dev.publish(b.topics.telemetry("cam-1"), encode(one_model_window("cam-1", seq=seq, start=now - 1, end=now)))
            seq += 1

    def stored() -> int:
        return len(b.store.telemetry_windows("cam-1", since=None, until=None, limit=10_000))

    with b:
        wait_for(lambda: b.leadership.is_leader)
        b.devices.add("cam-1", {}, actor="test")
        a.start()
        try:
            send(10)  # both replicas take a share
            wait_for(lambda: stored() == 10)
            assert a.ingest.accepted["telemetry"] > 0 and b.ingest.accepted["telemetry"] > 0
        finally:
            a.stop()  # a clean stop: the broker keeps a's session (and its place in the group)
        stopped_at = time.monotonic()
        send(40)
        wait_for(lambda: stored() == 50, timeout=LEASE_S + 20)
        assert b.sessions is not None
        stats = b.sessions.stats
        wait_for(lambda: stats.adopted == 1)  # the drain ends the session once it has been quiet for a while
        assert 0 < stats.messages <= 40 and stats.interrupted == 0, stats
        assert time.monotonic() - stopped_at >= LEASE_S  # adopted once a's presence had expired, not before
        wait_for(lambda: b.store.expired_leases(PRESENCE) == [])  # its presence goes with its session (just after)
        events = b.store.list_events(since=None, until=None, subject=None, action="hub.session.adopted", limit=10)
        assert [e.subject for e in events] == [a._client_id()]
        text = metrics_text(b).decode()
        assert "edgefleet_hub_sessions_adopted_total 1.0" in text

        accepted = b.ingest.accepted["telemetry"]
        send(20)  # a's session holds no subscription now: every window reaches b at once
        wait_for(lambda: stored() == 70)
        assert b.ingest.accepted["telemetry"] == accepted + 20

        a = _replica(tmp_path, broker, topic_prefix, "a", version)
        with a:  # back: a fresh session, subscribed again, takes its share
            send(40)
            wait_for(lambda: stored() == 110)
            assert a.ingest.accepted["telemetry"] > 0
            time.sleep(LEASE_S + 2 * RENEW_S)  # a live replica renews its presence: never adopted
            assert b.sessions.stats.adopted == 1
    dev.close()


def test_a_replica_that_comes_back_during_the_drain_keeps_its_session(
    broker: Broker, tmp_path: Path, topic_prefix: str
) -> None:
    """The drain gives up when the replica takes its session back, and nothing it held is lost: the broker
    sends the returning replica what the drain did not acknowledge."""
    topic = f"{topic_prefix}/t"
    got: list[bytes] = []
    store = open_store(hub_settings(tmp_path / "hub", broker.url, topic_prefix).database, telemetry_process=False)
    try:
        store.acquire_lease(PRESENCE + "gone", "gone", 0.01)  # a replica that stopped renewing
        time.sleep(0.05)

        def session(clean: bool) -> mqtt.Client:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gone", protocol=mqtt.MQTTv5)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
            c.connect(broker.host, broker.port, clean_start=clean, properties=props)
            c.loop_start()
            return c

        c = session(clean=True)
        c.subscribe(topic, 1)
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()
        pub = TestClient(broker.host, broker.port)
        for i in range(5):  # queued in the stopped replica's session
            pub.publish(topic, b"%d" % i)
        drained: list[str] = []

        def handler(t: str, _p: bytes) -> int:
            drained.append(t)
            return 1  # a ticket never released: the drain cannot end the session

        adoption = SessionAdoption(
            store, client_id="leader", leading=lambda: True, lease_s=LEASE_S, renew_s=RENEW_S,
            connect=lambda cid: HubLink(broker.url, client_id=cid, on_message=handler, subscriptions=[(topic, None)],
                                        mqtt_version="5"),
        )  # fmt: skip
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(adoption.step() == 1))
        t.start()
        wait_for(lambda: len(drained) == 5)
        back = session(clean=False)  # the replica comes back: the broker drops the drain's connection
        t.join(30)
        assert result == [False]
        assert adoption.stats.adopted == 0 and adoption.stats.interrupted == 1
        wait_for(lambda: sorted(got) == [b"0", b"1", b"2", b"3", b"4"])  # sent again, to the replica
        assert (PRESENCE + "gone", "gone") in store.expired_leases(PRESENCE)  # left for a later try
        back.disconnect()
        back.loop_stop()
        pub.close()
    finally:
        store.close()

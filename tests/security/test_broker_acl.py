"""The generated ACL against a real Mosquitto: a device reaches only its own topics and the blob topics.

Mosquitto 2.0 answers a subscription to a forbidden filter with a granted SUBACK but never delivers a
message on it (the read check runs per message, retained ones included); a forbidden QoS 1 publish gets
PUBACK reason 135 under MQTT 5 and is silently dropped under MQTT 3.1.1. Each test shows the refusal
next to a positive control, so "nothing arrived" cannot mean "nothing was sent yet".
"""

from __future__ import annotations

import time

import pytest

from fleet.topics import Topics
from tests.security.conftest import AclBroker
from tests.security.probe import NOT_AUTHORIZED, Probe
from tests.support.mqtt import wait_for
from tests.support.outcomes import record

SHA = "ab" * 32


def _settle(receiver: Probe, control_topic: str, sender: Probe) -> None:
    """Publish a control message the receiver may see and wait for it: everything sent before has arrived."""
    sender.publish(control_topic, b"control")
    wait_for(lambda: control_topic in receiver.topics(), timeout=10)


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_a_device_cannot_receive_another_devices_desired_state(acl_broker: AclBroker, v5: bool) -> None:
    t = Topics(acl_broker.prefix)
    hub = acl_broker.probe("hub")
    a = acl_broker.probe("cam-a", v5=v5)
    try:
        for d in ("cam-a", "cam-b"):
            assert hub.publish(t.desired(d), f"state of {d}".encode(), retain=True) == 0
        # every way of asking for cam-b's desired state: the exact topic, a wildcard, everything
        for topic in (t.desired("cam-b"), f"{acl_broker.prefix}/dev/+/desired", f"{acl_broker.prefix}/#"):
            a.subscribe(topic)
        a.subscribe(t.desired("cam-a"))
        wait_for(lambda: t.desired("cam-a") in a.topics())
        hub.publish(t.desired("cam-b"), b"new state of cam-b")
        hub.publish(t.cmd("cam-b"), b"command for cam-b")
        _settle(a, t.cmd("cam-a"), hub)
        assert all(topic.startswith(f"{acl_broker.prefix}/dev/cam-a/") for topic in a.topics()), a.topics()
        record("attack", "subscribe to another device's desired/cmd", "refused", 3 + 2)
    finally:
        a.close()
        hub.close()


def test_a_device_cannot_publish_on_another_devices_topics_mqtt5(acl_broker: AclBroker) -> None:
    t = Topics(acl_broker.prefix)
    hub = acl_broker.probe("hub")
    a = acl_broker.probe("cam-a", v5=True)
    try:
        hub.subscribe(f"{acl_broker.prefix}/#")
        forbidden = [
            t.telemetry("cam-b"), t.status("cam-b"), t.reported("cam-b"), t.cmd_ack("cam-b"),
            t.desired("cam-a"), t.desired("cam-b"), t.cmd("cam-a"), t.chunk(SHA), "elsewhere/topic",
        ]  # fmt: skip
        for topic in forbidden:
            assert a.publish(topic, b"spoofed") == NOT_AUTHORIZED, topic
        allowed = [t.telemetry("cam-a"), t.status("cam-a"), t.reported("cam-a"), t.cmd_ack("cam-a"), t.want(SHA)]
        for topic in allowed:
            assert a.publish(topic, b"own") in (0, 16), topic  # success / no matching subscribers
        wait_for(lambda: set(allowed) <= set(hub.topics()))
        assert not {topic for topic, p in hub.messages if p == b"spoofed"}
        record("attack", "publish on another device's or a hub topic", "refused", len(forbidden))
    finally:
        a.close()
        hub.close()


def test_a_denied_publish_under_mqtt311_is_dropped_silently(acl_broker: AclBroker) -> None:
    t = Topics(acl_broker.prefix)
    hub = acl_broker.probe("hub")
    a = acl_broker.probe("cam-a")
    try:
        hub.subscribe(f"{acl_broker.prefix}/dev/+/telemetry")
        assert a.publish(t.telemetry("cam-b"), b"spoofed") == 0  # 3.1.1 has no reason code: acknowledged, dropped
        _settle(hub, t.telemetry("cam-a"), a)
        assert t.telemetry("cam-b") not in hub.topics()
        record("attack", "publish on another device's telemetry (3.1.1)", "refused")
    finally:
        a.close()
        hub.close()


def test_a_device_reads_blob_chunks_and_its_own_commands(acl_broker: AclBroker) -> None:
    t = Topics(acl_broker.prefix)
    hub = acl_broker.probe("hub")
    a = acl_broker.probe("cam-a")
    try:
        a.subscribe(t.chunk(SHA))
        a.subscribe(t.cmd("cam-a"))
        hub.publish(t.chunk(SHA), b"frame")
        hub.publish(t.cmd("cam-a"), b"cmd")
        wait_for(lambda: {t.chunk(SHA), t.cmd("cam-a")} <= set(a.topics()))
    finally:
        a.close()
        hub.close()


@pytest.mark.parametrize(
    ("user", "password"), [(None, None), ("cam-a", "wrong"), ("cam-zz", "unknown"), ("EDGEFLEET-HUB", "guess")]
)
def test_anonymous_and_wrong_credentials_are_refused(acl_broker: AclBroker, user: str | None, password: str) -> None:
    p = acl_broker.probe(user, password=password)
    try:
        assert not p.accepted and p.connack is not None and "authori" in str(p.connack).lower()
        record("attack", "connect without valid credentials", "refused")
    finally:
        p.close()


def test_revoked_device_is_disconnected_without_a_broker_restart(acl_broker: AclBroker) -> None:
    t = Topics(acl_broker.prefix)
    hub = acl_broker.probe("hub")
    a = acl_broker.probe("cam-a")
    b = acl_broker.probe("cam-b")
    pid = acl_broker.broker.proc.pid if acl_broker.broker.proc else None
    try:
        acl_broker.write(revoked={"cam-a"})
        acl_broker.broker.reload()
        assert a.disconnected.wait(10), "the revoked device stayed connected"
        again = acl_broker.probe("cam-a")
        assert not again.accepted
        again.close()
        # the broker did not restart and the other device's session is untouched
        assert acl_broker.broker.proc is not None and acl_broker.broker.proc.pid == pid
        assert not b.disconnected.is_set()
        b.subscribe(t.desired("cam-b"))
        hub.publish(t.desired("cam-b"), b"still served")
        wait_for(lambda: t.desired("cam-b") in b.topics())
        time.sleep(0)  # nothing else to wait for
        record("attack", "revoked device credential", "refused")
    finally:
        for p in (a, b, hub):
            p.close()

"""Telemetry windows over a real broker: content, and the on-disk spool while the broker is down."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.messages import TelemetryWindow
from models.errors import InvalidInput
from tests.agent.conftest import AgentFactory, Sample
from tests.support.broker import Broker
from tests.support.hubside import HubSide


def _seqs(windows: list[TelemetryWindow]) -> list[int]:
    return [w.seq for w in windows]


def test_windows_count_requests_and_name_the_model(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory, samples: dict[str, Sample]
) -> None:
    _agent, serving = make_agent(hub, device_id, broker.url, telemetry={"interval_s": 0.2})
    hub.publish_desired(
        device_id, hub.desired(device_id, 1, hub.model_ref(samples["v1"].path, samples["v1"].descriptor))
    )
    hub.wait_active("1.0.0")
    start = len(hub.telemetry)
    for _ in range(5):
        serving.infer({"image": np.zeros((1, 3, 64, 64), dtype=np.float32)})
    with pytest.raises(InvalidInput):  # the client's mistake: a request, not a server error (as over HTTP)
        serving.infer({"image": np.zeros((1, 3), dtype=np.float32)})
    hub.wait(lambda: sum(w.requests for w in hub.telemetry[start:]) >= 6)
    counted = [w for w in hub.telemetry[start:] if w.requests]
    assert sum(w.errors for w in hub.telemetry[start:]) == 0
    first = counted[0].models[0]
    assert first.name == "cls" and first.version == "1.0.0"
    assert first.provider == "CPUExecutionProvider"
    assert sum(m.latency.count for w in hub.telemetry[start:] for m in w.models) == 6
    assert counted[0].memory_bytes and counted[0].spool_capacity == 8640
    seqs = _seqs(hub.telemetry)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def _broker_down_then_up(
    persistent_broker: Broker, topic_prefix: str, device_id: str, make_agent: AgentFactory, capacity: int, due: int
) -> tuple[HubSide, list[TelemetryWindow], int]:
    """Windows flow, the broker stops until `due` windows were made, then it is back; returns what the hub got
    and the newest window made while the broker was down."""
    hub = HubSide(persistent_broker.host, persistent_broker.port, topic_prefix, persistent=True)
    agent, _ = make_agent(
        hub, device_id, persistent_broker.url, telemetry={"interval_s": 0.05, "spool_max_windows": capacity}
    )
    hub.wait(lambda: len(hub.telemetry) >= 3, what="first windows")
    persistent_broker.stop()
    hub.wait(lambda: agent.spool.pending + agent.spool.dropped >= due, what="windows due while down")
    made_while_down = max(seq for seq, _ in agent.spool.peek(capacity))
    persistent_broker.start()
    hub.wait_connected()
    hub.wait(lambda: agent.spool.pending == 0 and agent.link.connected, what="spool drained")
    last = agent.spool.allocate_seq() - 1
    hub.wait(lambda: last in _seqs(hub.telemetry), what="every window received")
    return hub, list(hub.telemetry), made_while_down


def test_spool_sends_every_window_in_order_after_broker_outage(
    persistent_broker: Broker, topic_prefix: str, device_id: str, make_agent: AgentFactory
) -> None:
    hub, windows, made_while_down = _broker_down_then_up(
        persistent_broker, topic_prefix, device_id, make_agent, capacity=1000, due=8
    )
    try:
        seqs = _seqs(windows)
        first_seen = list(dict.fromkeys(seqs))  # what the hub keeps: it deduplicates by seq
        assert first_seen == list(range(seqs[0], max(seqs) + 1)), "every window, in order"
        repeated = {q for q in seqs if seqs.count(q) > 1}
        # a window in flight when the broker died may arrive twice (paho resends it, the spool too);
        # once the spool has drained, nothing is sent twice
        assert all(q <= made_while_down for q in repeated)
        assert max(w.spool_pending for w in windows) >= 5
        assert all(w.spool_dropped == 0 for w in windows)
    finally:
        hub.close()


def test_full_spool_drops_oldest_and_reports_it(
    persistent_broker: Broker, topic_prefix: str, device_id: str, make_agent: AgentFactory
) -> None:
    hub, windows, _ = _broker_down_then_up(persistent_broker, topic_prefix, device_id, make_agent, capacity=3, due=10)
    try:
        seqs = list(dict.fromkeys(_seqs(windows)))
        assert seqs == sorted(seqs), "still in order"
        assert max(seqs) - min(seqs) + 1 > len(seqs), "some windows were dropped"
        assert windows[-1].spool_capacity == 3 and windows[-1].spool_dropped >= 5
    finally:
        hub.close()


def test_a_clean_stop_sends_the_window_made_as_it_came(
    broker: Broker, hub: HubSide, device_id: str, make_agent: AgentFactory
) -> None:
    """A window spooled just before the stop (the telemetry thread made it, the stop came before its drain) is
    sent by the stop while the link is up, not left for a next start that may never come."""
    agent, _ = make_agent(hub, device_id, broker.url, telemetry={"interval_s": 3600.0})
    hub.wait(lambda: agent.link.connected, what="agent connected")
    agent.telemetry._stop.set()  # the stop has come, its thread not yet joined: the thread drains no more
    window = agent.telemetry.make_window()
    assert agent.telemetry.drain() == 0 and agent.spool.pending == 1
    agent.telemetry.stop()
    assert agent.spool.pending == 0
    hub.wait(lambda: window.seq in _seqs(hub.telemetry), what="the last window received")

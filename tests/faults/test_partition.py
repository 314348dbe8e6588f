"""A network partition between an agent and the broker: telemetry goes to the spool and every window
reaches the hub, in order and once, when the network heals; the device goes offline and back online."""

from __future__ import annotations

from collections.abc import Callable

from hub.store import Device
from tests.faults.conftest import FaultWorld
from tests.faults.proxy import TcpProxy
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


def test_partition_spools_telemetry_and_loses_nothing(
    fault_world: FaultWorld, proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    w = fault_world
    lb = w.hub.hub.local_broker
    assert lb is not None
    proxy = proxy_factory(lb.host, lb.port)
    bundle = w.enrol("cam-part", broker_url=proxy.url)
    data = w.tmp / "agent-part"
    agent = w.spawn(bundle, data, EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S="0.1")

    def device() -> Device | None:
        return w.hub.hub.store.get_device("cam-part")

    wait_for(lambda: len(w.stored_seqs("cam-part")) >= 3, timeout=30)

    proxy.partition()
    wait_for(lambda: (d := device()) is not None and d.status == "offline", timeout=30)  # its last will
    wait_for(lambda: w.spooled(data) >= 10, timeout=30)  # windows made while cut off wait on disk
    during = w.spooled(data)
    proxy.heal()

    wait_for(lambda: (d := device()) is not None and d.status == "online", timeout=30)
    wait_for(lambda: w.spooled(data) < during and len(w.stored_seqs("cam-part")) >= during + 3, timeout=30)
    assert agent.stop() == 0  # a clean stop sends what is left
    seqs = w.stored_seqs("cam-part")
    assert seqs[0] <= 1 and len(seqs) == len(set(seqs)), "the first window is missing or one was stored twice"
    lost = (seqs[-1] - seqs[0] + 1) - len(seqs)  # windows between the first and the last that never arrived
    assert lost == 0 and w.spooled(data) == 0
    record("fault", "network partition (agent to broker) with spool", "recovered", 1, lost)

"""Node inventory through the real lightkube client: GPU and MIG resources, readiness, changes."""

from __future__ import annotations

import threading

from agent.k3s import ClusterBridge
from agent.k3s.inventory import gpu_totals
from fleet.messages import NodeInfo
from tests.k8s.server import ApiServer


def test_inventory_with_mig_and_gpu_nodes(api: ApiServer, bridge: ClusterBridge) -> None:
    api.put_node(
        "gpu-a100",
        labels={
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
            "nvidia.com/mig.strategy": "mixed",
            "nvidia.com/mig.config": "all-1g.5gb",
            "unrelated.example/label": "dropped",
        },
        allocatable={"nvidia.com/gpu": "0", "nvidia.com/mig-1g.5gb": "7", "ephemeral-storage": "100Gi"},
    )
    api.put_node("gpu-t4", labels={"nvidia.com/gpu.product": "Tesla-T4"}, allocatable={"nvidia.com/gpu": "2"})
    api.put_node("cpu-1", ready=False)
    nodes = bridge.inventory()
    assert [n.name for n in nodes] == ["cpu-1", "gpu-a100", "gpu-t4"]
    a100 = nodes[1]
    assert a100.ready
    assert a100.gpu_product == "NVIDIA-A100-SXM4-40GB"
    assert a100.allocatable["nvidia.com/mig-1g.5gb"] == "7"
    assert "ephemeral-storage" not in a100.allocatable
    assert a100.labels["nvidia.com/mig.strategy"] == "mixed"
    assert "unrelated.example/label" not in a100.labels
    assert nodes[0].ready is False and nodes[0].gpu_product is None
    # the not-ready node's resources do not count
    assert gpu_totals(nodes) == {"nvidia.com/gpu": 2, "nvidia.com/mig-1g.5gb": 7}


def test_empty_cluster(bridge: ClusterBridge) -> None:
    assert bridge.inventory() == []


def test_node_without_status_or_labels(api: ApiServer, bridge: ClusterBridge) -> None:
    api.store.put(api.store_kind("nodes"), {"metadata": {"name": "bare"}})
    assert bridge.inventory() == [NodeInfo(name="bare", ready=False)]


def test_watch_reports_changes(api: ApiServer, bridge: ClusterBridge) -> None:
    api.put_node("n1")
    seen: list[list[NodeInfo]] = []
    changed = threading.Condition()

    def on_change(nodes: list[NodeInfo]) -> None:
        with changed:
            seen.append(nodes)
            changed.notify_all()

    def wait_for(count: int) -> list[NodeInfo]:
        with changed:
            assert changed.wait_for(lambda: len(seen) >= count, timeout=10), seen
            return seen[count - 1]

    bridge.watch_inventory(on_change)
    assert [n.name for n in wait_for(1)] == ["n1"]
    api.put_node("n2", allocatable={"nvidia.com/mig-2g.10gb": "3"})
    assert [n.name for n in wait_for(2)] == ["n1", "n2"]
    api.put_node("n1", ready=False)
    assert wait_for(3)[0].ready is False
    api.store.delete(("", "nodes", "", "n2"))
    assert [n.name for n in wait_for(4)] == ["n1"]
    # a change invisible in the inventory (a heartbeat-like status update) reports nothing new
    api.put_node("n1", ready=False)
    api.put_node("n3")
    assert [n.name for n in wait_for(5)] == ["n1", "n3"]
    assert len(seen) == 5


def test_watch_survives_errors_and_a_failing_callback(api: ApiServer, bridge: ClusterBridge) -> None:
    api.put_node("n1")
    api.fail(500, verb="list", resource="nodes", times=2)
    api.fail(503, verb="watch", resource="nodes", times=1)
    first, second = threading.Event(), threading.Event()
    calls = []

    def on_change(nodes: list[NodeInfo]) -> None:
        calls.append(nodes)
        if len(calls) == 1:
            first.set()
            raise RuntimeError("a broken callback")
        second.set()

    bridge.watch_inventory(on_change)
    assert first.wait(10)
    api.put_node("n2")
    assert second.wait(10)
    assert [n.name for n in calls[-1]] == ["n1", "n2"]

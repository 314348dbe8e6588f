"""Node inventory: what the birth message says about the cluster. Pure functions over Kubernetes Node objects."""

from __future__ import annotations

from typing import Any

from fleet.messages import NodeInfo

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
KEPT_RESOURCES = ("cpu", "memory", "pods", "nvidia.com/")
KEPT_LABEL_PREFIXES = (
    "nvidia.com/",
    "kubernetes.io/",
    "node-role.kubernetes.io/",
    "node.kubernetes.io/",
    "edgefleet.io/",
)
MAX_LABELS = 64
MAX_VALUE = 256


def node_info(node: Any) -> NodeInfo:
    """Summarise one lightkube `Node` (readiness, allocatable CPU/memory/GPU/MIG, GPU product, relevant labels)."""
    meta = node.metadata
    status = node.status
    labels: dict[str, str] = dict(getattr(meta, "labels", None) or {})
    allocatable: dict[str, str] = dict(getattr(status, "allocatable", None) or {})
    conditions = getattr(status, "conditions", None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    kept_labels = {
        k: v[:MAX_VALUE] for k, v in sorted(labels.items()) if k.startswith(KEPT_LABEL_PREFIXES) and len(k) <= 253
    }
    kept_resources = {k: str(v)[:64] for k, v in sorted(allocatable.items()) if _kept_resource(k)}
    product = labels.get(GPU_PRODUCT_LABEL)
    return NodeInfo(
        name=str(meta.name),
        ready=ready,
        gpu_product=product[:128] if product else None,
        allocatable=kept_resources,
        labels=dict(list(kept_labels.items())[:MAX_LABELS]),
    )


def _kept_resource(name: str) -> bool:
    return name in KEPT_RESOURCES or name.startswith("nvidia.com/")


def gpu_totals(nodes: list[NodeInfo]) -> dict[str, int]:
    """Allocatable `nvidia.com/gpu` and `nvidia.com/mig-*` summed over ready nodes (for the CLI and the logs)."""
    totals: dict[str, int] = {}
    for node in nodes:
        if not node.ready:
            continue
        for key, value in node.allocatable.items():
            if key.startswith("nvidia.com/") and value.isdigit():
                totals[key] = totals.get(key, 0) + int(value)
    return totals

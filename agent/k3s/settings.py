"""Cluster-mode settings. Every field documents its unit and why its default is what it is.

Settings come from code (tests), from the environment (`EDGEFLEET_K3S_<FIELD>`, e.g.
`EDGEFLEET_K3S_NAMESPACE=edgefleet`, `EDGEFLEET_K3S_ROLLOUT_DEADLINE_S=600`) or from CLI options
(`ClusterSettings.from_env()`, the one policy of `infra.settings`: an unknown `EDGEFLEET_K3S_*` variable is
refused naming the nearest valid one; an empty value unsets a field that may be unset).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from infra.settings import EnvSettings, env_config

ENV_PREFIX = "EDGEFLEET_K3S_"

DnsLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=63)]
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def _check_workload_prefix(value: str) -> str:
    """A prefix the Service names `<prefix>-<model>` can start with: they are DNS-1035 labels (a letter first)."""
    if not DNS_1035_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} must start with a lowercase letter, then hold lowercase letters, digits and '-', end with a "
            f"letter or digit, at most 63 characters: each model's Service is named <prefix>-<model>, and Service "
            f"names are DNS-1035 labels (e.g. edgefleet-inference)"
        )
    return value


WorkloadPrefix = Annotated[str, AfterValidator(_check_workload_prefix)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$", max_length=32)]


class ClusterSettings(EnvSettings):
    """Where and how the agent runs its serving workload on K3s."""

    model_config = env_config(ENV_PREFIX)

    namespace: DnsLabel = Field(default="edgefleet", description="namespace of the serving workload (and the agent)")
    workload_name: WorkloadPrefix = Field(
        default="edgefleet-inference",
        description="name of the Deployment, Service, ConfigMap and HPA we apply (<name>-<model>); a lowercase "
        "letter first (Service names are DNS-1035 labels)",
    )
    image: str = Field(
        default="ghcr.io/edgefleet/agent:0.1.0",
        min_length=1,
        max_length=512,
        description="serving image when no GPU is requested (the CPU variant of Dockerfile.agent)",
    )
    gpu_image: str | None = Field(
        default=None,
        max_length=512,
        description="serving image when a GPU or MIG slice is requested (the CUDA variant); None: `image`",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="IfNotPresent: edge links are slow and tags are immutable releases"
    )
    field_manager: str = Field(
        default="edgefleet-agent",
        pattern=r"^[a-zA-Z0-9._-]{1,128}$",
        description="server-side apply field manager: the fields we own in the objects we apply",
    )
    force_conflicts: bool = Field(
        default=True,
        description="take over fields another manager set (Kubernetes advises controllers to force); "
        "False: a conflict is reported instead",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="explicit kubeconfig (e.g. /etc/rancher/k3s/k3s.yaml, root only); None: in-cluster service "
        "account, then $KUBECONFIG, then ~/.kube/config",
    )
    context: str | None = Field(default=None, max_length=253, description="kubeconfig context; None: the current one")
    rollout_deadline_s: float = Field(
        default=300.0,
        gt=0,
        le=24 * 3600,
        description="our own deadline for a rollout to become ready, seconds (5 min: an image pull on an edge link)",
    )
    request_timeout_s: float = Field(default=10.0, gt=0, le=300, description="timeout of one API request, seconds")
    retry_attempts: int = Field(
        default=4, ge=1, le=20, description="tries of one call on temporary errors (unreachable, 5xx, 429)"
    )
    retry_backoff_s: float = Field(
        default=0.5, gt=0, le=60, description="first delay between tries, seconds; doubles each try"
    )
    retry_backoff_max_s: float = Field(default=10.0, gt=0, le=600, description="longest delay between tries, seconds")
    watch_timeout_s: int = Field(
        default=60, ge=1, le=3600, description="server-side timeout of one watch request, seconds (then it resumes)"
    )
    scrape_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="longest wait for one serving pod's whole /metrics answer, seconds, once per telemetry window "
        "(a pod answers in milliseconds; one that does not is skipped for that window)",
    )
    scrape_max_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="largest /metrics body read from a serving pod, bytes (a pod's is ~20 KiB with two versions, "
        "both endpoints and eight status codes counted)",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the serving pods and the Service")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Service type (K3s ships a LoadBalancer, ServiceLB, for on-device access)"
    )
    cpu_request: Quantity = Field(default="250m", description="CPU request per serving pod")
    cpu_limit: Quantity = Field(default="2", description="CPU limit per serving pod")
    memory_request: Quantity = Field(default="256Mi", description="memory request per serving pod")
    memory_limit: Quantity = Field(default="2Gi", description="memory limit per serving pod (model plus buffers)")
    models_claim: DnsLabel = Field(
        default="edgefleet-models",
        description="PersistentVolumeClaim of the shared model store (the agent writes it, serving pods read it)",
    )
    models_host_path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^/",
        description="use this host directory as the model store instead of the claim (single-node clusters)",
    )
    models_sub_path: str = Field(
        default="store",
        pattern=r"^[A-Za-z0-9._-]*$",
        max_length=255,
        description="the model store inside the volume (the agent keeps it at <data dir>/store); '' for the root",
    )
    store_path: str = Field(
        default="/models", pattern=r"^/", max_length=1024, description="mount path of the model store in serving pods"
    )
    gpu_runtime_class: str | None = Field(
        default="nvidia",
        max_length=63,
        description="runtimeClassName for GPU pods (K3s registers `nvidia` when it finds the NVIDIA container "
        "runtime); None: the node default",
    )

    def serving_image(self, gpu: bool) -> str:
        """The image for serving pods (the CUDA variant when `gpu` and one is set)."""
        return self.gpu_image if gpu and self.gpu_image else self.image

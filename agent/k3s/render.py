"""The serving workloads as plain Kubernetes objects, rendered from a desired state. Pure: no client, no I/O.

One workload per model (Deployment, Service, ConfigMap and optional HPA named `<workload_name>-<model>`, see
`workload_name`):
each model has its own replicas, GPU or MIG request and rollout, so a model's change or failure never
restarts another's pods (docs/k3s.md has the measurements behind the choice).

What goes where decides what restarts pods. The pod template holds only what needs a new pod (image, GPU or
MIG resources, CPU and memory, ports, probes, volumes); the model and the serving knobs (batching, queue,
providers, threads) go into the ConfigMap, which the pods mount and watch, so a model change hot-swaps inside
the running pods from the shared model volume. `template_hash` is the proof: it changes only with the template.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from agent.k3s.errors import WorkloadError
from agent.k3s.settings import ClusterSettings
from fleet.messages import DesiredModel, DesiredState

ACTIVE_FILE = "active.json"
CONFIG_MOUNT = "/etc/edgefleet/active"
HASH_ANNOTATION = "edgefleet.io/template-hash"
MAX_CONFIG_BYTES = 900 * 1024  # a ConfigMap holds at most 1 MiB; keep room for metadata
MIG_PROFILE = re.compile(r"^[1-9][0-9]?g\.[1-9][0-9]{0,3}gb(\+me)?$")
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_LABEL = "edgefleet.io/model"
NOT_IN_LABEL = re.compile(r"[^a-z0-9-]")  # what a DNS-1035 label (a Service's name) cannot hold


@dataclass(frozen=True)
class Workload:
    """The objects to server-side apply, in apply order (ConfigMap first: pods mount it)."""

    config_map: dict[str, Any]
    deployment: dict[str, Any]
    service: dict[str, Any]
    autoscaler: dict[str, Any] | None
    template_hash: str

    def objects(self) -> list[dict[str, Any]]:
        """Every object in apply order."""
        found = [self.config_map, self.deployment, self.service]
        return [*found, self.autoscaler] if self.autoscaler is not None else found


def accelerator_limits(gpus: int, mig_profile: str | None) -> dict[str, str]:
    """The extended resources a serving pod asks for: `nvidia.com/gpu` or one `nvidia.com/mig-<profile>` slice.

    Raises:
        WorkloadError: the MIG profile is not of the form `<n>g.<m>gb` (NVIDIA's mixed MIG strategy names).
    """
    if mig_profile is not None:
        if not MIG_PROFILE.match(mig_profile):
            raise WorkloadError(f"MIG profile {mig_profile!r} is not of the form <n>g.<m>gb, e.g. 1g.10gb")
        return {f"nvidia.com/mig-{mig_profile}": str(max(gpus, 1))}
    if gpus > 0:
        return {GPU_RESOURCE: str(gpus)}
    return {}


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable digest of a pod template (canonical JSON)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def workload_name(base: str, model: str) -> str:
    """The name of model `model`'s objects: `<base>-<model>`, made a DNS-1035 label (what a Service's name must be).

    A model name may hold '.' and '_' and 63 characters: those become '-' and a name over 63 characters is cut,
    and either way a digest of the model name is appended, so models whose names differ only there still get
    objects of their own. A model name that is a label already, and short enough, is kept as it is.
    """
    label = NOT_IN_LABEL.sub("-", model)
    name = f"{base}-{label}"
    if label == model and len(name) <= 63:
        return name
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{name[: 63 - 9].rstrip('-')}-{digest}"


def pod_selector(name: str) -> dict[str, str]:
    """The labels that select the serving pods of the workload `name` (`workload_name(...)`)."""
    return {"app.kubernetes.io/name": "edgefleet-inference", "app.kubernetes.io/instance": name}


def active_document(desired: DesiredState, slot: DesiredModel) -> dict[str, Any]:
    """What model `slot`'s serving pods read from its ConfigMap: the active version and the serving knobs."""
    model = slot.model
    runtime = slot.runtime
    return {
        "schema_version": 2,
        "device_id": desired.device_id,
        "desired_version": desired.version,
        "model": {
            "name": model.name,
            "version": model.version,
            "task": model.task,
            "sha256": model.blob.sha256,
            "size": model.blob.size,
            "descriptor": model.descriptor,
        },
        "runtime": {
            "providers": runtime.providers,
            "max_batch": runtime.max_batch,
            "max_queue_delay_ms": runtime.max_queue_delay_ms,
            "max_queue": runtime.max_queue,
            "intra_op_threads": runtime.intra_op_threads,
        },
    }


def render_workload(desired: DesiredState, model: str, settings: ClusterSettings) -> Workload:
    """Render the ConfigMap, Deployment, Service and optional HPA that serve model `model` of `desired`.

    Raises:
        WorkloadError: the desired state does not name the model, or cannot be served as asked (bad MIG
            profile, oversized descriptor).
    """
    slot = desired.slot(model)
    if slot is None:
        raise WorkloadError(f"desired state {desired.version} does not name model {model!r}", code="no_such_model")
    runtime = slot.runtime
    name = workload_name(settings.workload_name, model)
    ns = settings.namespace
    selector = pod_selector(name)
    labels = {
        **selector,
        MODEL_LABEL: model,
        "app.kubernetes.io/managed-by": settings.field_manager,
        "app.kubernetes.io/part-of": "edgefleet",
    }
    active = json.dumps(active_document(desired, slot), sort_keys=True, indent=1)
    if len(active.encode()) > MAX_CONFIG_BYTES:
        raise WorkloadError(
            f"the model descriptor takes {len(active.encode())} bytes; a ConfigMap holds at most {MAX_CONFIG_BYTES}",
            code="descriptor_too_large",
        )
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "data": {ACTIVE_FILE: active},
    }
    template = _pod_template(slot, settings, name, labels)
    digest = template_hash(template)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": max(60, int(settings.rollout_deadline_s)),
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": template,
    }
    if accelerator_limits(runtime.gpus, runtime.mig_profile):
        # a GPU node rarely has room for a surge pod: replace one pod at a time instead
        spec["strategy"]["rollingUpdate"] = {"maxUnavailable": 1, "maxSurge": 0}
    scaling = runtime.autoscaling
    if scaling is None:
        spec["replicas"] = runtime.replicas  # with an HPA, the HPA owns replicas: we do not apply them
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": {HASH_ANNOTATION: digest}},
        "spec": spec,
    }
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "type": settings.service_type,
            "selector": selector,
            "ports": [{"name": "http", "port": settings.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    autoscaler = None
    if scaling is not None:
        autoscaler = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": scaling.cpu_percent},
                        },
                    }
                ],
            },
        }
    return Workload(config_map, deployment, service, autoscaler, digest)


def _pod_template(slot: DesiredModel, settings: ClusterSettings, name: str, labels: dict[str, str]) -> dict[str, Any]:
    accel = accelerator_limits(slot.runtime.gpus, slot.runtime.mig_profile)
    probe_port = "http"
    container: dict[str, Any] = {
        "name": "serve",
        "image": settings.serving_image(bool(accel)),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["edgefleet"],
        "args": ["agent", "serve", "--store", settings.store_path, "--model", slot.name],
        "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
        "env": [
            {"name": "EDGEFLEET_API_HOST", "value": "0.0.0.0"},  # a pod serves its Service
            {"name": "EDGEFLEET_API_PORT", "value": str(settings.port)},
        ],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request, **accel},
            "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit, **accel},
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": probe_port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": probe_port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": probe_port},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "models", "mountPath": settings.store_path, "subPath": settings.models_sub_path, "readOnly": True},
            {"name": "active", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    models: dict[str, Any] = (
        {"name": "models", "hostPath": {"path": settings.models_host_path, "type": "Directory"}}
        if settings.models_host_path
        else {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_claim, "readOnly": True}}
    )
    pod: dict[str, Any] = {
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "volumes": [
            models,
            {"name": "active", "configMap": {"name": name}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    if accel:
        if settings.gpu_runtime_class:
            pod["runtimeClassName"] = settings.gpu_runtime_class
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": labels}, "spec": pod}

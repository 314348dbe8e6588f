"""The test server's Deployment controller: what status a rollout reaches in each mode."""

from __future__ import annotations

from typing import Any, Literal

Controller = Literal["ready", "never", "stalled", "off"]


def deployment_status(obj: dict[str, Any], mode: Controller) -> dict[str, Any]:
    """The status a Deployment controller would write for `obj`'s current generation.

    ready: every replica updated, ready and available; never: pods updated but never ready (a crash loop or a
    pending GPU pod); stalled: as never, and Kubernetes' own progress deadline has passed.
    """
    generation = obj["metadata"].get("generation", 1)
    replicas = obj["spec"].get("replicas", 1)
    status: dict[str, Any] = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas}
    if mode == "ready":
        status |= {"readyReplicas": replicas, "availableReplicas": replicas}
        conditions = [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ]
    elif mode == "never":
        status |= {"unavailableReplicas": replicas}
        conditions = [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
        ]
    else:
        status |= {"unavailableReplicas": replicas}
        message = f'ReplicaSet "{obj["metadata"]["name"]}-5d4f8" has timed out progressing.'
        conditions = [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": message},
        ]
    status["conditions"] = conditions
    return status

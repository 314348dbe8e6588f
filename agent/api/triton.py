"""The documents of the v2 protocol's metadata routes, and Triton's extensions that tritonclient calls.

Model metadata (`GET /v2/models/{name}`) is the Open Inference Protocol's; model configuration
(`GET /v2/models/{name}/config`), statistics (`GET /v2/models[/{name}]/stats`, built by
`agent.serving.stats`) and the repository index (`POST /v2/repository/index`) are Triton's extensions,
in Triton's JSON shapes so that `tritonclient.http` reads them unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from agent.api.errors import BadRequest
from agent.api.tensors import datatype_of
from agent.serving import Served
from models.engine import TensorSpec

PLATFORM = "onnxruntime_onnx"
_GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def model_metadata(s: Served) -> dict[str, Any]:
    """`GET /v2/models/{name}`: name, versions, platform, inputs and outputs (-1 for symbolic axes)."""

    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "datatype": datatype_of(t.dtype),
                "shape": [d if isinstance(d, int) else -1 for d in t.shape],
            }
            for t in specs
        ]

    return {
        "name": s.model.name,
        "versions": [s.model.version],
        "platform": PLATFORM,
        "inputs": tensors(s.engine.inputs),
        "outputs": tensors(s.engine.outputs),
        "parameters": {"task": str(s.descriptor.task), "provider": s.engine.active_provider},
    }


def model_config(s: Served) -> dict[str, Any]:
    """`GET /v2/models/{name}/config`: Triton's model configuration of the served version.

    A graph with a symbolic batch axis is batched dynamically: `max_batch_size` is the batcher's and `dims`
    leave the batch axis out (Triton's convention); a graph with a fixed batch axis has `max_batch_size` 0
    and full `dims`.
    """
    batching = s.engine.max_batch is None
    max_batch = s.batcher.max_batch if s.batcher is not None else s.options.max_batch

    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "data_type": "TYPE_" + datatype_of(t.dtype),
                "dims": [d if isinstance(d, int) else -1 for d in (t.shape[1:] if batching and t.shape else t.shape)],
            }
            for t in specs
        ]

    provider = s.engine.active_provider
    gpu = provider in _GPU_PROVIDERS
    config: dict[str, Any] = {
        "name": s.model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch if batching else 0,
        "input": tensors(s.engine.inputs),
        "output": tensors(s.engine.outputs),
        "instance_group": [
            {
                "name": s.model.name,
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": 1,
                "gpus": [s.engine.options.device_id] if gpu else [],
            }
        ],
        "parameters": {
            "version": {"string_value": s.model.version},
            "task": {"string_value": str(s.descriptor.task)},
            "execution_provider": {"string_value": provider},
        },
    }
    if batching:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(s.options.max_delay_ms * 1000),
            "preferred_batch_size": [],
            "default_queue_policy": {"max_queue_size": s.options.max_queue},
        }
    return config


def index_request(body: bytes) -> bool:
    """The `ready` flag of a repository index request (an empty body or `{}`: every model).

    Raises:
        BadRequest: the body is not a JSON object, or `ready` is not a boolean.
    """
    if not body.strip():
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"repository index body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest('the repository index body must be a JSON object such as {"ready": true}')
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest(f"'ready' must be true or false, not {ready!r:.40}")
    return ready

"""The FastAPI application: Open Inference Protocol v2 REST, the image endpoint, health and /metrics.

The hot paths (infer, predict) take the raw `Request` and return bytes (see `agent.api.inference`);
metadata and health are small JSON documents. Errors of every route become `{"error": reason}` with the
status from `agent.api.errors.to_http` (400, 404, 413, 503 with Retry-After).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from agent.api import triton
from agent.api.budget import BodyBudget
from agent.api.errors import BadRequest, NotReady
from agent.api.inference import JSON, FastPath, Inference, error_response, read_body
from agent.api.metrics import CONTENT_TYPE, ApiMetrics
from agent.api.settings import ApiSettings
from agent.api.tensors import DATATYPES
from agent.serving import ModelRepository

SERVER_NAME = "edgefleet-agent"
EXTENSIONS = ["binary_tensor_data", "image_predict", "model_configuration", "statistics"]
INDEX_LIMIT = 64 * 1024  # bytes of a repository index request body

try:
    SERVER_VERSION = metadata.version("edgefleet")
except metadata.PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0.0.0"

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": sorted(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Open Inference Protocol v2 request. With the binary tensor data extension, send "
        "`Inference-Header-Content-Length` and append each tensor that has a `binary_data_size` parameter.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            }
        },
    }
}
INDEX_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": 'Optional: `{"ready": true}` lists only the models ready to serve.',
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}, "additionalProperties": True}
            }
        },
    }
}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A JPEG or PNG image as the raw body, or as a file part of a multipart form.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {JSON: {"schema": {"type": "object", "properties": {"error": {}}}}}}
    for code, text in {
        400: "bad input",
        404: "unknown model or version",
        413: "too large",
        503: "not ready or overloaded",
    }.items()
}

ModelName = Annotated[str, Path(description="Model name.")]
ModelVersion = Annotated[str, Path(description="Model version (semver).")]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def create_asgi(settings: ApiSettings, repo: ModelRepository) -> FastPath:
    """The app as served: `create_app` behind the inference fast path (see `agent.api.inference.FastPath`)."""
    app = create_app(settings, repo)
    return FastPath(app, app.state.handlers)


def create_app(settings: ApiSettings, repo: ModelRepository) -> FastAPI:
    """The ASGI app serving every model of `repo` under `settings`; its lifespan binds the repository to the
    server's loop."""
    retry = settings.retry_after_s
    budget = BodyBudget(settings.max_body_bytes_in_flight, retry)
    metrics = ApiMetrics(repo, budget)
    pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="preprocess")
    handlers = Inference(settings, repo, metrics, pool, budget)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await repo.attach()
        try:
            yield
        finally:
            await repo.detach()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="edgefleet on-device inference API",
        version=SERVER_VERSION,
        description="Open Inference Protocol v2 (KServe/Triton REST) plus an image endpoint.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.metrics = metrics
    app.state.handlers = handlers

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return Response(orjson.dumps({"error": str(exc.detail)}), status_code=exc.status_code, media_type=JSON)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response(BadRequest("; ".join(parts) or "invalid request"), retry)

    async def any_error(_: Request, exc: Exception) -> Response:
        return error_response(exc, retry)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, any_error)

    @app.get("/v2/health/live", tags=["health"], summary="Server liveness")
    async def live() -> Response:
        return _json({"live": True})

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        summary="Server readiness (every model it serves is ready)",
        responses=ERRORS,
    )
    async def ready() -> Response:
        if not repo.is_ready():
            return error_response(NotReady("no model is active on this device yet"), retry)
        return _json({"ready": True})

    @app.get("/v2", tags=["metadata"], summary="Server metadata")
    async def server_metadata() -> Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    async def model_metadata(name: str, version: str | None) -> Response:
        try:
            return _json(triton.model_metadata(repo.lookup(name, version)))
        except Exception as e:
            return error_response(e, retry)

    async def model_ready(name: str, version: str | None) -> Response:
        try:
            s = repo.lookup(name, version)
            if s.batcher is None:
                raise NotReady(f"model {name!r} is loaded but not serving yet")
            return _json({"name": s.model.name, "version": s.model.version, "ready": True})
        except Exception as e:
            return error_response(e, retry)

    @app.get("/v2/models/stats", tags=["metadata"], summary="Inference statistics of every model (Triton)")
    async def stats_all() -> Response:
        return _json({"model_stats": repo.statistics()})

    async def model_stats(name: str, version: str | None) -> Response:
        try:
            return _json({"model_stats": repo.statistics(name, version)})
        except Exception as e:
            return error_response(e, retry)

    async def config(name: str, version: str | None) -> Response:
        try:
            return _json(triton.model_config(repo.lookup(name, version)))
        except Exception as e:
            return error_response(e, retry)

    @app.get("/v2/models/{name}/stats", tags=["metadata"], summary="Inference statistics (Triton)", responses=ERRORS)
    async def stats_latest(name: ModelName) -> Response:
        return await model_stats(name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/stats",
        tags=["metadata"],
        summary="Inference statistics of a version (Triton)",
        responses=ERRORS,
    )
    async def stats_version(name: ModelName, version: ModelVersion) -> Response:
        return await model_stats(name, version)

    @app.get("/v2/models/{name}/config", tags=["metadata"], summary="Model configuration (Triton)", responses=ERRORS)
    async def config_latest(name: ModelName) -> Response:
        return await config(name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/config",
        tags=["metadata"],
        summary="Model configuration of a version (Triton)",
        responses=ERRORS,
    )
    async def config_version(name: ModelName, version: ModelVersion) -> Response:
        return await config(name, version)

    @app.post(
        "/v2/repository/index",
        tags=["metadata"],
        summary="Model repository index (Triton)",
        openapi_extra=INDEX_BODY,
        responses=ERRORS,
    )
    async def repository_index(request: Request) -> Response:
        try:
            ready = triton.index_request(await read_body(request, INDEX_LIMIT, settings.read_timeout_s))
            return _json(repo.repository_index(ready))
        except Exception as e:
            return error_response(e, retry)

    @app.get("/v2/models/{name}", tags=["metadata"], summary="Model metadata", responses=ERRORS)
    async def metadata_latest(name: ModelName) -> Response:
        return await model_metadata(name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}", tags=["metadata"], summary="Model version metadata", responses=ERRORS
    )
    async def metadata_version(name: ModelName, version: ModelVersion) -> Response:
        return await model_metadata(name, version)

    @app.get("/v2/models/{name}/ready", tags=["health"], summary="Model readiness", responses=ERRORS)
    async def ready_latest(name: ModelName) -> Response:
        return await model_ready(name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["health"],
        summary="Model version readiness",
        responses=ERRORS,
    )
    async def ready_version(name: ModelName, version: ModelVersion) -> Response:
        return await model_ready(name, version)

    @app.post(
        "/v2/models/{name}/infer",
        tags=["inference"],
        summary="Infer (v2 tensors)",
        openapi_extra=INFER_BODY,
        responses=ERRORS,
    )
    async def infer_latest(request: Request, name: ModelName) -> Response:
        return await handlers.infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["inference"],
        summary="Infer on a version (v2 tensors)",
        openapi_extra=INFER_BODY,
        responses=ERRORS,
    )
    async def infer_version(request: Request, name: ModelName, version: ModelVersion) -> Response:
        return await handlers.infer(request, name, version)

    @app.post(
        "/v1/models/{name}:predict",
        tags=["inference"],
        summary="Classify, detect, or run (raw output tensors) on an image",
        openapi_extra=IMAGE_BODY,
        responses=ERRORS,
    )
    async def predict(
        request: Request,
        name: ModelName,
        top_k: Annotated[
            int | None,
            Query(
                ge=1, le=1000, description="Classes (classification) or boxes (detection) to return; not for tensors."
            ),
        ] = None,
        threshold: Annotated[float | None, Query(ge=0, le=1, description="Minimum score of a class or box.")] = None,
    ) -> Response:
        return await handlers.predict(request, name, top_k, threshold)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app

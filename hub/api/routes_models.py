"""Model registry routes: upload (multipart, streamed to disk), list, show, delete."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest
from starlette.types import Message

from hub.api.deps import Operator, Viewer
from hub.api.schemas import errors
from hub.errors import InvalidInput, InvalidModel, TooLarge
from hub.views import model_version_view
from hub.views.schemas import ModelPushed, ModelVersionDetail, ModelVersionView

if TYPE_CHECKING:
    from hub.services import HubServices

_BLOCK = 1 << 20
_FORM_SLACK = 1 << 20  # multipart headers and the descriptor field beside the file


def models_router(hub: HubServices) -> APIRouter:
    """Routes under /api/v1/models."""
    r = APIRouter(prefix="/api/v1/models", tags=["models"])
    registry = hub.registry

    @r.post(
        "", status_code=201, response_model=ModelPushed,
        summary="Upload a model version (multipart: `file` and `descriptor` JSON)",
        responses={
            200: {"model": ModelPushed, "description": "these exact bytes were already stored"},
            **errors(400, 401, 403, 409, 413, 429),
        },
    )  # fmt: skip
    async def push(request: Request, principal: Operator) -> JSONResponse:
        limit = hub.settings.api.max_upload_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + _FORM_SLACK:
            raise TooLarge(f"upload of {length} bytes exceeds the {limit}-byte limit")
        seen = 0

        async def receive() -> Message:
            nonlocal seen
            message = await request.receive()
            seen += len(message.get("body", b""))
            if seen > limit + _FORM_SLACK:
                raise TooLarge(f"upload exceeds the {limit}-byte limit")
            return message

        counted = StarletteRequest(request.scope, receive)
        async with counted.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            raw = form.get("descriptor")
            if not isinstance(file, UploadFile):
                raise InvalidInput("the form needs a `file` part holding the .onnx bytes")
            if not isinstance(raw, str):
                raise InvalidInput("the form needs a `descriptor` field holding the model description as JSON")
            try:
                descriptor = json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise InvalidModel(f"descriptor is not valid JSON: {str(e)[:200]}") from e
            if not isinstance(descriptor, dict):
                raise InvalidModel("descriptor must be a JSON object")
            for key in ("name", "version"):
                override = form.get(key)
                if isinstance(override, str) and override:
                    descriptor[key] = override
            # the spooled part is copied in 1 MiB blocks: never the whole file in memory
            path = await run_in_threadpool(registry.receive, iter(lambda: file.file.read(_BLOCK), b""), max_bytes=limit)
            filename = (file.filename or "upload.onnx")[:200]
        result = await run_in_threadpool(registry.push, path, descriptor, actor=principal.name, filename=filename)
        body = ModelPushed(**dict(model_version_view(result.version)), created=result.created, restored=result.restored)
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if result.created else 200)

    @r.get("", summary="List every model version", responses=errors(401, 429))
    def list_all(_p: Viewer) -> list[ModelVersionView]:
        return [model_version_view(mv) for mv in registry.versions()]

    @r.get("/{name}", summary="List the versions of one model", responses=errors(401, 404, 429))
    def list_one(name: str, _p: Viewer) -> list[ModelVersionView]:
        return [model_version_view(mv) for mv in registry.versions(name)]

    @r.get(
        "/{name}/{version}",
        summary="Show one version: description, blob, devices that want it",
        responses=errors(401, 404, 429),
    )
    def show(name: str, version: str, _p: Viewer) -> ModelVersionDetail:
        return hub.views.model_detail(registry.get(name, version))

    @r.delete(
        "/{name}/{version}",
        status_code=204,
        summary="Delete a version no device wants (409 otherwise)",
        responses=errors(401, 403, 404, 409, 429),
    )
    def delete(name: str, version: str, principal: Operator) -> None:
        registry.delete(name, version, actor=principal.name)

    return r

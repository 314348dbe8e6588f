"""The error responses of the hub's OpenAPI: what the API really answers, not FastAPI's default 422.

Every error is `{"error": {"code", "message"}}` (hub.api.app maps errors in one place). For each
operation the schema lists the statuses it can answer: 400 for a body, query or path that does not
validate (never 422), 401 and 429 (failed-authentication limit, with Retry-After) wherever a token is
needed, 403 where a role above viewer is, 404 where a path names a record or a mutation references one,
409 for mutations that can conflict with what is stored, 413 for uploads and for deployments whose signed
desired state would exceed the agents' message limit. schemathesis checks the statuses it sees against
this (tests/faults/test_fuzz_hub_api.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from hub.credentials import Role

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "stable machine-readable code, e.g. not_found"},
                "message": {"type": "string", "description": "what is wrong and what to do"},
            },
        }
    },
}
WHY = {
    "400": "the body, a query parameter or a path parameter is not valid (the message names it)",
    "401": "no token, or an unknown or revoked one",
    "403": "the token's role is too low for this operation",
    "404": "a record named in the path or the body does not exist",
    "409": "the request conflicts with what is stored (exists already, still in use, wrong state)",
    "413": "the upload, or the signed desired state it would produce, is too large",
    "429": "too many failed authentications from this address (see Retry-After)",
}
_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them in `original_router`; prefixes are ours)."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        inner = getattr(r, "original_router", None) or getattr(r, "router", None)
        if inner is not None and inner is not r:
            yield from _api_routes(getattr(inner, "routes", ()))


def _role(route: APIRoute) -> Role | None:
    """The role the route's dependencies require (hub.api.deps marks them), None when none is needed."""
    for dep in route.dependant.dependencies:
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            return role
    return None


def _codes(route: APIRoute, method: str) -> list[str]:
    codes = set()
    if route.dependant.path_params or route.dependant.query_params or route.dependant.body_params:
        codes.add("400")
    if method == "POST" and route.path == "/api/v1/models":
        codes |= {"400", "413"}  # a multipart form read by hand: not visible as a body parameter
    role = _role(route)
    if role is not None:
        codes |= {"401", "429"}
        if role is not Role.VIEWER:
            codes.add("403")
    if route.dependant.path_params or method in _MUTATING:
        codes.add("404")
    if method in _MUTATING:
        codes |= {"409", "413"} if method == "POST" else {"409"}
    return sorted(codes)


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with one that documents the real error responses of every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        components["Error"] = ERROR_SCHEMA
        routes = {(r.path, m): r for r in _api_routes(app.routes) for m in r.methods or ()}
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                route = routes.get((path, method.upper()))
                if route is None:
                    continue
                for code in _codes(route, method.upper()):
                    responses[code] = {
                        "description": WHY[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        **({"headers": {"Retry-After": {"schema": {"type": "integer"}}}} if code == "429" else {}),
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

"""Request bodies of the REST API (pydantic v2, frozen, extra fields refused). Answers are the read side's
views (`hub.views.schemas`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.bundle import MAX_ENROL_BATCH as MAX_BATCH
from fleet.messages import RuntimeOptions


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceCreate(_Body):
    id: str = Field(description="device id: 1-63 chars of a-z 0-9 . _ -")
    labels: dict[str, str] = Field(default_factory=dict, description="labels, e.g. {'site': 'berlin'}")


class DeviceBatchCreate(_Body):
    devices: list[DeviceCreate] = Field(
        min_length=1, max_length=MAX_BATCH, description="devices to enrol in one transaction: all of them or none"
    )


class LabelPatch(_Body):
    set: dict[str, str] = Field(default_factory=dict, description="labels to add or change")
    remove: list[str] = Field(default_factory=list, max_length=64, description="label keys to remove")


class DeployRequest(_Body):
    model: str = Field(description="model name")
    version: str = Field(description="model version")
    selector: str = Field(description="label selector, e.g. site=berlin,tier!=canary")
    runtime: RuntimeOptions | None = Field(default=None, description="runtime options (default: CPU)")
    force: bool = Field(
        default=False,
        description="deploy to devices inside an active rollout too (refused otherwise: the rollout would sign its "
        "own target for them again at its next step unless it is aborted)",
    )


class TokenCreate(_Body):
    name: str = Field(min_length=1, max_length=64, description="who or what uses the token")
    role: str = Field(description="viewer, operator or admin")


class ErrorDetail(_Body):
    code: str = Field(description="stable machine-readable code, e.g. not_found, invalid_selector, forbidden")
    message: str = Field(description="what went wrong and what to do, for people")
    devices: list[str] | None = Field(
        default=None,
        description="every device the error is about, where it is about devices (the message may shorten the "
        "list): e.g. all the ids of an enrolment batch already enrolled (409 conflict); absent otherwise",
    )


class ErrorBody(_Body):
    """Every error answer of the API."""

    error: ErrorDetail


_WHY = {
    400: "invalid request: a body field, parameter or selector is wrong (the message names it)",
    401: "missing, malformed, invalid or revoked bearer token",
    403: "the token's role does not allow this",
    404: "no such device, model version, rollout or token",
    409: "conflicts with the current state (the message says with what)",
    413: "the upload exceeds the hub's limit",
    429: "too many failed authentications from this client: retry after Retry-After seconds",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer (each with the `ErrorBody` shape)."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}

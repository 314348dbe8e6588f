"""Fleet routes: devices, deployments, telemetry, events, tokens, ingest counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query

from fleet.limits import MAX_SQL_INT
from hub.api.deps import Admin, Operator, Viewer
from hub.api.schemas import DeployRequest, DeviceBatchCreate, DeviceCreate, LabelPatch, TokenCreate, errors
from hub.errors import Conflict, InvalidInput
from hub.telemetry import summarise
from hub.views.fleet import minute_of
from hub.views.schemas import (
    Deployment,
    DesiredAnswer,
    DesiredView,
    DeviceDetail,
    DeviceEnrolled,
    DevicesEnrolled,
    DeviceSummary,
    DeviceTelemetry,
    EventView,
    FleetTelemetry,
    IngestCounters,
    ModelTelemetry,
    TokenCreated,
    TokenView,
)

if TYPE_CHECKING:
    from hub.services import HubServices

TokenId = Annotated[int, Path(ge=1, le=MAX_SQL_INT, description="the token's id (GET /api/v1/tokens)")]
MAX_TS = 1e11  # Unix seconds around the year 5138: anything larger is a mistake
Since = Query(default=None, ge=0, le=MAX_TS, description="start of the range, Unix seconds")
Until = Query(default=None, ge=0, le=MAX_TS, description="end of the range (exclusive), Unix seconds")


def _range(since: float | None, until: float | None) -> tuple[float | None, float | None]:
    if since is not None and until is not None and until <= since:
        raise InvalidInput(f"until ({until}) must be after since ({since})")
    return since, until


def fleet_router(hub: HubServices) -> APIRouter:
    """Routes under /api/v1 other than models."""
    r = APIRouter(prefix="/api/v1")
    devices, views = hub.devices, hub.views

    @r.post(
        "/devices",
        status_code=201,
        tags=["devices"],
        summary="Enrol a device; returns its bootstrap bundle",
        responses=errors(400, 401, 403, 409, 429),
    )
    def add_device(body: DeviceCreate, principal: Admin) -> DeviceEnrolled:
        _d, bundle = devices.add(body.id, body.labels, actor=principal.name)
        return DeviceEnrolled(device=views.device_summary(body.id), bundle=bundle.model_dump(mode="json"))

    @r.post(
        "/devices/batch",
        status_code=201,
        tags=["devices"],
        summary="Enrol many devices in one transaction (all or none); returns their bootstrap bundles",
        responses=errors(400, 401, 403, 409, 429),
    )
    def add_devices(body: DeviceBatchCreate, principal: Admin) -> DevicesEnrolled:
        added = devices.add_many([(d.id, d.labels) for d in body.devices], actor=principal.name)
        return DevicesEnrolled(
            devices=[d.id for d, _b in added], bundles=[b.model_dump(mode="json") for _d, b in added]
        )

    @r.get(
        "/devices",
        tags=["devices"],
        summary="List devices, optionally by label selector",
        responses=errors(400, 401, 429),
    )
    def list_devices(
        _p: Viewer,
        selector: str | None = Query(default=None, description="e.g. site=berlin,tier!=canary"),
    ) -> list[DeviceSummary]:
        return views.device_summaries(selector)

    @r.get("/devices/{device_id}", tags=["devices"], summary="Show a device", responses=errors(401, 404, 429))
    def show_device(device_id: str, _p: Viewer) -> DeviceDetail:
        return views.device_detail(device_id)

    @r.patch(
        "/devices/{device_id}/labels",
        tags=["devices"],
        summary="Set and remove labels",
        responses=errors(400, 401, 403, 404, 429),
    )
    def label_device(device_id: str, body: LabelPatch, principal: Operator) -> DeviceSummary:
        devices.label(device_id, body.set, body.remove, actor=principal.name)
        return views.device_summary(device_id)

    @r.post(
        "/deployments",
        status_code=201,
        tags=["deployments"],
        summary="Deploy a version of one model to matching devices (their other models stay; 409 in_rollout for "
        "devices inside an active rollout of that model)",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def deploy(body: DeployRequest, principal: Operator) -> Deployment:
        found = [d.id for d in devices.find(body.selector)] if body.selector.strip() else []
        busy = hub.rollouts.claimed_by(found, body.model) if found else {}
        if busy and not body.force:
            held = ", ".join(f"{rid} ({n})" for rid, n in sorted(busy.items()))
            raise Conflict(
                f"{sum(busy.values())} of the matching devices are in active rollouts of {body.model}: {held}. A "
                "rollout signs its own target for its devices again at its next step: abort it (or narrow the "
                "selector) first, or deploy with force (CLI --force) knowing that",
                code="in_rollout",
            )
        result = hub.deployer.deploy(
            body.model, body.version, body.selector, actor=principal.name, runtime=body.runtime
        )
        return Deployment(model=result.model, version=result.version, devices=result.devices, in_rollouts=busy)

    @r.delete(
        "/deployments/{model}",
        tags=["deployments"],
        summary="Remove one model from matching devices that have it (their other models stay)",
        responses=errors(400, 401, 403, 404, 429),
    )
    def undeploy(
        model: str,
        principal: Operator,
        selector: Annotated[str, Query(min_length=1, max_length=4096, description="label selector")],
    ) -> Deployment:
        result = hub.deployer.undeploy(model, selector, actor=principal.name)
        return Deployment(model=result.model, version=None, devices=result.devices, in_rollouts={})

    @r.get("/deployments", tags=["deployments"], summary="Desired state of every device", responses=errors(401, 429))
    def list_desired(_p: Viewer) -> list[DesiredView]:
        return views.deployments()

    @r.get(
        "/devices/{device_id}/desired",
        tags=["deployments"],
        summary="A device's signed desired state",
        responses=errors(401, 404, 429),
    )
    def show_desired(device_id: str, _p: Viewer) -> DesiredAnswer:
        return views.desired(device_id)

    @r.get(
        "/telemetry/devices/{device_id}",
        tags=["telemetry"],
        summary="A device's telemetry per minute",
        responses=errors(400, 401, 404, 429),
    )
    def device_telemetry(
        _p: Viewer,
        device_id: str,
        since: float | None = Since,
        until: float | None = Until,
        raw: bool = Query(default=False, description="also return the raw windows (newest first)"),
        limit: int = Query(default=500, ge=1, le=10_000, description="most raw windows returned"),
    ) -> DeviceTelemetry:
        devices.get(device_id)
        since, until = _range(since, until)
        return views.device_telemetry(device_id, since=since, until=until, limit=limit if raw else None)

    @r.get(
        "/telemetry/models/{name}/{version}",
        tags=["telemetry"],
        summary="A model version's telemetry",
        responses=errors(400, 401, 404, 429),
    )
    def model_telemetry(
        _p: Viewer, name: str, version: str, since: float | None = Since, until: float | None = Until
    ) -> ModelTelemetry:
        hub.registry.get(name, version)
        since, until = _range(since, until)
        points = hub.telemetry.series(model=name, version=version, since=since, until=until)
        return ModelTelemetry(
            model=name, version=version, summary=summarise(points), series=[minute_of(p) for p in points]
        )

    @r.get(
        "/telemetry/fleet",
        tags=["telemetry"],
        summary="Fleet-wide telemetry per minute",
        responses=errors(400, 401, 429),
    )
    def fleet_telemetry(_p: Viewer, since: float | None = Since, until: float | None = Until) -> FleetTelemetry:
        since, until = _range(since, until)
        points = hub.telemetry.series(since=since, until=until)
        return FleetTelemetry(summary=summarise(points), series=[minute_of(p) for p in points])

    @r.get("/events", tags=["events"], summary="The audit log, newest first", responses=errors(400, 401, 429))
    def events(
        _p: Viewer,
        since: float | None = Since,
        until: float | None = Until,
        subject: str | None = Query(default=None, description="e.g. device/cam-1 or model/resnet:1.0.0"),
        action: str | None = Query(default=None, description="e.g. deploy, device.add, model.push"),
        limit: int = Query(default=100, ge=1, le=10_000, description="most events returned"),
    ) -> list[EventView]:
        return views.events(since=since, until=until, subject=subject, action=action, limit=limit)

    @r.post(
        "/tokens",
        status_code=201,
        tags=["tokens"],
        summary="Create an API token (shown once)",
        responses=errors(400, 401, 403, 429),
    )
    def create_token(body: TokenCreate, principal: Admin) -> TokenCreated:
        token = hub.auth.create_token(body.name, body.role, actor=principal.name)
        return TokenCreated.model_validate({"name": body.name, "role": body.role, "token": token})

    @r.get(
        "/tokens",
        tags=["tokens"],
        summary="List tokens (names, roles, ids; never the secrets)",
        responses=errors(401, 403, 429),
    )
    def list_tokens(_p: Admin) -> list[TokenView]:
        return views.tokens()

    @r.delete(
        "/tokens/{token_id}",
        status_code=204,
        tags=["tokens"],
        summary="Revoke a token (409 for the last active admin token)",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def revoke_token(token_id: TokenId, principal: Admin) -> None:
        hub.auth.revoke(token_id, actor=principal.name)

    @r.get(
        "/ingest",
        tags=["ops"],
        summary="Ingestion counters: accepted and refused messages",
        responses=errors(401, 429),
    )
    def ingest(_p: Viewer) -> IngestCounters:
        return views.ingest_counters(hub.ingest.snapshot(), hub.chunks.stats)

    return r

"""Fleet routes: devices, deployments, telemetry, events, tokens, ingest counters."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query

from fleet.limits import MAX_SQL_INT
from hub.api.deps import Admin, Operator, Viewer
from hub.api.schemas import (
    DeployRequest,
    DeviceBatchCreate,
    DeviceCreate,
    LabelPatch,
    TokenCreate,
    desired_view,
    device_view,
    event_view,
    summary_view,
    window_view,
)
from hub.errors import InvalidInput
from hub.telemetry import point_json, summarise

if TYPE_CHECKING:
    from hub.runtime import Hub

TokenId = Annotated[int, Path(ge=1, le=MAX_SQL_INT, description="the token's id (GET /api/v1/tokens)")]
MAX_TS = 1e11  # Unix seconds around the year 5138: anything larger is a mistake
Since = Query(default=None, ge=0, le=MAX_TS, description="start of the range, Unix seconds")
Until = Query(default=None, ge=0, le=MAX_TS, description="end of the range (exclusive), Unix seconds")


def _range(since: float | None, until: float | None) -> tuple[float | None, float | None]:
    if since is not None and until is not None and until <= since:
        raise InvalidInput(f"until ({until}) must be after since ({since})")
    return since, until


def fleet_router(hub: Hub) -> APIRouter:
    """Routes under /api/v1 other than models."""
    r = APIRouter(prefix="/api/v1")
    devices = hub.devices

    def view(device_id: str, *, detail: bool) -> dict[str, Any]:
        d = devices.get(device_id)
        desired = hub.store.get_desired(device_id)
        return device_view(d, devices.state(d, desired), desired, detail=detail)

    @r.post("/devices", status_code=201, tags=["devices"], summary="Enrol a device; returns its bootstrap bundle")
    def add_device(body: DeviceCreate, principal: Admin) -> dict[str, Any]:
        _d, bundle = devices.add(body.id, body.labels, actor=principal.name)
        return {"device": view(body.id, detail=False), "bundle": bundle.model_dump(mode="json")}

    @r.post(
        "/devices/batch", status_code=201, tags=["devices"],
        summary="Enrol many devices in one transaction (all or none); returns their bootstrap bundles",
    )  # fmt: skip
    def add_devices(body: DeviceBatchCreate, principal: Admin) -> dict[str, Any]:
        added = devices.add_many([(d.id, d.labels) for d in body.devices], actor=principal.name)
        return {"devices": [d.id for d, _b in added], "bundles": [b.model_dump(mode="json") for _d, b in added]}

    @r.get("/devices", tags=["devices"], summary="List devices, optionally by label selector")
    def list_devices(
        _p: Viewer,
        selector: str | None = Query(default=None, description="e.g. site=berlin,tier!=canary"),
    ) -> list[dict[str, Any]]:
        desired = {s.device_id: s for s in hub.store.list_desired()}
        now = time.time()
        return [
            device_view(d, devices.state(d, desired.get(d.id), now=now), desired.get(d.id))
            for d in devices.find(selector)
        ]

    @r.get("/devices/{device_id}", tags=["devices"], summary="Show a device")
    def show_device(device_id: str, _p: Viewer) -> dict[str, Any]:
        return view(device_id, detail=True)

    @r.patch("/devices/{device_id}/labels", tags=["devices"], summary="Set and remove labels")
    def label_device(device_id: str, body: LabelPatch, principal: Operator) -> dict[str, Any]:
        devices.label(device_id, body.set, body.remove, actor=principal.name)
        return view(device_id, detail=False)

    @r.post("/deployments", status_code=201, tags=["deployments"], summary="Deploy a version to matching devices")
    def deploy(body: DeployRequest, principal: Operator) -> dict[str, Any]:
        result = hub.deployer.deploy(
            body.model, body.version, body.selector, actor=principal.name, runtime=body.runtime
        )
        return {"model": result.model, "version": result.version, "devices": result.devices}

    @r.get("/deployments", tags=["deployments"], summary="Desired state of every device")
    def list_desired(_p: Viewer) -> list[dict[str, Any]]:
        return [desired_view(s) for s in hub.store.list_desired()]

    @r.get("/devices/{device_id}/desired", tags=["deployments"], summary="A device's signed desired state")
    def show_desired(device_id: str, _p: Viewer) -> dict[str, Any]:
        devices.get(device_id)
        s = hub.store.get_desired(device_id)
        return {"desired": desired_view(s) | {"envelope": s.envelope} if s else None}

    @r.get("/telemetry/devices/{device_id}", tags=["telemetry"], summary="A device's telemetry per minute")
    def device_telemetry(
        _p: Viewer,
        device_id: str,
        since: float | None = Since,
        until: float | None = Until,
        raw: bool = Query(default=False, description="also return the raw windows (newest first)"),
        limit: int = Query(default=500, ge=1, le=10_000, description="most raw windows returned"),
    ) -> dict[str, Any]:
        devices.get(device_id)
        since, until = _range(since, until)
        points = hub.telemetry.series(device_id=device_id, since=since, until=until)
        out: dict[str, Any] = {"device_id": device_id, "summary": summary_view(summarise(points))}
        out["seq"] = hub.store.telemetry_seq(device_id, since=since, until=until).__dict__
        out["series"] = [point_json(p) for p in points]
        if raw:
            windows = hub.store.telemetry_windows(device_id, since=since, until=until, limit=limit)
            out["windows"] = [window_view(w) for w in windows]
        return out

    @r.get("/telemetry/models/{name}/{version}", tags=["telemetry"], summary="A model version's telemetry")
    def model_telemetry(
        _p: Viewer, name: str, version: str, since: float | None = Since, until: float | None = Until
    ) -> dict[str, Any]:
        hub.registry.get(name, version)
        since, until = _range(since, until)
        points = hub.telemetry.series(model=name, version=version, since=since, until=until)
        return {"model": name, "version": version, "summary": summary_view(summarise(points)),
                "series": [point_json(p) for p in points]}  # fmt: skip

    @r.get("/telemetry/fleet", tags=["telemetry"], summary="Fleet-wide telemetry per minute")
    def fleet_telemetry(_p: Viewer, since: float | None = Since, until: float | None = Until) -> dict[str, Any]:
        since, until = _range(since, until)
        points = hub.telemetry.series(since=since, until=until)
        return {"summary": summary_view(summarise(points)), "series": [point_json(p) for p in points]}

    @r.get("/events", tags=["events"], summary="The audit log, newest first")
    def events(
        _p: Viewer,
        since: float | None = Since,
        until: float | None = Until,
        subject: str | None = Query(default=None, description="e.g. device/cam-1 or model/resnet:1.0.0"),
        action: str | None = Query(default=None, description="e.g. deploy, device.add, model.push"),
        limit: int = Query(default=100, ge=1, le=10_000, description="most events returned"),
    ) -> list[dict[str, Any]]:
        found = hub.store.list_events(since=since, until=until, subject=subject, action=action, limit=limit)
        return [event_view(e) for e in found]

    @r.post("/tokens", status_code=201, tags=["tokens"], summary="Create an API token (shown once)")
    def create_token(body: TokenCreate, principal: Admin) -> dict[str, Any]:
        return {"name": body.name, "role": body.role,
                "token": hub.auth.create_token(body.name, body.role, actor=principal.name)}  # fmt: skip

    @r.get("/tokens", tags=["tokens"], summary="List tokens (names, roles, ids; never the secrets)")
    def list_tokens(_p: Admin) -> list[dict[str, Any]]:
        return [t.__dict__ for t in hub.store.list_tokens()]

    @r.delete("/tokens/{token_id}", status_code=204, tags=["tokens"], summary="Revoke a token")
    def revoke_token(token_id: TokenId, principal: Admin) -> None:
        hub.auth.revoke(token_id, actor=principal.name)

    @r.get("/ingest", tags=["ops"], summary="Ingestion counters: accepted and refused messages")
    def ingest(_p: Viewer) -> dict[str, Any]:
        st = hub.store.ingest_stats()
        accepted, rejected = hub.ingest.snapshot()
        return {
            "accepted": accepted,
            "rejected": {f"{k}/{reason}": n for (k, reason), n in rejected.items()},
            "store": st.__dict__, "transfer": hub.chunks.stats.__dict__,
        }  # fmt: skip

    return r

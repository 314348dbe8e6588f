"""Security routes: revoke a device's broker account or give it new credentials; see what the hub enforces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from hub.api.deps import Admin, Viewer
from hub.api.schemas import errors
from hub.views.schemas import DeviceEnrolled, DeviceRevoked, SecurityStatus

if TYPE_CHECKING:
    from hub.services import HubServices


def security_router(hub: HubServices) -> APIRouter:
    """Routes under /api/v1 about device revocation and the hub's security settings."""
    r = APIRouter(prefix="/api/v1")

    @r.post(
        "/devices/{device_id}/revoke",
        tags=["devices"],
        summary="Revoke a device's broker account",
        responses=errors(401, 403, 404, 409, 429),
    )
    def revoke(device_id: str, principal: Admin) -> DeviceRevoked:
        changed = hub.revoke_device(device_id, actor=principal.name)
        return DeviceRevoked(device_id=device_id, revoked=True, changed=changed)

    @r.post(
        "/devices/{device_id}/rekey",
        tags=["devices"],
        summary="Give an enrolled device new broker credentials; returns its new bootstrap bundle",
        description="The old password is refused from now on (the broker reloads; a session made with it is "
        "closed). Labels, desired state, telemetry and rollouts stay. A revoked device is admitted again.",
        responses=errors(401, 403, 404, 429),
    )
    def rekey(device_id: str, principal: Admin) -> DeviceEnrolled:
        bundle = hub.rekey_device(device_id, actor=principal.name)
        return DeviceEnrolled(device=hub.views.device_summary(device_id), bundle=bundle.model_dump(mode="json"))

    @r.get(
        "/security",
        tags=["ops"],
        summary="What the hub enforces: broker ACL, TLS, limits, revocations",
        responses=errors(401, 429),
    )
    def status(_p: Viewer) -> SecurityStatus:
        sec = hub.security
        return SecurityStatus(
            broker_acl=sec.broker_auth is not None, tls=sec.tls is not None, revoked_devices=sorted(sec.revoked()),
            telemetry_rate_limited=dict(sec.telemetry_limiter.refused),
            cors_origins=list(hub.settings.security.cors_origins),
        )  # fmt: skip

    return r

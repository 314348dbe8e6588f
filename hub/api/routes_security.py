"""Security routes: revoke a device's broker account; see what the hub enforces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from hub.api.deps import Admin, Viewer

if TYPE_CHECKING:
    from hub.runtime import Hub


def security_router(hub: Hub) -> APIRouter:
    """Routes under /api/v1 about device revocation and the hub's security settings."""
    r = APIRouter(prefix="/api/v1")

    @r.post("/devices/{device_id}/revoke", tags=["devices"], summary="Revoke a device's broker account")
    def revoke(device_id: str, principal: Admin) -> dict[str, Any]:
        changed = hub.revoke_device(device_id, actor=principal.name)
        return {"device_id": device_id, "revoked": True, "changed": changed}

    @r.get("/security", tags=["ops"], summary="What the hub enforces: broker ACL, TLS, limits, revocations")
    def status(_p: Viewer) -> dict[str, Any]:
        sec = hub.security
        return {
            "broker_acl": sec.broker_auth is not None,
            "tls": sec.tls is not None,
            "revoked_devices": sorted(sec.revoked()),
            "telemetry_rate_limited": dict(sec.telemetry_limiter.refused),
            "cors_origins": list(hub.settings.security.cors_origins),
        }

    return r

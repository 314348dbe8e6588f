"""What the REST API and the dashboard may use of a running hub: its services, never its store.

`Hub` satisfies `HubServices` structurally; the routes are typed against this protocol, so reaching for
`hub.store` there is a type error (and importing hub.store an import-linter error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fleet.bundle import DeviceBundle
    from hub.audit import AuditLog
    from hub.auth import Auth
    from hub.deploy import Deployer
    from hub.devices import Devices
    from hub.ingest import Ingestor
    from hub.registry import Registry
    from hub.rollouts.engine import RolloutEngine
    from hub.security import HubSecurity
    from hub.sessions import AdoptionStats
    from hub.settings import HubSettings
    from hub.telemetry import TelemetryQueries
    from hub.transfer import ChunkServer
    from hub.views import FleetViews


class HubServices(Protocol):
    """The services of a started hub that its API and dashboard use."""

    settings: HubSettings
    auth: Auth
    audit: AuditLog
    views: FleetViews
    registry: Registry
    devices: Devices
    deployer: Deployer
    telemetry: TelemetryQueries
    rollouts: RolloutEngine
    security: HubSecurity
    ingest: Ingestor
    chunks: ChunkServer
    api_url: str | None
    broker_url: str

    @property
    def mqtt_connected(self) -> bool: ...

    @property
    def mqtt_unacknowledged(self) -> int: ...

    @property
    def sessions_adopted(self) -> AdoptionStats: ...

    def revoke_device(self, device_id: str, *, actor: str) -> bool: ...

    def rekey_device(self, device_id: str, *, actor: str) -> DeviceBundle: ...

"""The hub's security wiring in one place: broker accounts and ACL, TLS files, per-device ingest limits.

`Hub` builds one `HubSecurity` at start and asks it how to run the local broker, which account and CA its
MQTT link uses, what goes into device bundles, and whether a device may still send. Revoking a device
rewrites the broker's password file and reloads the broker; the hub stops accepting the device's messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.acl import BrokerAuth, hub_account
from hub.errors import Conflict
from hub.ratelimit import KeyedLimiter
from hub.settings import HubSettings
from hub.store import Store
from hub.tls import TlsFiles, resolve

log = logging.getLogger(__name__)


class HubSecurity:
    """Security state of one running hub.

    Args:
        settings: the hub's settings.
        store: the open store (devices, revocations, audit events).
    """

    def __init__(self, settings: HubSettings, store: Store) -> None:
        self.settings = settings
        self.tls: TlsFiles | None = resolve(settings)
        sec = settings.security
        self.broker_auth: BrokerAuth | None = (
            BrokerAuth(store, settings.broker_dir, settings.data_dir, settings.topic_prefix, on_change=self._changed)
            if sec.broker_acl
            else None
        )
        self.telemetry_limiter = KeyedLimiter(sec.telemetry_per_s, sec.telemetry_burst)
        self._reload: Callable[[], None] | None = None
        if self.broker_auth is not None:
            self.broker_auth.write()

    # -- broker -------------------------------------------------------------------------------------
    def local_broker_options(self) -> dict[str, Any]:
        """Keyword arguments of `LocalBroker` (password and ACL files, TLS files)."""
        auth = self.broker_auth
        files: tuple[Path, Path] | None = (auth.password_file, auth.acl_file) if auth is not None else None
        return {"auth": files, "tls": self.tls}

    def set_reload(self, reload: Callable[[], None] | None) -> None:
        """What makes the broker re-read the files (the local broker's SIGHUP; None for an external one)."""
        self._reload = reload

    def _changed(self) -> None:
        if self._reload is not None:
            self._reload()

    def link_credentials(self) -> tuple[str | None, str | None]:
        """The account the hub's MQTT link uses: the configured one, else the generated hub account."""
        b = self.settings.broker
        if b.username is not None or self.broker_auth is None:
            return b.username, b.password
        account = hub_account(self.settings.data_dir)
        return account.username, account.password

    @property
    def ca_pem(self) -> str | None:
        """CA certificate text for mqtts (the link's trust anchor and the devices' one); None: system store."""
        if self.tls is not None:
            return self.tls.ca_pem()
        ca = self.settings.tls.ca_file
        return ca.read_text() if ca is not None and ca.exists() else None

    # -- devices ------------------------------------------------------------------------------------
    def enrolled(self, device_ids: list[str]) -> None:
        """Devices were enrolled: give them broker accounts now (one rewrite of the files for all of them)."""
        if self.broker_auth is not None:
            self.broker_auth.write()

    def revoked(self) -> set[str]:
        """Ids of revoked devices."""
        return self.broker_auth.revoked() if self.broker_auth is not None else set()

    def revoke(self, device_id: str, *, actor: str) -> bool:
        """Revoke a device's broker account (the broker reloads; connected sessions are closed)."""
        if self.broker_auth is None:
            raise Conflict("broker accounts are off (security.broker_acl = false): nothing to revoke")
        return self.broker_auth.revoke(device_id, actor=actor)

    def readmit(self, device_id: str) -> bool:
        """A device got a new password: its account is written again (revoked or not; the broker reloads and
        closes a session made with the old one). Returns whether it had been revoked."""
        return self.broker_auth.readmit(device_id) if self.broker_auth is not None else False

    def allow_telemetry(self, device_id: str) -> bool:
        """Take one token from the device's telemetry bucket; False when it floods."""
        return self.telemetry_limiter.allow(device_id)

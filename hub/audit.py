"""The audit log's write side: who did what to which subject (read through `hub.views.FleetViews.events`)."""

from __future__ import annotations

import time
from typing import Any

from hub.store import Store


class AuditLog:
    """Appends audit events to the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self, actor: str, action: str, subject: str, details: dict[str, Any], *, ts: float | None = None
    ) -> None:
        """Append one event (now, unless `ts` is given)."""
        self.store.add_event(time.time() if ts is None else ts, actor, action, subject, details)

"""The hub's read side: typed views of what it stores, for the REST API and the dashboard.

`FleetViews` reads through the store interface; `schemas` holds the views (the API's response models).
hub.api and hub.dashboard read only through here (an import contract forbids them hub.store).
"""

from __future__ import annotations

from hub.views.fleet import (
    DeviceInfo,
    Fingerprint,
    FleetViews,
    UtilizationPoint,
    device_summary,
    model_version_view,
    ref_text,
)

__all__ = [
    "DeviceInfo",
    "Fingerprint",
    "FleetViews",
    "UtilizationPoint",
    "device_summary",
    "model_version_view",
    "ref_text",
]

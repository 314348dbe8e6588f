"""The fleet health dashboard, served by the hub at `/` behind the API's tokens.

`mount_dashboard(app, hub)` adds the pages, the live event stream, the static assets and the security
headers to the hub's FastAPI app. Server-rendered Jinja2 templates with htmx; charts with uPlot; both served
from `static/vendor` (no CDN: hubs run offline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi.staticfiles import StaticFiles

from hub.dashboard.live import live_router
from hub.dashboard.render import STATIC
from hub.dashboard.rollouts import rollouts_router
from hub.dashboard.routes import Pages, dashboard_router
from hub.dashboard.security import SecurityHeaders

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hub.services import HubServices

__all__ = ["mount_dashboard"]


def mount_dashboard(app: FastAPI, hub: HubServices) -> None:
    """Serve the dashboard from `app` (does nothing when `hub.settings.dashboard.enabled` is False)."""
    if not hub.settings.dashboard.enabled:
        return
    pages = Pages(hub)
    app.state.html_error = pages.http_error  # hub.api's error handler answers browsers with a page
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.include_router(dashboard_router(hub, pages))
    app.include_router(rollouts_router(hub, pages))
    app.include_router(live_router(hub))

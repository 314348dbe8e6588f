"""Live updates: a server-sent event stream that says `update` whenever the fleet changed.

The browser (static/app.js) answers an `update` by re-fetching the fragments and chart data on the page.
A stream ends after `live_max_stream_s` (the browser reconnects) so no worker is held forever, and at once
when the server is stopping (`app.state.stopping`, set by `hub.api.server`), so an open dashboard never holds
a shutdown up. It sends a `ping` every `_HEARTBEAT_S`: proxies keep it open, and the browser tells a
silent, dead hub from a quiet fleet (it shows a banner when neither arrives in time).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from hub.dashboard import session
from hub.errors import Unauthorized

if TYPE_CHECKING:
    from hub.services import HubServices

_HEARTBEAT_S = 15.0
_STATE_TICK_S = 30.0  # states change with time alone (silent devices go offline): refresh at least this often


def fingerprint(hub: HubServices) -> tuple[object, ...]:
    """Something that changes when anything the pages show changes."""
    return hub.views.fingerprint(_STATE_TICK_S)


def live_router(hub: HubServices) -> APIRouter:
    """GET /live: the event stream of a logged-in browser."""
    r = APIRouter(include_in_schema=False)
    settings = hub.settings.dashboard

    @r.get("/live")
    async def live(request: Request) -> Response:
        try:
            await run_in_threadpool(session.principal, request, hub.auth)
        except Unauthorized:
            return Response("not logged in", status_code=401, media_type="text/plain")

        async def events() -> AsyncIterator[str]:
            # what the fleet looks like before the client reads a byte: a change made once the stream has
            # started is an update (taken after the first lines, a change in between was the baseline and went
            # unsaid until the next one)
            last = await run_in_threadpool(fingerprint, hub)
            yield f"retry: {int(settings.live_interval_s * 1000) + 1000}\n\n"
            yield f"event: ping\ndata: {json.dumps({'ts': time.time()})}\n\n"
            deadline = time.monotonic() + settings.live_max_stream_s
            quiet_since = time.monotonic()
            stopping: Callable[[], bool] = getattr(request.app.state, "stopping", lambda: False)
            while time.monotonic() < deadline and not stopping() and not await request.is_disconnected():
                await asyncio.sleep(settings.live_interval_s)  # first: the baseline was just taken
                fp = await run_in_threadpool(fingerprint, hub)
                if fp != last:
                    yield f"event: update\ndata: {json.dumps({'ts': time.time()})}\n\n"
                    last = fp
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > _HEARTBEAT_S:
                    yield f"event: ping\ndata: {json.dumps({'ts': time.time()})}\n\n"
                    quiet_since = time.monotonic()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"}
        )

    return r

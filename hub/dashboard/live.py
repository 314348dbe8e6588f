"""Live updates: a server-sent event stream that says `update` whenever the fleet changed.

The browser (static/app.js) answers an `update` by re-fetching the fragments and chart data on the page.
A page says, in its stream's URL (`/live?since=STAMP`), what the fleet's data looked like before the page read
it; a stream that finds the data changed since then says `update` at once: a change made between the page's
render and the stream's start (or while the browser reconnected) is shown, not left for the next one. The
stamp leaves the state tick out: a stream starting in a later tick than its page's says nothing for that alone.
Each `update` carries the stamp the page refreshes to as its event id, which the browser sends back when it
reconnects (`Last-Event-ID`): a page that refreshed since it loaded is not refreshed again for the same change.
A stream ends after `live_max_stream_s` (the browser reconnects) so no worker is held forever, and at once
when the server is stopping (`app.state.stopping`, set by `hub.api.server`), so an open dashboard never holds
a shutdown up. It sends a `ping` every `_HEARTBEAT_S`: proxies keep it open, and the browser tells a
silent, dead hub from a quiet fleet (it shows a banner when neither arrives in time).
"""

from __future__ import annotations

import asyncio
import hashlib
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
    from hub.views import Fingerprint

_HEARTBEAT_S = 15.0
_STATE_TICK_S = 30.0  # states change with time alone (silent devices go offline): refresh at least this often


def fingerprint(hub: HubServices) -> Fingerprint:
    """Something that changes when anything the pages show changes (and every `_STATE_TICK_S`)."""
    return hub.views.fingerprint(_STATE_TICK_S)


def stamp(fp: Fingerprint) -> str:
    """A fingerprint's data as the short text a page puts in its stream's URL (`/live?since=...`). Not its
    tick: with it, every stream starting in a later tick than its page's said `update` at once, changed or not."""
    return hashlib.blake2b(repr(fp.data).encode(), digest_size=8).hexdigest()


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

        # what the page shows: the last update it had (the browser's reconnect says), else what it was read at
        since = request.headers.get("last-event-id") or request.query_params.get("since")

        def update(fp: Fingerprint) -> str:
            return f"event: update\ndata: {json.dumps({'ts': time.time()})}\nid: {stamp(fp)}\n\n"

        async def events() -> AsyncIterator[str]:
            # what the fleet looks like before the client reads a byte: a change made once the stream has
            # started is an update (taken after the first lines, a change in between was the baseline and went
            # unsaid until the next one)
            last = await run_in_threadpool(fingerprint, hub)
            yield f"retry: {int(settings.live_interval_s * 1000) + 1000}\n\n"
            yield f"event: ping\ndata: {json.dumps({'ts': time.time()})}\n\n"
            if since is not None and since != stamp(last):  # the data changed since the page read it
                yield update(last)
            deadline = time.monotonic() + settings.live_max_stream_s
            quiet_since = time.monotonic()
            stopping: Callable[[], bool] = getattr(request.app.state, "stopping", lambda: False)
            while time.monotonic() < deadline and not stopping() and not await request.is_disconnected():
                await asyncio.sleep(settings.live_interval_s)  # first: the baseline was just taken
                fp = await run_in_threadpool(fingerprint, hub)
                if fp != last:  # the data, or the state tick
                    yield update(fp)
                    last = fp
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > _HEARTBEAT_S:
                    yield f"event: ping\ndata: {json.dumps({'ts': time.time()})}\n\n"
                    quiet_since = time.monotonic()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"}
        )

    return r

"""Dashboard pages and fragments: overview, devices, device detail, models, login; chart data as JSON.

Pages answer HTML; a missing or expired session redirects to /login (htmx requests get `HX-Redirect`).
Errors render as an HTML page or fragment with the HubError's status and message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from hub.auth import Principal
from hub.dashboard import charts, session
from hub.dashboard.cache import TtlCache
from hub.dashboard.detail import device_detail
from hub.dashboard.live import fingerprint, stamp
from hub.dashboard.render import STATIC, environment
from hub.dashboard.views import (
    SORT_KEYS,
    STATES,
    DeviceQuery,
    DeviceRow,
    device_page,
    fleet_rows,
    model_rows,
    overview,
    traffic,
)
from hub.errors import HubError, InvalidInput, Unauthorized

if TYPE_CHECKING:
    from hub.services import HubServices

log = logging.getLogger(__name__)
MAX_FIELD = 512
TRAFFIC_TTL_S = 15.0  # fleet-wide sums over a day: shared by every browser for this long
# fleet-wide chart data is shared this long per range: about one grid step (a day has 5-minute points)
CHART_TTL_S = {"1h": 5.0, "6h": 15.0, "24h": 60.0, "7d": 300.0}
ROWS_TTL_S = 30.0  # keyed by the fleet's fingerprint: any change makes a new key at once


def _safe_next(target: str | None) -> str:
    """Only local paths are followed after login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 1000:
        return "/"
    return target


def _page_of(request: Request) -> str:
    """The local path (and query) of the page an htmx request came from (`HX-Current-URL`), or `/`."""
    current = urlsplit(request.headers.get("hx-current-url", ""))
    if current.netloc != request.url.netloc or not current.path.startswith("/") or current.path.startswith("/ui/"):
        return "/"
    return _safe_next(current.path + (f"?{current.query}" if current.query else ""))


class Pages:
    """Renders the dashboard for one hub."""

    def __init__(self, hub: HubServices) -> None:
        self.hub = hub
        self.settings = hub.settings.dashboard
        self.env = environment()
        self.cache = TtlCache()

    # -- rendering ----------------------------------------------------------------------------------
    def html(self, request: Request, template: str, who: Principal | None, status: int = 200, **ctx: Any) -> Response:
        token = session.session_token(request)
        body = self.env.get_template(template).render(
            who=who, csrf=session.csrf_token(token) if token and who else "", path=request.url.path,
            now=time.time(), states=STATES, live_since=getattr(request.state, "live_since", None), **ctx,
        )  # fmt: skip
        return HTMLResponse(body, status_code=status)

    def error(self, request: Request, who: Principal | None, e: HubError) -> Response:
        template = "_error.html" if request.headers.get("hx-request") else "error.html"
        # a page the hub could not build for now (its database away) loads itself again after the Retry-After:
        # a screen on the wall comes back with the database; a form's answer never
        refresh_s = e.retry_after_s if request.method == "GET" and e.status in (429, 503) else None
        response = self.html(request, template, who, status=e.status, error=e, refresh_s=refresh_s)
        if e.retry_after_s is not None:  # the same wait as the page says
            response.headers["retry-after"] = str(e.retry_after_s)
        return response

    async def http_error(self, request: Request, status: int, message: str) -> Response:
        """An error page for a browser (`Accept: text/html`) outside the API: an unknown URL, a wrong method."""
        try:
            who: Principal | None = await run_in_threadpool(session.principal, request, self.hub.auth)
        except HubError:
            who = None
        if status == 404:
            message = f"There is no page at {request.url.path[:200]}."
        error = HubError(message, code={404: "not_found", 405: "method_not_allowed"}.get(status, "http_error"))
        error.status = status
        return self.html(request, "error.html", who, status=status, error=error)

    def login_redirect(self, request: Request) -> Response:
        here = str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        if request.headers.get("hx-request"):
            # a fragment's own URL is no page to come back to: the page the browser shows is
            target = "/login?next=" + quote(_page_of(request))
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse("/login?next=" + quote(here), status_code=303)

    async def page(self, request: Request, build: Callable[[Principal], Response]) -> Response:
        """Authenticate from the cookie, then build the response in a worker thread; errors become HTML."""
        try:
            who = await run_in_threadpool(session.principal, request, self.hub.auth)
        except Unauthorized:
            return self.login_redirect(request)
        except HubError as e:  # RateLimited: too many failed attempts from this address
            return self.error(request, None, e)
        try:
            if not request.headers.get("hx-request"):  # a whole page: its live stream starts from what it reads,
                # so the stamp is taken before the page reads anything (a change after it is an update at once)
                request.state.live_since = stamp(await run_in_threadpool(fingerprint, self.hub))
            return await run_in_threadpool(build, who)
        except HubError as e:
            return self.error(request, who, e)
        except Exception:  # a page never answers a bare 500: log it and say so in the page's own style
            log.exception("dashboard: rendering %s failed", request.url.path)
            return self.error(request, who, HubError("unexpected error while rendering this page; see the hub log"))

    # -- views --------------------------------------------------------------------------------------
    def rows(self) -> list[DeviceRow]:
        """Every device as a row; shared by all pages and browsers until anything in the fleet changes."""
        return self.cache.get(("rows", fingerprint(self.hub)), ROWS_TTL_S, lambda: fleet_rows(self.hub))

    def device_query(self, request: Request) -> DeviceQuery:
        p = request.query_params
        for key in ("selector", "state", "version", "sort", "page"):
            if len(p.get(key, "")) > MAX_FIELD:
                raise InvalidInput(f"{key} is longer than {MAX_FIELD} characters")
        state = p.get("state", "")
        if state and state not in STATES:
            raise InvalidInput(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        sort = p.get("sort", "id") or "id"
        if sort not in SORT_KEYS:
            raise InvalidInput(f"unknown sort column {sort!r}: use one of {', '.join(SORT_KEYS)}")
        page_text = p.get("page", "1") or "1"
        if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
            raise InvalidInput(f"page must be a number from 1, not {page_text[:20]!r}")
        return DeviceQuery(
            selector=p.get("selector", "").strip(), state=state, version=p.get("version", "").strip(), sort=sort,
            desc=p.get("desc", "") in ("1", "true"), page=int(page_text),
        )  # fmt: skip

    def device_table(self, request: Request, who: Principal, *, fragment: bool) -> Response:
        q = self.device_query(request)
        result = device_page(self.rows(), q, self.settings.page_size)
        template = "_device_table.html" if fragment else "devices.html"
        resp = self.html(request, template, who, q=q, result=result, sort_keys=SORT_KEYS)
        if fragment:
            resp.headers["HX-Push-Url"] = "/devices" + (("?" + request.url.query) if request.url.query else "")
        return resp


def dashboard_router(hub: HubServices, pages: Pages | None = None) -> APIRouter:
    """The dashboard's routes (not part of the OpenAPI schema)."""
    pages = pages or Pages(hub)
    r = APIRouter(include_in_schema=False)

    @r.get("/favicon.ico")
    async def favicon() -> Response:
        return FileResponse(
            STATIC / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    @r.get("/login")
    async def login_form(request: Request) -> Response:
        return pages.html(request, "login.html", None, next=_safe_next(request.query_params.get("next")), failed=None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        try:
            session.check_origin(request)
        except HubError as e:
            return pages.html(request, "login.html", None, status=e.status, next="/", failed=e.message)
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            token = form.get("token")
            target = _safe_next(str(form.get("next") or "/"))
        token = token.strip() if isinstance(token, str) else ""
        try:
            if not token:
                raise Unauthorized("enter an API token")
            await run_in_threadpool(session.check_token, request, hub.auth, token)
        except HubError as e:
            status = e.status if e.status == 429 else 401
            page = pages.html(request, "login.html", None, status=status, next=target, failed=e.message)
            if e.retry_after_s is not None:
                page.headers["retry-after"] = str(e.retry_after_s)
            return page
        resp = RedirectResponse(target, status_code=303)
        session.set_session(resp, token, pages.settings)
        return resp

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
            sent = form.get("csrf")
        try:
            session.check_csrf(request, sent if isinstance(sent, str) else None)
        except HubError as e:
            return pages.error(request, None, e)
        resp = RedirectResponse("/login", status_code=303)
        session.clear_session(resp, pages.settings)
        return resp

    @r.get("/")
    async def overview_page(request: Request) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "overview.html", who, o=overview(hub, pages.rows()))
        )

    @r.get("/ui/overview")
    async def overview_fragment(request: Request) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "_overview.html", who, o=overview(hub, pages.rows()))
        )

    @r.get("/ui/overview/traffic")
    async def traffic_fragment(request: Request) -> Response:
        def build(who: Principal) -> Response:
            t = pages.cache.get("traffic", TRAFFIC_TTL_S, lambda: traffic(hub))
            return pages.html(request, "_traffic.html", who, t=t)

        return await pages.page(request, build)

    @r.get("/devices")
    async def devices_page(request: Request) -> Response:
        return await pages.page(request, lambda who: pages.device_table(request, who, fragment=False))

    @r.get("/ui/devices")
    async def devices_fragment(request: Request) -> Response:
        return await pages.page(request, lambda who: pages.device_table(request, who, fragment=True))

    @r.get("/devices/{device_id}")
    async def device_page_(request: Request, device_id: str) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "device.html", who, d=device_detail(hub, device_id))
        )

    @r.get("/ui/devices/{device_id}")
    async def device_fragment(request: Request, device_id: str) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "_device.html", who, d=device_detail(hub, device_id))
        )

    @r.get("/models")
    async def models_page(request: Request) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "models.html", who, models=model_rows(hub, pages.rows()))
        )

    def _json(build: Callable[[], dict[str, Any]]) -> Callable[[Principal], Response]:
        return lambda _who: JSONResponse(build())

    @r.get("/ui/data/fleet")
    async def fleet_data(request: Request) -> Response:
        rng = request.query_params.get("range", "1h")

        def build() -> dict[str, Any]:
            charts.range_seconds(rng)  # InvalidInput for unknown ranges, before anything is cached under them
            ttl = CHART_TTL_S[rng]
            return pages.cache.get(("fleet", rng), ttl, lambda: charts.fleet_charts(hub, rng))

        return await pages.page(request, _json(build))

    @r.get("/ui/data/devices/{device_id}")
    async def device_data(request: Request, device_id: str) -> Response:
        rng = request.query_params.get("range", "1h")

        def build() -> dict[str, Any]:
            hub.devices.get(device_id)
            return charts.device_charts(hub, device_id, rng)

        return await pages.page(request, _json(build))

    return r

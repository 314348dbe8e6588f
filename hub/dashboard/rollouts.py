"""Rollout pages: the list, one rollout with every wave and gate evaluation, and the operator commands.

Commands (pause, resume, abort, rollback) are POSTs that need the operator role, this session's CSRF token
and a same-origin request; a viewer who presses a button gets the refusal in place.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from hub.credentials import Role
from hub.dashboard import session
from hub.errors import HubError, InvalidInput, Unauthorized
from hub.rollouts.gates import JUDGED_IN
from hub.rollouts.model import GateResult, RolloutState, WavePhase
from hub.rollouts.views import RolloutStatus, RolloutSummary, WaveStatus, status_view, summary_view
from hub.views.schemas import View

if TYPE_CHECKING:
    from hub.dashboard.routes import Pages
    from hub.dashboard.views import DeviceRow
    from hub.services import HubServices

Action = Literal["pause", "resume", "abort", "rollback"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "abort", "rollback")
ALLOWED: dict[str, tuple[Action, ...]] = {
    RolloutState.RUNNING.value: ("pause", "abort", "rollback"),
    RolloutState.PAUSED.value: ("resume", "abort", "rollback"),
    RolloutState.ROLLING_BACK.value: ("abort",),
    RolloutState.COMPLETED.value: ("rollback",),
}
MAX_REASON = 500


class Progress(View):
    """Devices on target out of the rollout's devices, what the target is, and the wave in progress (from 1)."""

    done: int
    total: int
    target: str  # what "on target" means: MODEL:VERSION, or their previous version when rolling back
    wave: int
    waves: int
    empty: int = 0  # waves without devices (a small fleet over `1,10%,50%,100%`): the controller passes them at once

    @property
    def of(self) -> str:
        """The wave in progress out of the rollout's: `2 of 4`, `1 of 4 (3 empty)` when waves hold no device."""
        return f"{self.wave} of {self.waves}" + (f" ({self.empty} empty)" if self.empty else "")

    @property
    def short(self) -> str:
        """The target in a list, beside its model column: `on 1.2.0`, or `back` when rolling back."""
        return "back" if self.target == _BACK else "on " + self.target.rpartition(":")[2]


class ActiveRollout(RolloutSummary):
    """A rollout line of the overview."""

    progress: Progress


class Waiting(View):
    """What the wave in progress waits for before it bakes: its devices that neither updated nor failed yet,
    and when the controller stops waiting (offline ones are set aside then; online ones still updating count
    as activation failures)."""

    wave: int  # 0-based, as WaveStatus.index
    devices: dict[str, str]  # device -> its state in the rollout (offline, updating)
    errors: dict[str, str] = {}  # device -> the error it reports (`code: message`): why it has not updated yet
    until: float
    shadow: bool


class RolloutRow(RolloutStatus):
    """A rollout on the list and detail pages: its status, progress, the commands its state allows and what
    the risky ones would do (asked before they are sent)."""

    progress: Progress
    allowed: tuple[Action, ...] = ()
    confirm: dict[str, str] = {}
    waiting: Waiting | None = None

    def wave_label(self, w: WaveStatus) -> str:
        """What a wave's badge says: its phase; `not run (...)` for a wave this rollout stopped short of (it
        was aborted or rolls back), `empty` for a wave without devices (the controller passes it at once)."""
        if w.phase is WavePhase.PENDING and self.state in _STOPPED:
            return f"not run ({self.state.replace('_', ' ')})"
        if w.devices == 0 and w.phase in (WavePhase.PENDING, WavePhase.PASSED):
            return "empty"
        return w.phase.replace("_", " ")

    def not_back(self, w: WaveStatus) -> dict[str, str]:
        """The devices of wave `w` that the rollback has not brought back to what they ran before (device -> its
        state: failed, its error in `w.device_errors`; updating; offline); empty unless the rollout rolls or
        rolled back. Their errors are shown beside them, as the waiting wave shows its devices'."""
        if self.state not in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK):
            return {}
        return {d: s for d, s in sorted((w.device_states or {}).items()) if s in ("failed", "updating", "offline")}

    @staticmethod
    def gate_phase(g: GateResult) -> str:
        """The wave phase a gate was evaluated in (the record names only the part of the wave it judged)."""
        return JUDGED_IN.get((g.name, g.phase), g.phase).replace("_", " ")


_STOPPED = (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK, RolloutState.ABORTED)  # later waves never start
_BACK = "their previous version"


def _target(model: str, version: str, state: RolloutState) -> str:
    rolling = state in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK)
    return _BACK if rolling else f"{model}:{version}"


def _agree(n: int, verb: str) -> str:
    """A verb (given in its plural form) agreeing with `n` devices: `keep` -> `keeps` for 1."""
    return verb if n != 1 else verb + ("es" if verb.endswith(("sh", "ch", "s", "x")) else "s")


def _devices(n: int, verb: str = "") -> str:
    """`1 device`, `3 devices`; with a verb, that verb agreeing after it: `1 device keeps`, `3 devices keep`."""
    noun = f"{n} device{'' if n == 1 else 's'}"
    return f"{noun} {_agree(n, verb)}" if verb else noun


def confirmations(st: RolloutStatus) -> dict[str, str]:
    """What abort and rollback would do to how many devices, in words (the dashboard asks before sending)."""
    back = ", ".join(f"{ref} to {_devices(n)}" for ref, n in st.rollback_to.items()) or "nothing to re-sign"
    ref = f"{st.model}:{st.version}"
    return {
        "abort": f"Abort {st.id}? It stops where it stands and signs nothing: {_devices(st.totals.active, 'keep')} "
        f"{ref}, {_devices(st.totals.updating, 'finish')} the update already sent, {_devices(st.totals.pending)} "
        f"in later waves never {_agree(st.totals.pending, 'get')} it.",
        "rollback": f"Roll back {st.id}? The version each device ran before is signed again for "
        f"{_devices(st.changed_devices)} ({back}).",
    }


def progress(status: RolloutStatus) -> Progress:
    """Done/total devices, the target they count towards, and the wave label of a rollout status."""
    rolling = status.state in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK)
    done = status.totals.rolled_back if rolling else status.totals.active
    wave = min(status.wave + 1, status.wave_count)
    target = _target(status.model, status.version, status.state)
    empty = sum(1 for w in status.waves if w.devices == 0)
    return Progress(
        done=done, total=max(1, status.devices), target=target, wave=wave, waves=status.wave_count, empty=empty
    )


def waiting(st: RolloutStatus) -> Waiting | None:
    """The devices a running rollout's wave is waiting for (from a status with device states), as the
    controller's settle step counts them; None when no wave is waiting."""
    w = st.waves[st.wave] if st.state is RolloutState.RUNNING and st.wave < len(st.waves) else None
    if w is None or w.phase not in (WavePhase.ACTIVATING, WavePhase.SHADOW_LOADING) or w.started_at is None:
        return None
    shadow = w.phase is WavePhase.SHADOW_LOADING
    done = ("shadowing" if shadow else "active", "failed", "no_baseline", "left")
    left = {d: s for d, s in sorted((w.device_states or {}).items()) if s not in done}
    if not left:
        return None
    errors = {d: e for d, e in (w.device_errors or {}).items() if d in left}
    until = w.started_at + st.spec.offline_timeout_s
    return Waiting(wave=w.index, devices=left, errors=errors, until=until, shadow=shadow)


def rollout_statuses(hub: HubServices, *, active_only: bool = False) -> list[RolloutRow]:
    """Every rollout's status (newest first), with its progress."""
    engine = hub.rollouts
    found = [r for r in engine.all() if r.state.active or not active_only]
    if not found:
        return []
    fleets: dict[str, Any] = {}
    out = []
    for r in found:
        fleet = fleets.get(r.spec.model) or fleets.setdefault(r.spec.model, engine.fleet(r.spec.model))
        st = status_view(r, fleet)
        out.append(RolloutRow(**dict(st), progress=progress(st)))
    return out


def active_rollouts(hub: HubServices, rows: list[DeviceRow]) -> list[ActiveRollout]:
    """Active rollouts with their progress, counted from the device rows at hand (cheap: for the overview)."""
    running = {r.id: r.running for r in rows}
    out = []
    for r in hub.rollouts.all():  # from the store: what any replica started
        if not r.state.active:
            continue
        target = f"{r.spec.model}:{r.spec.version}"
        members = [d for d, e in r.devices.items() if e.left_at is None]
        on_target = sum(1 for d in members if target in running.get(d, []))
        done = len(members) - on_target if r.state is RolloutState.ROLLING_BACK else on_target
        p = Progress(
            done=done, total=max(1, len(members)), target=_target(r.spec.model, r.spec.version, r.state),
            wave=min(r.current + 1, len(r.waves)), waves=len(r.waves),
            empty=len(r.waves) - len({e.wave for e in r.devices.values()}),
        )  # fmt: skip
        out.append(ActiveRollout(**dict(summary_view(r)), progress=p))
    return sorted(out, key=lambda x: x.created_at, reverse=True)


def rollout_detail(hub: HubServices, rollout_id: str) -> RolloutRow:
    """One rollout's status with per-device states (NotFound for unknown ids)."""
    if len(rollout_id) > 40:
        raise InvalidInput("a rollout id is at most 40 characters")
    engine = hub.rollouts
    rollout = engine.get(rollout_id)
    st = status_view(rollout, engine.fleet(rollout.spec.model), devices=True)
    return RolloutRow(
        **dict(st), progress=progress(st), allowed=ALLOWED.get(st.state, ()), confirm=confirmations(st),
        waiting=waiting(st),
    )  # fmt: skip


def rollouts_router(hub: HubServices, pages: Pages) -> APIRouter:
    """GET /rollouts, GET /rollouts/{id}, its fragment, and POST /rollouts/{id}/{action}."""
    r = APIRouter(include_in_schema=False)

    @r.get("/rollouts")
    async def list_page(request: Request) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "rollouts.html", who, rollouts=rollout_statuses(hub))
        )

    @r.get("/rollouts/{rollout_id}")
    async def detail_page(request: Request, rollout_id: str) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "rollout.html", who, ro=rollout_detail(hub, rollout_id))
        )

    @r.get("/ui/rollouts/{rollout_id}")
    async def detail_fragment(request: Request, rollout_id: str) -> Response:
        return await pages.page(
            request, lambda who: pages.html(request, "_rollout.html", who, ro=rollout_detail(hub, rollout_id))
        )

    @r.post("/rollouts/{rollout_id}/{action}")
    async def act(request: Request, rollout_id: str, action: str) -> Response:
        htmx = bool(request.headers.get("hx-request"))
        try:
            who = await run_in_threadpool(session.principal, request, hub.auth)
        except Unauthorized:
            return pages.login_redirect(request)
        try:
            async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
                csrf, reason = form.get("csrf"), form.get("reason")
            session.check_csrf(request, csrf if isinstance(csrf, str) else None)
            session.require(who, Role.OPERATOR)
            cmd = next((a for a in ACTIONS if a == action), None)
            if cmd is None:
                raise InvalidInput(f"unknown command {action[:20]!r}: use pause, resume, abort or rollback")
            why = reason.strip()[:MAX_REASON] if isinstance(reason, str) and reason.strip() else None
            await run_in_threadpool(hub.rollouts.command, rollout_id, cmd, actor=who.name, reason=why)
        except HubError as e:
            return pages.error(request, who, e)
        if not htmx:
            return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
        resp = pages.html(
            request, "_notice.html", who, message=f"{action} accepted ({who.name}, {time.strftime('%H:%M:%S')})"
        )
        resp.headers["HX-Trigger"] = "rollout:changed"
        return resp

    return r

"""Rollout routes: start, list, status, and the pause / resume / abort / rollback commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from hub.api.deps import Operator, Viewer
from hub.api.schemas import errors
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.model import RolloutSpec, RolloutState
from hub.rollouts.views import RolloutStatus, RolloutSummary, status_view

if TYPE_CHECKING:
    from hub.services import HubServices


class CommandBody(BaseModel):
    """Optional body of a rollout command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str | None = Field(default=None, max_length=500, description="why (shown in the status and events)")


OptBody = Annotated[CommandBody | None, Body(description="optional: a reason")]


def rollouts_router(hub: HubServices) -> APIRouter:
    """Routes under /api/v1/rollouts."""
    r = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])

    def engine() -> RolloutEngine:
        return hub.rollouts

    @r.post(
        "",
        status_code=201,
        summary="Start a rollout of MODEL:VERSION through waves of matching devices",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def start(spec: RolloutSpec, principal: Operator) -> RolloutStatus:
        rollout = engine().start_rollout(spec, actor=principal.name)
        return status_view(rollout, engine().fleet())

    @r.get("", summary="List rollouts, newest first", responses=errors(400, 401, 429))
    def list_all(
        _p: Viewer,
        state: Annotated[RolloutState | None, Query(description="only rollouts in this state")] = None,
        active: Annotated[bool, Query(description="only running, paused or rolling-back rollouts")] = False,
    ) -> list[RolloutSummary]:
        found = engine().summaries()
        return [x for x in found if (state is None or x.state is state) and (not active or x.state.active)]

    @r.get(
        "/{rollout_id}",
        summary="A rollout's status: each wave's device counts per state and its gates",
        responses=errors(400, 401, 404, 429),
    )
    def show(
        rollout_id: str,
        _p: Viewer,
        devices: Annotated[bool, Query(description="also list each device's state per wave")] = False,
    ) -> RolloutStatus:
        return status_view(engine().get(rollout_id), engine().fleet(), devices=devices)

    def _command(rollout_id: str, action: Literal["pause", "resume", "abort", "rollback"], actor: str,
                 body: CommandBody | None) -> RolloutStatus:  # fmt: skip
        reason = body.reason if body else None
        rollout = engine().command(rollout_id, action, actor=actor, reason=reason)
        return status_view(rollout, engine().fleet())

    @r.post(
        "/{rollout_id}/pause",
        summary="Pause: no further wave starts; devices keep what they have",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def pause(rollout_id: str, principal: Operator, body: OptBody = None) -> RolloutStatus:
        return _command(rollout_id, "pause", principal.name, body)

    @r.post(
        "/{rollout_id}/resume",
        summary="Resume a paused rollout (a failed or baking wave bakes again)",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def resume(rollout_id: str, principal: Operator, body: OptBody = None) -> RolloutStatus:
        return _command(rollout_id, "resume", principal.name, body)

    @r.post(
        "/{rollout_id}/abort",
        summary="Abort: stop here, leave every device as it is",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def abort(rollout_id: str, principal: Operator, body: OptBody = None) -> RolloutStatus:
        return _command(rollout_id, "abort", principal.name, body)

    @r.post(
        "/{rollout_id}/rollback",
        summary="Roll back: sign the previous version for every device it changed",
        responses=errors(400, 401, 403, 404, 409, 429),
    )
    def rollback(rollout_id: str, principal: Operator, body: OptBody = None) -> RolloutStatus:
        return _command(rollout_id, "rollback", principal.name, body)

    return r

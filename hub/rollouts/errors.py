"""Errors of the rollout controller (each maps to an HTTP status through hub.errors)."""

from __future__ import annotations

from hub.errors import Conflict, InvalidInput


class RolloutConflict(Conflict):
    """Some target devices already take part in another active rollout."""

    code = "rollout_conflict"


class InvalidTransition(Conflict):
    """The rollout's state does not allow the requested command (e.g. resuming a completed rollout)."""

    code = "invalid_transition"


class NoTargets(InvalidInput):
    """The selector matches no enrolled device."""

    code = "no_match"

"""Rollouts: a model version moves through waves of devices, each gated on how the model behaves on them.

`model` (the persisted record), `waves` (deterministic membership), `gates` (the measurements), `cohort`
(what the controller sees of devices), `controller` (the pure state machine), `engine` (persistence,
ticking, publishing), `views` (JSON for the API and CLI). See docs/rollouts.md.
"""

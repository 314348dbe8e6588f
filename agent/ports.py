"""The seam between the agent's control side (download, activation, telemetry) and its serving side (HTTP API).

The control side owns *when* a model becomes active; the serving side owns *how* requests reach it. They
meet only through `ServingPort`, so each is tested without the other and single-device mode (one process)
and cluster mode (`edgefleet agent serve` in pods) wire the same two halves differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fleet.histogram import Histogram
from fleet.messages import AppliedModel, ShadowStats


@dataclass(frozen=True)
class ServingWindow:
    """What the serving side saw since the previous window (the control side turns it into telemetry)."""

    requests: int
    errors: int
    latency: Histogram
    queue_depth: int
    shadow: ShadowStats | None = None


class ServingPort(Protocol):
    """Implemented by the serving side; called by the control side."""

    def activate(self, engine: Any, model: AppliedModel, descriptor: Any) -> None:
        """Make `engine` (a loaded, warmed-up, golden-checked models Engine) the active model.

        Requests in flight finish on the old engine; new requests go to the new one. The old engine is
        closed by the serving side once its last request has finished.
        """

    def set_shadow(self, engine: Any | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside the active model on `sample_rate` of requests (None: stop shadowing)."""

    def deactivate(self) -> None:
        """Serve nothing (the desired state names no model); requests get 503."""

    def take_window(self) -> ServingWindow:
        """Counters since the last call, then reset them."""

"""Cluster mode's control agent: it checks models, the serving pods serve them.

In cluster mode (`edgefleet agent run --cluster`) the agent pod downloads and verifies blobs, checks each
model once exactly as single-device mode does (load, warm-up, golden output within tolerance), moves that
model's `active.json` pointer in the store and server-side applies its serving workload (one per model);
the pods of that workload (`edgefleet agent serve --store /models --model NAME`) load the model again and
answer requests. `CheckOnlyServing` is the
`agent.ports.ServingPort` of that control agent: it records what was checked and closes each engine at once,
so the control pod never holds a model in memory after its check (its memory stays near the bare agent's;
only the check itself needs room for one model, see docs/k3s.md) and never answers inference requests. Its
telemetry windows come from the serving pods: `take_windows` asks the `agent.ports.ClusterPort`, which scrapes
each model's pods' `/metrics` (`agent.k3s.scrape`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Any

from agent.ports import ClusterPort, ServingWindow
from fleet.histogram import LatencyRecorder
from fleet.messages import AppliedModel, RuntimeOptions

log = logging.getLogger(__name__)


class CheckOnlyServing:
    """A ServingPort that serves nothing: engines are closed as soon as the control side hands them over."""

    def __init__(self, cluster: ClusterPort | None = None) -> None:
        """`cluster`: where the serving pods' counters come from (None: every window is empty)."""
        self.cluster = cluster
        self._lock = threading.Lock()
        self._active: dict[str, AppliedModel] = {}
        self._shadow: dict[str, AppliedModel] = {}
        self.runtime: dict[str, RuntimeOptions | None] = {}
        self.checked = 0
        self._trim_due = False

    def active_models(self) -> dict[str, AppliedModel]:
        """The version of each model the control side checked last and made active in the store."""
        with self._lock:
            return dict(self._active)

    def shadow_models(self) -> dict[str, AppliedModel]:
        """The shadow candidate of each model the control side checked."""
        with self._lock:
            return dict(self._shadow)

    def activate(
        self, engine: Any, model: AppliedModel, descriptor: Any, runtime: RuntimeOptions | None = None
    ) -> None:
        """Record `model` as its model's active version and release its engine (the check already ran)."""
        with self._lock:
            self._active[model.name], self.runtime[model.name] = model, runtime
            self.checked += 1
            self._trim_due = True
        _close(engine)

    def set_shadow(self, name: str, engine: Any | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Record model `name`'s shadow candidate and release its engine (the serving pods do not shadow yet)."""
        with self._lock:
            if engine is not None and model is not None:
                self._shadow[name] = model
            else:
                self._shadow.pop(name, None)
            self._trim_due = True
        if engine is not None:
            _close(engine)

    def deactivate(self, name: str) -> None:
        """Model `name` is not active."""
        with self._lock:
            self._active.pop(name, None)
            self._shadow.pop(name, None)

    def take_windows(self) -> dict[str, ServingWindow]:
        """What each active model's serving pods served since the previous call (scraped through the cluster
        port, bounded by its timeouts; an empty window for a model whose pods could not be listed).

        Also returns the heap a checked model left behind to the kernel (by then the control side has dropped
        its last reference to the engine; the telemetry thread calls this every window).
        """
        with self._lock:
            due, self._trim_due = self._trim_due, False
            active = {name: self._active[name].version for name in sorted(self._active)}
        if due:
            trim_heap()
        scraped = self.cluster.serving_windows(active) if self.cluster is not None and active else {}
        return {n: scraped.get(n) or _empty() for n in active}


def _empty() -> ServingWindow:
    return ServingWindow(requests=0, errors=0, latency=LatencyRecorder().snapshot(), queue_depth=0)


def _close(engine: Any) -> None:
    try:
        engine.close()
    except Exception:  # a failing close must not fail the activation that already passed its check
        log.exception("closing a checked engine failed")


def trim_heap() -> None:
    """glibc keeps freed arenas mapped; `malloc_trim(0)` returns them, so RSS falls back after a model check."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): RSS just stays higher
        return

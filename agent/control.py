"""Cluster mode's control agent: it checks models, the serving pods serve them.

In cluster mode (`edgefleet agent run --cluster`) the agent pod downloads and verifies blobs, checks each
model once exactly as single-device mode does (load, warm-up, golden output within tolerance), moves the
store's `active.json` pointer and server-side applies the serving workload; the pods of that workload
(`edgefleet agent serve --store /models`) load the model again and answer requests. `CheckOnlyServing` is the
`agent.ports.ServingPort` of that control agent: it records what was checked and closes each engine at once,
so the control pod never holds a model in memory after its check (its memory stays near the bare agent's;
only the check itself needs room for one model, see docs/k3s.md) and never answers inference requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Any

from agent.ports import ServingWindow
from fleet.histogram import LatencyRecorder
from fleet.messages import AppliedModel, RuntimeOptions

log = logging.getLogger(__name__)


class CheckOnlyServing:
    """A ServingPort that serves nothing: engines are closed as soon as the control side hands them over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: AppliedModel | None = None
        self._shadow: AppliedModel | None = None
        self.runtime: RuntimeOptions | None = None
        self.checked = 0
        self._trim_due = False

    @property
    def active_model(self) -> AppliedModel | None:
        """The model the control side checked last and made active in the store (None: none)."""
        with self._lock:
            return self._active

    @property
    def shadow_model(self) -> AppliedModel | None:
        """The shadow candidate the control side checked (None: none)."""
        with self._lock:
            return self._shadow

    def activate(
        self, engine: Any, model: AppliedModel, descriptor: Any, runtime: RuntimeOptions | None = None
    ) -> None:
        """Record `model` as active and release its engine (the check already ran)."""
        with self._lock:
            self._active, self.runtime = model, runtime
            self.checked += 1
            self._trim_due = True
        _close(engine)

    def set_shadow(self, engine: Any | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Record the shadow candidate and release its engine (the serving pods do not shadow yet)."""
        with self._lock:
            self._shadow = model if engine is not None else None
            self._trim_due = True
        if engine is not None:
            _close(engine)

    def deactivate(self) -> None:
        """Nothing is active."""
        with self._lock:
            self._active = None

    def take_window(self) -> ServingWindow:
        """An empty window: requests reach the serving pods, not this process.

        Also returns the heap a checked model left behind to the kernel (by then the control side has dropped
        its last reference to the engine; the telemetry thread calls this every window).
        """
        with self._lock:
            due, self._trim_due = self._trim_due, False
        if due:
            trim_heap()
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

"""A ServingPort with no HTTP API: holds the active engine and runs inference on arrays in-process.

This is the agent's serving mode until the HTTP inference API (`agent.api`) is wired in, and what the
footprint benchmark measures. It counts requests, errors and latency per window like the API does, runs a
shadow candidate on a sampled fraction of requests, and swaps engines so that requests in flight finish on
the engine they started on; an engine is closed once its last request has finished.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.ports import ServingWindow
from fleet.histogram import LatencyRecorder
from fleet.messages import AppliedModel, RuntimeOptions, ShadowStats
from models.errors import EngineNotReady, ModelError


class _Slot:
    __slots__ = ("descriptor", "engine", "inflight", "model", "retired")

    def __init__(self, engine: Any, model: AppliedModel, descriptor: Any) -> None:
        self.engine = engine
        self.model = model
        self.descriptor = descriptor
        self.inflight = 0
        self.retired = False


class HeadlessServing:
    """In-process serving of the active model (no HTTP). Thread-safe."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._active: _Slot | None = None
        self._shadow: _Slot | None = None
        self._shadow_rate = 0.0
        self._rng = random.Random(seed)
        self.runtime: RuntimeOptions | None = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._requests = 0
        self._errors = 0
        self._latency = LatencyRecorder()
        self._shadow_samples = 0
        self._shadow_agree = 0
        self._shadow_delta_ms = 0.0

    # -- ServingPort ----------------------------------------------------------------------------------
    def activate(
        self, engine: Any, model: AppliedModel, descriptor: Any, runtime: RuntimeOptions | None = None
    ) -> None:
        """Make `engine` active; the old engine closes once its requests in flight finish."""
        with self._lock:
            old, self._active = self._active, _Slot(engine, model, descriptor)
            self.runtime = runtime
        self._retire(old)

    def set_shadow(self, engine: Any | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside the active model on `sample_rate` of requests (None: stop)."""
        with self._lock:
            old = self._shadow
            self._shadow = _Slot(engine, model, None) if engine is not None and model is not None else None
            self._shadow_rate = sample_rate if self._shadow else 0.0
            self._shadow_samples = self._shadow_agree = 0
            self._shadow_delta_ms = 0.0
        self._retire(old)

    def deactivate(self) -> None:
        """Serve nothing; requests get EngineNotReady."""
        with self._lock:
            old, self._active = self._active, None
        self._retire(old)

    def take_window(self) -> ServingWindow:
        """Counters since the previous call, then reset them."""
        with self._lock:
            shadow = None
            if self._shadow is not None:
                n = self._shadow_samples
                shadow = ShadowStats(
                    candidate_version=self._shadow.model.version,
                    samples=n,
                    agreements=self._shadow_agree,
                    latency_delta_ms=self._shadow_delta_ms / n if n else None,
                )
            window = ServingWindow(
                requests=self._requests,
                errors=self._errors,
                latency=self._latency.snapshot(),
                queue_depth=sum(s.inflight for s in (self._active,) if s is not None),
                shadow=shadow,
            )
            shadow_slot, rate = self._shadow, self._shadow_rate
            self._reset_counters()
            if shadow_slot is not None:
                self._shadow, self._shadow_rate = shadow_slot, rate
        return window

    # -- serving --------------------------------------------------------------------------------------
    @property
    def active_model(self) -> AppliedModel | None:
        """The model serving now (None: nothing)."""
        with self._lock:
            return self._active.model if self._active else None

    @property
    def shadow_model(self) -> AppliedModel | None:
        """The shadow candidate (None: none)."""
        with self._lock:
            return self._shadow.model if self._shadow else None

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the active model on `inputs` (name -> numpy array); returns outputs by name.

        Raises:
            EngineNotReady: no model is active.
            InvalidInput, InferenceFailed: from the engine (counted as errors).
        """
        with self._lock:
            slot = self._active
            if slot is None:
                self._errors += 1
                raise EngineNotReady("no model is active on this device yet")
            slot.inflight += 1
            shadow = self._shadow if self._shadow and self._rng.random() < self._shadow_rate else None
            if shadow is not None:
                shadow.inflight += 1
        t0 = time.perf_counter()
        try:
            outputs: dict[str, Any] = slot.engine.infer(inputs)
        except ModelError:
            with self._lock:
                self._errors += 1
            raise
        finally:
            self._done(slot)
        ms = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self._requests += 1
            self._latency.observe(ms)
        if shadow is not None:
            self._run_shadow(shadow, inputs, outputs, ms)
        return outputs

    def _run_shadow(self, shadow: _Slot, inputs: Mapping[str, Any], outputs: dict[str, Any], ms: float) -> None:
        t0 = time.perf_counter()
        try:
            candidate: dict[str, Any] = shadow.engine.infer(inputs)
        except ModelError:
            candidate = {}
        finally:
            self._done(shadow)
        delta = (time.perf_counter() - t0) * 1e3 - ms
        agree = _agree(outputs, candidate)
        with self._lock:
            if self._shadow is shadow:
                self._shadow_samples += 1
                self._shadow_agree += int(agree)
                self._shadow_delta_ms += delta

    def _done(self, slot: _Slot) -> None:
        with self._lock:
            slot.inflight -= 1
            close = slot.retired and slot.inflight == 0
        if close:
            slot.engine.close()

    def _retire(self, slot: _Slot | None) -> None:
        if slot is None:
            return
        with self._lock:
            slot.retired = True
            close = slot.inflight == 0
        if close:
            slot.engine.close()


def _agree(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Outputs agree when every output has the same shape and the same argmax on its last axis."""
    if not b or set(a) != set(b):
        return False
    for name, x in a.items():
        y = b[name]
        if np.shape(x) != np.shape(y):
            return False
        if np.ndim(x) and not np.array_equal(np.argmax(x, axis=-1), np.argmax(y, axis=-1)):
            return False
    return True

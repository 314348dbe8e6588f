"""Headless serving: the serving core without HTTP, for in-process callers.

`edgefleet agent run --headless` wires it in when a device only fetches, verifies and activates models
(nothing calls it then, and it starts no thread); tests, benchmarks and embedding programs call `infer`
with numpy arrays. It is `agent.serving.ModelRepository` itself — the same models by name, swap, retirement of the
old engine after its in-flight requests, batching, counters and shadow sampling as the HTTP API — driven
from its own event-loop thread, started on the first request. Errors are those of the core and count the same way:
a client's mistake (bad shape, unknown model) is not a server error in telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from agent.serving import ModelRepository, ModelSlot, Served, classify
from agent.serving.stats import RequestTimes
from models.batcher import BatcherOptions

Array = npt.NDArray[Any]


class HeadlessServing(ModelRepository):
    """The serving core with a synchronous `infer` for in-process callers. Thread-safe."""

    def __init__(self, defaults: BatcherOptions | None = None, *, seed: int | None = None) -> None:
        super().__init__(defaults, seed=seed)
        self._thread: threading.Thread | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()

    def infer(self, inputs: Mapping[str, Any], name: str | None = None, version: str | None = None) -> dict[str, Array]:
        """Run model `name` (`version`, if given, must be its active one) on `inputs` (name -> numpy array).

        Without a name, the one model served runs (with several, name one).

        Raises:
            NotReady: no model is active. ModelNotFound: a model or version not served, or no name given
                while several models are served.
            InvalidInput: the inputs do not fit the model. QueueFull, Overloaded, TimeoutError: overloaded.
            InferenceFailed: the engine failed (counted as a server error).
        """
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._serve(dict(inputs), name, version), loop).result()

    async def _serve(self, feed: dict[str, Any], name: str | None, version: str | None) -> dict[str, Array]:
        t0 = time.perf_counter()
        slot: ModelSlot | None = None
        served: Served | None = None
        submitted = False
        status = 200
        times = RequestTimes()
        try:
            slot = self.get(name) if name is not None else self.only()
            current = slot.current
            served = slot.acquire(name if name is not None else current.model.name if current else "", version)
            submitted = True
            return await slot.infer_tensors(served, feed, times)
        except Exception as e:
            status = classify(e)[0]
            raise
        finally:
            if slot is not None:
                if served is not None:
                    slot.release(served, submitted)
                slot.record(status, (time.perf_counter() - t0) * 1e3, served, times if status == 200 else None)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._own_loop is not None:
                return self._own_loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=run, name="edgefleet-headless", daemon=True)
            self._thread.start()
            ready.wait()
            asyncio.run_coroutine_threadsafe(self.attach(), loop).result()
            self._own_loop = loop
            return loop

    def close(self) -> None:
        """Stop the event loop thread (queued requests get 503); engines stay loaded. Idempotent."""
        with self._start_lock:
            loop, thread, self._own_loop, self._thread = self._own_loop, self._thread, None, None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.detach(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()

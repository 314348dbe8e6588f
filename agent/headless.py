"""Headless serving: the serving core without HTTP, for in-process callers.

`edgefleet agent run --headless` wires it in when a device only fetches, verifies and activates models
(nothing calls it then, and it starts no thread); tests, benchmarks and embedding programs call `infer`
with numpy arrays. It is `agent.serving.ModelSlot` itself — the same swap, retirement of the old engine
after its in-flight requests, batching, counters and shadow sampling as the HTTP API — driven from its own
event-loop thread, started on the first request. Errors are those of the core and count the same way:
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

from agent.serving import ModelSlot, Served, classify
from agent.serving.stats import RequestTimes
from models.batcher import BatcherOptions

Array = npt.NDArray[Any]


class HeadlessServing(ModelSlot):
    """The serving core with a synchronous `infer` for in-process callers. Thread-safe."""

    def __init__(self, defaults: BatcherOptions | None = None, *, seed: int | None = None) -> None:
        super().__init__(defaults, seed=seed)
        self._thread: threading.Thread | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()

    def infer(self, inputs: Mapping[str, Any], name: str | None = None, version: str | None = None) -> dict[str, Array]:
        """Run the active model (or `name`/`version`, which must be it) on `inputs` (name -> numpy array).

        Raises:
            NotReady: no model is active. ModelNotFound: another model or version.
            InvalidInput: the inputs do not fit the model. QueueFull, Overloaded, TimeoutError: overloaded.
            InferenceFailed: the engine failed (counted as a server error).
        """
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._serve(dict(inputs), name, version), loop).result()

    async def _serve(self, feed: dict[str, Any], name: str | None, version: str | None) -> dict[str, Array]:
        t0 = time.perf_counter()
        served: Served | None = None
        submitted = False
        status = 200
        times = RequestTimes()
        try:
            current = self.current
            served = self.acquire(name if name is not None else current.model.name if current else "", version)
            submitted = True
            return await self.infer_tensors(served, feed, times)
        except Exception as e:
            status = classify(e)[0]
            raise
        finally:
            if served is not None:
                self.release(served, submitted)
            self.record(status, (time.perf_counter() - t0) * 1e3, served, times if status == 200 else None)

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

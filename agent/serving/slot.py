"""The serving core: which engine serves, swapped atomically, with a shadow candidate beside it.

`ModelSlot` implements `agent.ports.ServingPort` for every serving mode: the HTTP API (`agent.api`), the
pods of cluster mode (the same API) and headless serving (`agent.headless`, in-process calls). The control
side calls `activate`, `set_shadow`, `deactivate` and `take_window` from its own thread; everything that
touches batchers runs on the slot's event loop (the slot hands the work over and waits for it).

Requests take a reference to the `Served` model they started on, so a swap never moves a request: requests
in flight finish on the old engine, and the old batcher and engine are closed when the last of them has
finished. Counters (requests, server errors, latency) and shadow sampling are the same in every mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy.typing as npt

from agent.ports import ServingWindow
from agent.serving.errors import ModelNotFound, NotReady, Overloaded
from agent.serving.served import OneRunAtATime, Served
from agent.serving.shadow import ImageRequest, Shadow, ShadowTally, rows_of
from agent.serving.stats import Duration, RequestTimes, StatsBook, batcher_runs
from fleet.histogram import LatencyRecorder
from fleet.messages import AppliedModel, RuntimeOptions
from models.batcher import Batcher, BatcherOptions, Timing
from models.descriptor import ModelDescriptor
from models.engine import Engine
from models.preprocess import Transform

DEFAULT_BATCHING = BatcherOptions(max_batch=8, max_delay_ms=2.0, max_queue=64)
"""Batching of a model without runtime options, when the transport configured none: `ApiSettings`' defaults."""

Array = npt.NDArray[Any]


class ModelSlot:
    """The serving side of `agent.ports.ServingPort`: the active model, an optional shadow, counters."""

    def __init__(
        self,
        defaults: BatcherOptions | None = None,
        *,
        max_concurrency: int = 256,
        request_timeout_s: float = 10.0,
        seed: int | None = None,
        run_lock: threading.Lock | None = None,
    ) -> None:
        self.defaults = defaults or DEFAULT_BATCHING
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.activate_timeout_s = 30.0
        # requests the transport is handling, including those not yet at the slot (an HTTP server's tasks);
        # None: only the slot's own count is known (in-process callers)
        self.in_progress: Callable[[], int] | None = None
        self.current: Served | None = None
        self._shadow: Shadow | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._lock = threading.Lock()  # guards _loop and the window counters
        # one engine run at a time across active, retiring and shadow (and, shared, across a device's models)
        self._run_lock = run_lock or threading.Lock()
        self._requests = self._errors = 0
        self._latency = LatencyRecorder()
        self.book = StatsBook()  # Triton's statistics and engine runs per version, since start
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random(seed)

    # --- ServingPort (any thread) --------------------------------------------------------------------

    def activate(
        self, engine: Engine, model: AppliedModel, descriptor: ModelDescriptor, runtime: RuntimeOptions | None = None
    ) -> None:
        """Make `engine` the active model; in-flight requests finish on the previous one (see ServingPort)."""
        options = self.defaults
        if runtime is not None:
            options = BatcherOptions(
                max_batch=runtime.max_batch, max_delay_ms=runtime.max_queue_delay_ms, max_queue=runtime.max_queue
            )
        cur = self.current
        if cur is not None and cur.engine is engine and cur.model == model and cur.options == options:
            return  # the control side re-applied the same state: keep the batcher and its queue
        self._run(self._install, Served(engine, model, descriptor, options, stats=self.book.stats(model)))

    def set_shadow(self, engine: Engine | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside the active model on `sample_rate` (0..1] of requests; None stops shadowing."""
        if engine is None or model is None or sample_rate <= 0:
            self._run(self._install_shadow, None)
            return
        sh = self._shadow
        if sh is not None and sh.served.engine is engine and sh.served.model == model:
            sh.rate = min(sample_rate, 1.0)  # same candidate: keep its batcher and counters
            return
        served = Served(engine, model, engine.descriptor, self.defaults)
        self._run(self._install_shadow, Shadow(served, min(sample_rate, 1.0)))

    def deactivate(self) -> None:
        """Serve nothing: new requests get 503; in-flight ones finish."""
        self._run(self._install, None)

    def take_window(self) -> ServingWindow:
        """Counters since the previous call, then reset them."""
        with self._lock:
            requests, errors, self._requests, self._errors = self._requests, self._errors, 0, 0
            latency = self._latency.snapshot(reset=True)
        current, shadow = self.current, self._shadow
        return ServingWindow(
            requests=requests,
            errors=errors,
            latency=latency,
            queue_depth=current.queue_depth() if current is not None else 0,
            shadow=shadow.tally.take() if shadow is not None else None,
        )

    @property
    def active_model(self) -> AppliedModel | None:
        """The model serving now (None: nothing)."""
        s = self.current
        return s.model if s is not None else None

    @property
    def shadow_model(self) -> AppliedModel | None:
        """The shadow candidate (None: none)."""
        sh = self._shadow
        return sh.served.model if sh is not None else None

    # --- event loop lifecycle ------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        """Bind a slot that holds no model yet to a loop that is running (its thread id): the repository
        creates slots for new models after the transport attached it."""
        with self._lock:
            self._loop, self._loop_thread = loop, thread

    async def attach(self) -> None:
        """Bind to the running loop and start the batchers of the models already set."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        for s in (self.current, self._shadow.served if self._shadow else None):
            if s is not None and s.batcher is None:
                await self._start(s)

    async def detach(self) -> None:
        """Stop every batcher (queued requests get 503) and unbind from the loop; engines stay loaded."""
        with self._lock:
            self._loop = None
            self._loop_thread = None
        for s in (self.current, self._shadow.served if self._shadow else None):
            if s is not None and s.batcher is not None:
                b, s.batcher = s.batcher, None
                await b.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- request path (event loop only) --------------------------------------------------------------

    def acquire(self, name: str, version: str | None = None) -> Served:
        """The served model for a request (counted in progress until `release`).

        Raises:
            NotReady: nothing is active. ModelNotFound: another name or version. Overloaded: too many requests.
        """
        s = self.current
        if s is None or s.batcher is None:
            raise NotReady("no model is active on this device yet; retry later")
        if name != s.model.name or (version is not None and version != s.model.version):
            raise _not_served(s, name, version)
        if s.inflight >= self.max_concurrency:
            raise Overloaded(f"{s.inflight} requests are in progress for {name!r}; retry later")
        s.inflight += 1
        s.pending += 1
        return s

    def lookup(self, name: str, version: str | None = None) -> Served:
        """Like `acquire`, without counting a request (metadata, readiness).

        Raises:
            ModelNotFound: the model (or that version of it) is not served here.
        """
        s = self.current
        if s is None:
            raise ModelNotFound(f"model {name[:100]!r} is unknown here: no model is active")
        if name != s.model.name or (version is not None and version != s.model.version):
            raise _not_served(s, name, version)
        return s

    @staticmethod
    def submitted(s: Served) -> None:
        """The request that acquired `s` hands its inputs to the batcher now (see `release`)."""
        s.pending -= 1

    def release(self, s: Served, submitted: bool = True) -> None:
        """The request that acquired `s` has finished (`submitted`: it called `submitted` before)."""
        if not submitted:
            s.pending -= 1
        s.inflight -= 1
        if s.retired and s.inflight == 0:
            self._spawn(self._close(s))

    def alone(self, s: Served) -> bool:
        """True when the request holding `s` is the only one (no batching to gain, no one to block)."""
        return s.inflight == 1 and (self.in_progress is None or self.in_progress() <= 1)

    def record(self, status: int, ms: float, served: Served | None = None, times: RequestTimes | None = None) -> None:
        """Count one inference request in the telemetry window (status >= 500: a server error) and, when it
        reached a model, in that model's statistics (`times`: where its time went; None: it failed)."""
        with self._lock:
            self._requests += 1
            if status >= 500:
                self._errors += 1
            self._latency.observe(ms)
        if served is not None and served.stats is not None:
            served.stats.request(status == 200, int(ms * 1e6), times)

    async def run(
        self, s: Served, feed: dict[str, Array], times: RequestTimes | None = None
    ) -> tuple[dict[str, Array], float]:
        """Run `feed` on `s` (alone on this thread, or through its batcher); outputs and milliseconds.

        `times` (optional) receives the queue and engine nanoseconds and the rows.

        Raises:
            NotReady: the model is being unloaded. TimeoutError: the request waited past the timeout.
            ModelError: from the batcher and the engine (InvalidInput, QueueFull, InferenceFailed...).
        """
        batcher = s.batcher
        if batcher is None:
            raise NotReady("the model is being unloaded; retry")
        t0 = time.perf_counter_ns()
        outputs = self.run_alone(s, feed) if self.alone(s) else None
        if outputs is None:
            timing = Timing()
            async with asyncio.timeout(self.request_timeout_s):
                outputs = await batcher.infer(feed, timing)
            if times is not None:
                times.queue_ns, times.infer_ns = timing.queue_ns, timing.compute_ns
        elapsed = time.perf_counter_ns() - t0
        if times is not None:
            times.rows = rows_of(feed)
            if not times.infer_ns:  # ran alone: no queue, the engine run is all of it
                times.infer_ns = elapsed
        return outputs, elapsed / 1e6

    async def infer_tensors(
        self, s: Served, feed: dict[str, Array], times: RequestTimes | None = None
    ) -> dict[str, Array]:
        """The tensor path of every serving mode: hand `feed` over, run it, maybe shadow it."""
        self.submitted(s)
        outputs, ms = await self.run(s, feed, times)
        sh = self._sample()
        if sh is not None:
            self._spawn(self._compared(sh, sh.tensors(s.descriptor, feed, outputs, ms, self.request_timeout_s)))
        return outputs

    def shadow_image(
        self, active: Served, outputs: dict[str, Array], transform: Transform, *, image: ImageRequest, ms: float
    ) -> None:
        """On a sampled image request, let the candidate preprocess the image its own way and compare."""
        sh = self._sample()
        if sh is not None:
            compare = sh.image(active.descriptor, outputs, transform, image, ms, timeout_s=self.request_timeout_s)
            self._spawn(self._compared(sh, compare))

    def run_alone(self, s: Served, feed: dict[str, Array]) -> dict[str, Array] | None:
        """Run `feed` right here when it is the only request of `s` and no engine of the slot is running.

        A lone request gains nothing from batching and pays two thread hand-offs through the batcher;
        running it on the calling thread (the event loop) saves them, and any request arriving meanwhile
        waits no longer than it would behind this run in the batcher. None: go through the batcher.
        """
        b = s.batcher
        fixed = s.engine.max_batch
        if fixed is not None and rows_of(feed) < fixed:
            return None  # the batcher fills the graph's fixed batch
        if s.inflight != 1 or b is None or not self._run_lock.acquire(blocking=False):
            return None
        try:
            checked = s.engine.check_inputs(feed)
            rows = {int(a.shape[0]) for a in checked.values() if a.ndim}
            if len(rows) != 1 or next(iter(rows)) > b.max_batch:
                return None  # the batcher gives the precise error
            t0 = time.perf_counter_ns()
            out: dict[str, Array] = s.engine.run_checked(checked)
            ns = time.perf_counter_ns() - t0
        finally:
            self._run_lock.release()
        s.alone.setdefault(next(iter(rows)), Duration()).add(ns)
        return out

    def is_ready(self) -> bool:
        """True when a model is active and its batcher runs."""
        s = self.current
        return s is not None and s.batcher is not None

    def loaded(self) -> list[tuple[str, Served]]:
        """(role, served) of the active and shadow models."""
        out: list[tuple[str, Served]] = [("active", self.current)] if self.current is not None else []
        if self._shadow is not None:
            out.append(("shadow", self._shadow.served))
        return out

    def batch_sizes(self) -> dict[tuple[str, str], dict[int, int]]:
        """Engine runs per batch size for every version served since start (for the batch histogram)."""
        return {k: {n: d.count for n, d in v.items()} for k, v in self.book.runs(self.current).items()}

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Triton's `model_stats` of every version served since start (or of `name`, `version`).

        Raises:
            ModelNotFound: `name` (or that version of it) was never served here.
        """
        out = self.book.statistics(self.current, name, version)
        if name is not None and not out:
            self.lookup(name, version)  # raises the precise 404
        return out

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index (see `StatsBook.index`)."""
        return self.book.index(self.current, ready_only)

    def shadow_tally(self) -> ShadowTally | None:
        """The current candidate's counters, if shadowing."""
        return self._shadow.tally if self._shadow is not None else None

    # --- internals -----------------------------------------------------------------------------------

    def _run(self, install: Callable[[Any], Coroutine[Any, Any, None]], arg: Any) -> None:
        """Run `install(arg)` on the loop and wait for it; without a loop, swap references here."""
        with self._lock:
            loop, thread = self._loop, self._loop_thread
            if loop is None or not loop.is_running():  # no loop yet: batchers start on attach
                old = self._swap(install, arg)
                if old is not None and id(old.engine) not in {id(x.engine) for _, x in self.loaded()}:
                    old.engine.close()
                return
        if thread == threading.get_ident():
            self._spawn(install(arg))  # called on the loop itself: cannot block; applies at the next await
            return
        asyncio.run_coroutine_threadsafe(install(arg), loop).result(timeout=self.activate_timeout_s)

    def _swap(self, install: Callable[[Any], Coroutine[Any, Any, None]], arg: Any) -> Served | None:
        if install == self._install:
            old, self.current = self.current, arg
            return old if old is not arg else None
        prev, self._shadow = self._shadow, arg
        return prev.served if prev is not None else None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, s: Served) -> None:
        with self._lock:
            attached = self._loop is not None
        if attached:
            backend = OneRunAtATime(s.engine, self._run_lock)
            s.batcher = Batcher(backend, s.options, more_coming=lambda: s.pending > 0)
            await s.batcher.start()

    async def _install(self, new: Served | None) -> None:
        if new is not None:
            await self._start(new)
        old, self.current = self.current, new
        if old is not None and old is not new:
            self._retire(old)

    async def _install_shadow(self, new: Shadow | None) -> None:
        if new is not None:
            await self._start(new.served)
        old, self._shadow = self._shadow, new
        if old is not None:
            self._retire(old.served)

    def _retire(self, s: Served) -> None:
        s.retired = True
        if s.inflight == 0:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing was started
                self._spawn(self._close(s))

    async def _close(self, s: Served) -> None:
        if s.batcher is not None:
            b, s.batcher = s.batcher, None
            await b.close()
            self.book.retire(s.model, batcher_runs(b))
        self.book.retire(s.model, s.alone)
        s.alone = {}
        in_use = {id(x.engine) for _, x in self.loaded()}
        if id(s.engine) not in in_use:
            s.engine.close()

    # --- shadow --------------------------------------------------------------------------------------

    def _sample(self) -> Shadow | None:
        """The shadow candidate, on a sampled fraction of requests (counted in progress until compared)."""
        sh = self._shadow
        if sh is None or sh.served.batcher is None or self._rng.random() >= sh.rate:
            return None
        sh.served.inflight += 1
        return sh

    async def _compared(self, sh: Shadow, comparison: Coroutine[Any, Any, None]) -> None:
        try:
            await comparison
        finally:
            self.release(sh.served)


def _not_served(s: Served, name: str, version: str | None) -> ModelNotFound:
    """The 404 of a request for another model or another version than `s` (the same for requests and metadata)."""
    if name != s.model.name:
        return ModelNotFound(f"model {name[:100]!r} is unknown here; serving {s.model.name!r}")
    return ModelNotFound(
        f"model {name[:100]!r} has no version {str(version)[:40]!r} here; serving version {s.model.version!r}"
    )

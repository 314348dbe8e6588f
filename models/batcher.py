"""Dynamic batcher: asyncio callers in, batched engine runs in a worker thread, results split back.

A collector task takes the oldest request, then gathers requests of the same input signature (per-input
shape without the batch axis, and dtype) until `max_batch` rows or until `max_delay_ms` after the oldest
request arrived. Requests of another signature wait for the next batch; they are never mixed. The batch
runs off the event loop (a thread pool of `workers` threads). Each caller's inputs are checked before
they are queued, so a bad input fails only its caller; if a batch still fails in onnxruntime, its
requests are retried one by one so only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from models.errors import EngineNotReady, InferenceFailed, InvalidInput, ModelError, QueueFull

Array = npt.NDArray[np.generic]
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


class Backend(Protocol):
    """What the batcher needs from an engine (models.engine.Engine satisfies it)."""

    @property
    def max_batch(self) -> int | None: ...

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Array]: ...

    def run_checked(self, feed: dict[str, Array]) -> dict[str, Array]: ...


class BatcherOptions(BaseModel):
    """Dynamic batching knobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch: int = Field(default=8, ge=1, le=1024, description="Most rows in one engine run.")
    max_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="Longest wait (ms) after the oldest request for more requests.",
    )
    max_queue: int = Field(
        default=256, ge=1, description="Requests waiting beyond this are refused with QueueFull (HTTP 503)."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Concurrent engine runs; 1 suits CPU (onnxruntime uses all cores).",
    )


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """A snapshot of the batcher's counters (`batch_ns`: nanoseconds of engine runs per batch size)."""

    queue_depth: int
    requests: int
    batches: int
    rejected: int
    failed: int
    batch_sizes: dict[int, int]
    batch_ns: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class Timing:
    """Where one request's time went in the batcher, in nanoseconds (filled when its batch has run)."""

    queue_ns: int = 0  # from `infer` to its batch starting
    compute_ns: int = 0  # the engine run that served it (with the other rows of its batch)


@dataclass(slots=True)
class _Request:
    feed: dict[str, Array]
    rows: int
    signature: Signature
    future: asyncio.Future[dict[str, Array]]
    timing: Timing | None = None
    arrived: float = field(default_factory=time.monotonic)
    queued_ns: int = field(default_factory=time.perf_counter_ns)


class Batcher:
    """Batches concurrent `infer` calls onto one engine. Use `async with Batcher(engine) as b:`."""

    def __init__(
        self, engine: Backend, options: BatcherOptions | None = None, *, more_coming: Callable[[], bool] | None = None
    ) -> None:
        """`more_coming` (optional): called when the queue is empty while a batch fills; False means no
        other request is on its way (e.g. an HTTP server knows none is being read), so the batch runs now
        instead of waiting up to `max_delay_ms`. Without it the batcher always waits until the deadline."""
        self.engine = engine
        self.options = options or BatcherOptions()
        self._more_coming = more_coming
        fixed = engine.max_batch
        self.max_batch = min(self.options.max_batch, fixed) if fixed else self.options.max_batch
        self._queue: asyncio.Queue[_Request] | None = None
        self._carry: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._sizes: Counter[int] = Counter()
        self._size_ns: Counter[int] = Counter()
        self._requests = self._batches = self._rejected = self._failed = 0
        self._waiting = 0  # queued or carried over, not yet dispatched

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the collector on the running event loop."""
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.options.workers)
        self._pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="batcher")
        self._task = asyncio.create_task(self._collect(), name="batcher-collector")

    async def close(self) -> None:
        """Stop taking requests, finish running batches, fail queued ones with EngineNotReady."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        pending = list(self._carry)
        self._carry.clear()
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for req in pending:
            if not req.future.done():
                req.future.set_exception(EngineNotReady("batcher closed; retry on the new engine"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests ------------------------------------------------------------------------------------

    async def infer(self, inputs: Mapping[str, Any], timing: Timing | None = None) -> dict[str, Array]:
        """Run one request (any number of rows, batch axis first) as part of a batch.

        `timing` (optional) receives the request's queue and engine-run nanoseconds.

        Raises:
            InvalidInput: this request's inputs are wrong (other callers are unaffected).
            QueueFull: too many requests are waiting; retry later (HTTP 503).
            EngineNotReady: the batcher is not running.
            InferenceFailed: onnxruntime failed on this request.
        """
        if self._task is None or self._queue is None:
            raise EngineNotReady("batcher is not running; call start() or use `async with`")
        feed = self.engine.check_inputs(inputs)
        rows = {int(a.shape[0]) for a in feed.values() if a.ndim}
        if len(rows) != 1:
            raise InvalidInput("every input needs the same batch size on axis 0")
        n = rows.pop()
        if n > self.max_batch:
            raise InvalidInput(f"request has {n} rows; the batcher takes at most {self.max_batch} per request")
        sig: Signature = tuple((k, tuple(v.shape[1:]), v.dtype.str) for k, v in sorted(feed.items()))
        if self._waiting >= self.options.max_queue:
            self._rejected += 1
            raise QueueFull(f"{self.options.max_queue} requests are already waiting; retry shortly")
        req = _Request(feed, n, sig, asyncio.get_running_loop().create_future(), timing)
        self._queue.put_nowait(req)
        self._waiting += 1
        self._requests += 1
        return await req.future

    def stats(self) -> BatcherStats:
        """Queue depth, request/batch/reject/failure counts, and how often each batch size ran."""
        return BatcherStats(
            self._waiting,
            self._requests,
            self._batches,
            self._rejected,
            self._failed,
            dict(sorted(self._sizes.items())),
            dict(sorted(self._size_ns.items())),
        )

    # --- collector -----------------------------------------------------------------------------------

    async def _get_within(self, wait: float) -> _Request | None:
        """The next queued request, waiting at most `wait` seconds (never loses an item on timeout)."""
        assert self._queue is not None
        if not self._queue.empty():
            return self._queue.get_nowait()
        if wait <= 0:
            return None
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=wait)
        if getter in done:
            return getter.result()
        getter.cancel()
        try:
            return await getter  # it may have completed just before the cancel
        except asyncio.CancelledError:
            return None

    async def _collect(self) -> None:
        assert self._slots is not None
        assert self._queue is not None
        while True:
            await self._slots.acquire()
            try:
                head = self._carry.popleft() if self._carry else await self._queue.get()
                batch = await self._gather(head)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            task = asyncio.create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self, head: _Request) -> list[_Request]:
        """Requests compatible with `head`: carried-over ones first, then the queue until the deadline."""
        queue = self._queue
        assert queue is not None
        batch, rows = [head], head.rows
        deferred: list[_Request] = []

        def take(r: _Request) -> None:
            nonlocal rows
            if r.future.done():  # the caller gave up (cancelled) while queued
                self._waiting -= 1
            elif r.signature == head.signature and rows + r.rows <= self.max_batch:
                batch.append(r)
                rows += r.rows
            else:  # another shape/dtype, or too many rows: next batch
                deferred.append(r)

        carried = list(self._carry)
        self._carry.clear()
        for r in carried:
            take(r)
        deadline = head.arrived + self.options.max_delay_ms / 1e3
        try:
            while rows < self.max_batch:
                if self._more_coming is not None and queue.empty() and not self._more_coming():
                    break
                nxt = await self._get_within(deadline - time.monotonic())
                if nxt is None:
                    break
                take(nxt)
        except asyncio.CancelledError:  # closing: keep every request so close() can answer it
            self._carry.extendleft(reversed(batch + deferred))
            raise
        self._carry.extend(deferred)
        return batch

    async def _dispatch(self, batch: list[_Request]) -> None:
        assert self._slots is not None
        self._waiting -= len(batch)
        try:
            live = [r for r in batch if not r.future.done()]
            if not live:
                return
            loop = asyncio.get_running_loop()
            started = time.perf_counter_ns()
            try:
                results, ns = await loop.run_in_executor(self._pool, self._run, live)
            except Exception as e:  # a bug, not a model error: still answer every caller
                err = InferenceFailed(f"batch of {len(live)} failed unexpectedly: {type(e).__name__}: {e}")
                results, ns = [err] * len(live), time.perf_counter_ns() - started
            self._batches += 1
            rows = sum(r.rows for r in live)
            self._sizes[rows] += 1
            self._size_ns[rows] += ns
            for req, res in zip(live, results, strict=True):
                if req.timing is not None:
                    req.timing.queue_ns, req.timing.compute_ns = started - req.queued_ns, ns
                if req.future.done():
                    continue
                if isinstance(res, BaseException):
                    self._failed += 1
                    req.future.set_exception(res)
                else:
                    req.future.set_result(res)
        finally:
            self._slots.release()

    def _run(self, batch: list[_Request]) -> tuple[list[dict[str, Array] | BaseException], int]:
        """Worker thread: the batch's results and the nanoseconds it took (concatenate, run, split)."""
        t0 = time.perf_counter_ns()
        results = self._run_batch(batch)
        return results, time.perf_counter_ns() - t0

    def _run_batch(self, batch: list[_Request]) -> list[dict[str, Array] | BaseException]:
        """One engine run for the batch, split by rows; on failure, run one by one."""
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        names = list(batch[0].feed)
        feed = {n: np.concatenate([r.feed[n] for r in batch], axis=0) for n in names}
        total = sum(r.rows for r in batch)
        try:
            out = self.engine.run_checked(feed)
        except ModelError:
            return [self._run_one(r) for r in batch]
        if any(v.ndim == 0 or v.shape[0] != total for v in out.values()):
            return [self._run_one(r) for r in batch]  # outputs without a batch axis cannot be split
        results: list[dict[str, Array] | BaseException] = []
        start = 0
        for r in batch:
            end = start + r.rows
            results.append({k: v[start:end] for k, v in out.items()})
            start = end
        return results

    def _run_one(self, req: _Request) -> dict[str, Array] | BaseException:
        try:
            return self.engine.run_checked(req.feed)
        except ModelError as e:
            return e

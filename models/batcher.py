"""Dynamic batcher: asyncio callers in, batched engine runs in a worker thread, results split back.

The worker thread takes the oldest request, then gathers requests of the same input signature (per-input
shape without the batch axis, and dtype) until `max_batch` rows or until `max_delay_ms` after the oldest
request arrived. Requests of another signature wait for the next batch; they are never mixed. A graph
exported with a fixed batch of N runs exactly N rows: its runs are filled with the rows of several queued
requests (up to N), and only what is still missing is padded with copies of the last row. Each
caller's inputs are checked before they are queued, so a bad input fails only its caller; if a batch
still fails in onnxruntime, its requests are retried one by one so only the culprit fails.

The worker forms its next batch itself, right after the previous run, while it still holds the GIL that
onnxruntime handed back: the event loop is not needed between two batches (it only queues requests and,
once per batch, receives the results). With the loop forming batches, every batch waited for the loop to
take its turn and then for the worker to get the GIL back: a quarter of the engine's time under 16 clients
on 2 cores (docs/bench/serve.md).

One worker per batcher, one engine run at a time: onnxruntime already uses every core for one run, and two
workers (Triton's instance count) were measured twice and were slower through the API, the workers and the
event loop contending for the GIL (docs/bench/serve.md, sessions 8 and 9).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from models.errors import EngineNotReady, InferenceFailed, InvalidInput, ModelError, QueueFull

Array = npt.NDArray[np.generic]
_KEPT_BUFFERS = 4  # batch input buffers a worker keeps (one per input and signature)
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


class Backend(Protocol):
    """What the batcher needs from an engine (models.engine.Engine satisfies it)."""

    @property
    def max_batch(self) -> int | None: ...

    def check_inputs(self, inputs: Mapping[str, Any], *, partial_batch: bool = False) -> dict[str, Array]: ...

    def run_checked(self, feed: dict[str, Array]) -> dict[str, Array]: ...


def fill_rows(a: Array, rows: int) -> Array:
    """`a` (a request's input, batch axis first) made `rows` rows long with copies of its last row.

    A graph exported with a fixed batch of N (Ultralytics `export(batch=4)`, TensorRT-minded exports) takes
    exactly N rows; the rows the queued requests do not fill are padding, and their outputs are dropped.
    """
    return np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)])


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
        instead of waiting up to `max_delay_ms`. Without it the batcher always waits until the deadline.
        It is called from a worker thread (with the GIL held): it should only read a counter."""
        self.engine = engine
        self.options = options or BatcherOptions()
        self._more_coming = more_coming
        self._fixed = engine.max_batch  # a fixed batch runs exactly that many rows, whatever `max_batch` asks
        self.max_batch = self._fixed or self.options.max_batch
        self._pending: deque[_Request] = deque()  # queued, not yet taken by a worker
        self._cond = threading.Condition(threading.Lock())  # guards _pending and _closing; the worker waits on it
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: threading.Thread | None = None
        self._sizes: Counter[int] = Counter()
        self._size_ns: Counter[int] = Counter()
        self._requests = self._batches = self._rejected = self._failed = 0

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread; results come back on the running event loop."""
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._worker.start()

    async def close(self) -> None:
        """Stop taking requests, finish running batches, fail queued ones with EngineNotReady."""
        worker, self._worker = self._worker, None
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        loop = asyncio.get_running_loop()
        if worker is not None:  # the worker finishes its run; its results are delivered before the join is seen here
            await loop.run_in_executor(None, worker.join)
        with self._cond:
            pending = list(self._pending)
            self._pending.clear()
        for req in pending:
            if not req.future.done():
                req.future.set_exception(EngineNotReady("batcher closed; retry on the new engine"))

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests ------------------------------------------------------------------------------------

    async def infer(self, inputs: Mapping[str, Any], timing: Timing | None = None) -> dict[str, Array]:
        """Run one request (any number of rows, batch axis first) as part of a batch.

        A graph with a fixed batch of N takes 1 to N rows: a run holds the rows of as many queued requests as
        fit in N, padded (`fill_rows`) only where they fall short; the answer has the rows given.
        `timing` (optional) receives the request's queue and engine-run nanoseconds.

        Raises:
            InvalidInput: this request's inputs are wrong (other callers are unaffected).
            QueueFull: too many requests are waiting; retry later (HTTP 503).
            EngineNotReady: the batcher is not running.
            InferenceFailed: onnxruntime failed on this request.
        """
        if self._worker is None or self._closing:
            raise EngineNotReady("batcher is not running; call start() or use `async with`")
        feed = self.engine.check_inputs(inputs, partial_batch=self._fixed is not None)
        rows = {int(a.shape[0]) for a in feed.values() if a.ndim}
        if len(rows) != 1:
            raise InvalidInput("every input needs the same batch size on axis 0")
        n = rows.pop()
        if n > self.max_batch:
            raise InvalidInput(f"request has {n} rows; the batcher takes at most {self.max_batch} per request")
        sig: Signature = tuple((k, tuple(v.shape[1:]), v.dtype.str) for k, v in sorted(feed.items()))
        if len(self._pending) >= self.options.max_queue:
            self._rejected += 1
            raise QueueFull(f"{self.options.max_queue} requests are already waiting; retry shortly")
        req = _Request(feed, n, sig, asyncio.get_running_loop().create_future(), timing)
        with self._cond:
            self._pending.append(req)
            self._cond.notify()
        self._requests += 1
        return await req.future

    def stats(self) -> BatcherStats:
        """Queue depth, request/batch/reject/failure counts, and how often each batch size ran."""
        return BatcherStats(
            len(self._pending),
            self._requests,
            self._batches,
            self._rejected,
            self._failed,
            dict(sorted(self._sizes.items())),
            dict(sorted(self._size_ns.items())),
        )

    # --- the worker thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker: take a batch, run it, hand the results to the loop, repeat until closing."""
        loop = self._loop
        assert loop is not None
        buffers: dict[tuple[str, tuple[int, ...], str], Array] = {}  # this worker's batch inputs, reused
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter_ns()
            try:
                results = self._run_batch(batch, buffers)
            except Exception as e:  # a bug, not a model error: still answer every caller
                err = InferenceFailed(f"batch of {len(batch)} failed unexpectedly: {type(e).__name__}: {e}")
                results = [err] * len(batch)
            ns = time.perf_counter_ns() - started
            try:
                loop.call_soon_threadsafe(self._deliver, batch, results, started, ns)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _next_batch(self) -> list[_Request] | None:
        """The oldest request and those that fit with it, until `max_batch` rows or the deadline; None: closing."""
        cond = self._cond
        pending = self._pending
        with cond:
            while True:
                while not pending and not self._closing:
                    cond.wait()
                if self._closing:
                    return None
                head = pending.popleft()
                if not head.future.done():  # a caller that gave up (cancelled) while queued is dropped
                    break
            batch, rows = [head], head.rows
            deadline = head.arrived + self.options.max_delay_ms / 1e3
            scanned = 0  # requests of `pending` already looked at (kept for a later batch)
            while rows < self.max_batch:
                if scanned < len(pending):
                    r = pending[scanned]
                    if r.future.done():
                        del pending[scanned]
                    elif r.signature == head.signature and rows + r.rows <= self.max_batch:
                        del pending[scanned]
                        batch.append(r)
                        rows += r.rows
                    else:  # another shape/dtype, or too many rows: next batch
                        scanned += 1
                    continue
                if self._more_coming is not None and not self._more_coming():
                    break
                wait = deadline - time.monotonic()
                if wait <= 0 or self._closing:
                    break
                cond.wait(wait)
            if self._closing:  # keep every request so close() can answer it
                pending.extendleft(reversed(batch))
                return None
            return batch

    def _deliver(
        self, batch: list[_Request], results: list[dict[str, Array] | BaseException], started: int, ns: int
    ) -> None:
        """On the event loop: count the run and answer its callers."""
        self._batches += 1
        rows = sum(r.rows for r in batch)
        self._sizes[rows] += 1
        self._size_ns[rows] += ns
        for req, res in zip(batch, results, strict=True):
            if req.timing is not None:
                req.timing.queue_ns, req.timing.compute_ns = started - req.queued_ns, ns
            if req.future.done():
                continue
            if isinstance(res, BaseException):
                self._failed += 1
                req.future.set_exception(res)
            else:
                req.future.set_result(res)

    def _run_batch(
        self, batch: list[_Request], buffers: dict[tuple[str, tuple[int, ...], str], Array]
    ) -> list[dict[str, Array] | BaseException]:
        """One engine run for the batch (a fixed batch padded up to its size), split by rows; on failure, run
        one by one."""
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        total = sum(r.rows for r in batch)
        run_rows = self._fixed or total
        feed = {n: self._stack(n, [r.feed[n] for r in batch], total, run_rows, buffers) for n in batch[0].feed}
        try:
            out = self.engine.run_checked(feed)
        except ModelError:
            return [self._run_one(r) for r in batch]
        if any(v.ndim == 0 or v.shape[0] != run_rows for v in out.values()):
            return [self._run_one(r) for r in batch]  # outputs without a batch axis cannot be split
        results: list[dict[str, Array] | BaseException] = []
        start = 0
        for r in batch:
            end = start + r.rows
            results.append({k: v[start:end] for k, v in out.items()})
            start = end
        return results

    def _stack(
        self,
        name: str,
        parts: list[Array],
        rows: int,
        run_rows: int,
        buffers: dict[tuple[str, tuple[int, ...], str], Array],
    ) -> Array:
        """`parts` one after the other on axis 0, in this worker's buffer for the input's signature, then
        copies of the last row up to `run_rows` (a fixed batch the parts do not fill).

        Copied with memoryviews, which keep the GIL: numpy releases it for every large copy, and taking it
        back from a busy event loop took up to the switch interval each time (~1.4 ms for a batch of 8 x
        196 KB on 2 cores), time in which the engine waits. The buffer is kept: fresh memory would be
        faulted in again for every batch. It is free again when the run returns (onnxruntime never hands
        back an input's memory as an output), and the worker's next batch overwrites it.
        """
        first = parts[0]
        if first.ndim == 0 or not all(p.flags.c_contiguous for p in parts):
            stacked = np.concatenate(parts, axis=0)  # numpy's copy (or its error for an input without a batch axis)
            return stacked if run_rows == rows else fill_rows(stacked, run_rows)
        key = (name, first.shape[1:], first.dtype.str)
        buf = buffers.get(key)
        if buf is None:
            if len(buffers) >= _KEPT_BUFFERS:  # many shapes in turn: keep the most recent only
                buffers.clear()
            buf = buffers[key] = np.empty((self.max_batch, *first.shape[1:]), first.dtype)
        out = buf[:run_rows]
        dst = out.data.cast("B")  # parts are C-contiguous (`check_inputs`), as is `out`
        at = 0
        for part in parts:
            n = part.nbytes
            dst[at : at + n] = part.data.cast("B")
            at += n
        last = parts[-1][-1:].data.cast("B")
        for _ in range(run_rows - rows):
            dst[at : at + last.nbytes] = last
            at += last.nbytes
        return out

    def _run_one(self, req: _Request) -> dict[str, Array] | BaseException:
        """One request alone; a fixed batch it does not fill is padded, and only its own rows answered."""
        fixed = self._fixed
        filled = fixed is not None and req.rows < fixed
        feed = {k: fill_rows(v, fixed) for k, v in req.feed.items()} if fixed and filled else req.feed
        try:
            out = self.engine.run_checked(feed)
        except ModelError as e:
            return e
        if not filled:
            return out
        return {k: v[: req.rows] if v.ndim and v.shape[0] == fixed else v for k, v in out.items()}

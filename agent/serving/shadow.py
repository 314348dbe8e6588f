"""Shadow sampling: a candidate version runs beside the active one on sampled requests, on its own terms.

The candidate answers the same request the way it would once active, so its agreement is the agreement it
really has (the rules per task are `models.agreement`):

- **image requests**: the image is decoded once and preprocessed by each version with its own description
  (input size, resize mode, normalisation); detection boxes are compared in the image's pixels.
- **tensor requests**: the candidate gets the client's tensors as they are. When it cannot take them (a
  shape or dtype it does not accept, or shapes onnxruntime refuses for it) the sample is *incomparable*:
  reported apart, never counted as agreement or disagreement.

A candidate that fails on input it accepts, or on an image the active version answered, disagrees. A
sample the candidate never answered is *dropped*: neither agreement nor disagreement, but counted by reason
(`DROP_REASONS`: its queue was full, it did not answer within the request timeout, or it was being swapped
out), so a starved or stuck shadow shows up as drops rather than as silence. Comparisons run off the
response path; their failures never reach the client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy.typing as npt

from fleet.messages import ShadowStats
from models.agreement import Answer, agreement
from models.descriptor import InputSpec, ModelDescriptor
from models.errors import EngineNotReady, Incomparable, InvalidInput, ModelError, QueueFull
from models.preprocess import Transform

if TYPE_CHECKING:
    from agent.serving.served import Served

Array = npt.NDArray[Any]
DropReason = Literal["queue_full", "timeout", "swapped"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


class ShadowTally:
    """Thread-safe counters of one candidate: samples, agreements, incomparable and dropped rows, latency
    difference."""

    def __init__(self, candidate_version: str) -> None:
        self.candidate_version = candidate_version
        self._lock = threading.Lock()
        self._samples = self._agreements = self._incomparable = 0
        self._delta_sum = 0.0
        self._delta_n = 0
        self.total_samples = self.total_agreements = self.total_incomparable = 0
        self.total_dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)

    def add(self, agrees: list[bool], delta_ms: float | None) -> None:
        """Record the rows of one compared request and its candidate-minus-active latency (None: not timed)."""
        n, k = len(agrees), sum(agrees)
        with self._lock:
            self._samples += n
            self._agreements += k
            self.total_samples += n
            self.total_agreements += k
            if delta_ms is not None:
                self._delta_sum += delta_ms
                self._delta_n += 1

    def incomparable(self, rows: int) -> None:
        """Record `rows` sampled rows that could not be compared."""
        with self._lock:
            self._incomparable += rows
            self.total_incomparable += rows

    def dropped(self, reason: DropReason, rows: int) -> None:
        """Record `rows` sampled rows the candidate never answered, for `reason`."""
        with self._lock:
            self.total_dropped[reason] += rows

    def take(self) -> ShadowStats:
        """Counters since the previous call, then reset them."""
        with self._lock:
            stats = ShadowStats(
                candidate_version=self.candidate_version,
                samples=self._samples,
                agreements=self._agreements,
                incomparable=self._incomparable,
                latency_delta_ms=self._delta_sum / self._delta_n if self._delta_n else None,
            )
            self._samples = self._agreements = self._incomparable = self._delta_n = 0
            self._delta_sum = 0.0
            return stats


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """How to preprocess an image request's (already decoded) image for any version's input description."""

    prepare: Callable[[InputSpec], tuple[Array, Transform]]
    pool: Executor  # where preprocessing runs (off the event loop)


@dataclass(eq=False)
class Shadow:
    """The candidate being shadowed: its served model, the fraction of requests sampled, its counters.

    `tensors` and `image` compare one sampled request; they record the result in `tally` and never raise
    for the candidate's failures.
    """

    served: Served
    rate: float
    tally: ShadowTally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = ShadowTally(self.served.model.version)

    async def tensors(
        self,
        active: ModelDescriptor,
        feed: dict[str, Array],
        outputs: dict[str, Array],
        active_ms: float,
        timeout_s: float,
    ) -> None:
        """Run the client's tensors on the candidate; shapes it cannot take make the sample incomparable."""
        rows = rows_of(feed)
        try:
            ran = await self._run(feed, rows, timeout_s)
        except InvalidInput:  # shapes or dtypes the candidate does not take (its check, or onnxruntime's)
            self.tally.incomparable(rows)
            return
        except ModelError:  # the candidate failed on input it accepts
            self.tally.add([False] * rows, None)
            return
        if ran is not None:
            self._compare(Answer(outputs, active), Answer(ran[0], self.served.descriptor), rows, ran[1] - active_ms)

    async def image(
        self,
        active: ModelDescriptor,
        outputs: dict[str, Array],
        transform: Transform,
        image: ImageRequest,
        active_ms: float,
        *,
        timeout_s: float,
    ) -> None:
        """Preprocess the image for the candidate's own input description, run it, compare in image pixels."""
        d = self.served.descriptor
        try:
            tensor, own = await asyncio.get_running_loop().run_in_executor(image.pool, image.prepare, d.input)
            ran = await self._run({d.input.name: tensor}, 1, timeout_s)
        except ModelError:  # the active version answered this image; the candidate could not
            self.tally.add([False], None)
            return
        if ran is not None:
            self._compare(Answer(outputs, active, [transform]), Answer(ran[0], d, [own]), 1, ran[1] - active_ms)

    async def _run(self, feed: dict[str, Array], rows: int, timeout_s: float) -> tuple[dict[str, Array], float] | None:
        """The candidate's outputs and milliseconds; None when the sample is dropped (counted by reason).

        Load or a swap is no judgement of the candidate, but it is counted: a candidate that never answers
        must not look like a device without traffic.
        """
        batcher = self.served.batcher
        if batcher is None:
            self.tally.dropped("swapped", rows)
            return None
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                out = await batcher.infer(feed)
        except QueueFull:
            self.tally.dropped("queue_full", rows)
            return None
        except TimeoutError:
            self.tally.dropped("timeout", rows)
            return None
        except EngineNotReady:  # its batcher closed: the candidate is being replaced or removed
            self.tally.dropped("swapped", rows)
            return None
        return out, (time.perf_counter() - t0) * 1e3

    def _compare(self, active: Answer, candidate: Answer, rows: int, delta_ms: float) -> None:
        try:
            agrees = agreement(active, candidate)
        except Incomparable:
            self.tally.incomparable(rows)
            return
        self.tally.add(agrees, delta_ms)


def rows_of(feed: dict[str, Array]) -> int:
    """Rows (images) of a request: the batch axis of its first input with one, else 1."""
    for a in feed.values():
        if getattr(a, "ndim", 0):
            return max(int(a.shape[0]), 1)
    return 1

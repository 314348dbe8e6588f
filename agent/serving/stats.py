"""Inference statistics per model version, as Triton reports them (`GET /v2/models[/{name}]/stats`).

Counts and cumulative nanoseconds since the server started, kept per (name, version) across swaps:

- `success` / `fail`: whole requests for this model, from the handler starting to the response built
  (success: answered 200; fail: any error after the model was resolved, the client's included).
- `queue`: waiting in the dynamic batcher for a batch to start (0 for a lone request run at once).
- `compute_input`: parsing the request body into tensors, or decoding and preprocessing the image.
- `compute_infer`: the engine run that served the request (shared with the other rows of its batch).
- `compute_output`: building the response body from the outputs.
- `inference_count`: rows (images) answered; `execution_count`: engine runs (batches); `batch_stats`:
  engine runs per batch size and their nanoseconds (as `compute_infer`). No response cache: `cache_hit`
  and `cache_miss` stay zero; memory usage is not reported.

Updated only on the serving event loop, read there too: no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.messages import AppliedModel
from models.batcher import Batcher

if TYPE_CHECKING:
    from agent.serving.served import Served


@dataclass(slots=True)
class Duration:
    """A count and the nanoseconds it took in total (Triton's `$duration_stat`)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Count `count` more, taking `ns` nanoseconds together."""
        self.count += count
        self.ns += max(ns, 0)

    def doc(self) -> dict[str, int]:
        """`{"count", "ns"}`."""
        return {"count": self.count, "ns": self.ns}


Runs = dict[int, Duration]
"""Engine runs by batch size (rows): how many and how long."""


def merge_runs(into: Runs, more: Runs) -> Runs:
    """Add `more` to `into` (returned)."""
    for size, d in more.items():
        into.setdefault(size, Duration()).add(d.ns, d.count)
    return into


def batcher_runs(b: Batcher) -> Runs:
    """A batcher's engine runs so far."""
    st = b.stats()
    return {n: Duration(c, st.batch_ns.get(n, 0)) for n, c in st.batch_sizes.items()}


@dataclass(slots=True)
class RequestTimes:
    """Where one request's time went (nanoseconds), filled as it goes through the handler and batcher."""

    input_ns: int = 0
    queue_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    rows: int = 0


@dataclass(slots=True)
class ModelStats:
    """Triton's statistics of one model version (see the module docstring)."""

    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    last_inference_ms: int = 0

    def request(self, ok: bool, total_ns: int, times: RequestTimes | None) -> None:
        """Count one finished request of this model."""
        self.last_inference_ms = int(time.time() * 1000)
        if not ok or times is None:
            self.fail.add(total_ns)
            return
        self.success.add(total_ns)
        self.queue.add(times.queue_ns)
        self.compute_input.add(times.input_ns)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(times.output_ns)
        self.inference_count += times.rows

    def doc(self, runs: dict[int, Duration]) -> dict[str, Any]:
        """The `model_stats` entry, with `runs` (engine runs by batch size) as execution count and batch stats."""
        zero = Duration().doc()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": sum(d.count for d in runs.values()),
            "inference_stats": {
                "success": self.success.doc(),
                "fail": self.fail.doc(),
                "queue": self.queue.doc(),
                "compute_input": self.compute_input.doc(),
                "compute_infer": self.compute_infer.doc(),
                "compute_output": self.compute_output.doc(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": zero, "compute_infer": d.doc(), "compute_output": zero}
                for size, d in sorted(runs.items())
            ],
            "memory_usage": [],
        }


class StatsBook:
    """Statistics and engine runs of every version served since start, kept across swaps."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._runs: dict[tuple[str, str], Runs] = {}  # of batchers already closed and their lone runs

    def stats(self, model: AppliedModel) -> ModelStats:
        """The statistics of `model`'s version (created on first use)."""
        key = (model.name, model.version)
        return self._stats.setdefault(key, ModelStats(*key))

    def retire(self, model: AppliedModel, runs: Runs) -> None:
        """Keep the engine runs of a version being unloaded."""
        merge_runs(self._runs.setdefault((model.name, model.version), {}), runs)

    def runs(self, current: Served | None) -> dict[tuple[str, str], Runs]:
        """Engine runs per version: those kept, plus the current version's batcher and lone runs."""
        out = {k: merge_runs({}, v) for k, v in self._runs.items()}
        if current is not None:
            merged = out.setdefault((current.model.name, current.model.version), {})
            merge_runs(merged, current.alone)
            if current.batcher is not None:
                merge_runs(merged, batcher_runs(current.batcher))
        return out

    def statistics(self, current: Served | None, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """`model_stats` entries of the versions served since start, filtered by `name` and `version`."""
        runs = self.runs(current)
        return [
            st.doc(runs.get(key, {}))
            for key, st in sorted(self._stats.items())
            if (name is None or key[0] == name) and (version is None or key[1] == version)
        ]

    def index(self, current: Served | None, ready_only: bool) -> list[dict[str, str]]:
        """Triton's repository index: the active version (READY, or UNAVAILABLE while it starts) and the
        versions served before since start (UNAVAILABLE, unloaded). A shadow candidate is not listed."""
        out: list[dict[str, str]] = []
        active = None
        if current is not None:
            active = (current.model.name, current.model.version)
            ready = current.batcher is not None
            out.append({"name": active[0], "version": active[1], "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "loaded, not serving yet"})  # fmt: skip
        for name, version in sorted(self._stats):
            if (name, version) != active:
                out.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": "unloaded"})
        return [m for m in out if m["state"] == "READY"] if ready_only else out

"""One loaded model version as the serving core holds it: engine, description, batcher, requests in progress."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from agent.serving.stats import ModelStats, Runs
from fleet.messages import AppliedModel
from models.batcher import Batcher, BatcherOptions
from models.descriptor import ModelDescriptor
from models.engine import Engine

Array = npt.NDArray[Any]


class OneRunAtATime:
    """An engine whose runs take a lock shared by every engine of the slot.

    During a swap the old engine finishes its queued batches while the new one starts, and a shadow
    candidate runs beside the active model. On CPU each onnxruntime run already uses every core, so two
    runs at once only oversubscribe the cores (threads of one parallel section wait for each other);
    one run at a time keeps the same total work without the stragglers.
    """

    def __init__(self, engine: Engine, lock: threading.Lock) -> None:
        self.engine = engine
        self.lock = lock

    @property
    def max_batch(self) -> int | None:
        return self.engine.max_batch

    def check_inputs(self, inputs: Mapping[str, Any], *, partial_batch: bool = False) -> dict[str, Array]:
        return self.engine.check_inputs(inputs, partial_batch=partial_batch)

    def run_checked(self, feed: dict[str, Array]) -> dict[str, Array]:
        with self.lock:
            return self.engine.run_checked(feed)


@dataclass(eq=False)
class Served:
    """One loaded model version: its engine, description, batcher and requests in progress."""

    engine: Engine
    model: AppliedModel
    descriptor: ModelDescriptor
    options: BatcherOptions
    batcher: Batcher | None = None
    inflight: int = 0
    pending: int = 0  # acquired, not yet handed to the batcher (being read, parsed, preprocessed)
    retired: bool = False
    alone: Runs = field(default_factory=dict)  # engine runs by rows that skipped the batcher (run_alone)
    output_names: tuple[str, ...] = field(default=())
    stats: ModelStats | None = None  # Triton's statistics of this version (None: a shadow, not addressable)

    def __post_init__(self) -> None:
        self.output_names = tuple(o.name for o in self.engine.outputs)

    def queue_depth(self) -> int:
        """Requests waiting in this model's batcher."""
        return self.batcher.stats().queue_depth if self.batcher is not None else 0

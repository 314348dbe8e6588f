"""The memory budget across a device's models, checked before a model is loaded: refuse with the numbers,
never run into the kernel's OOM killer (which would take every model down, not only the new one).

The estimate of one loaded model is `per_byte` times its ONNX file plus `per_model` bytes. Measured here
(onnxruntime 1.x CPU sessions, warmed up, RSS growth per session past the first one): a YOLOv8n detector of
11.6 MiB took 26.7-29.3 MiB (2.3-2.5x), a 6.5 MiB PaddleClas classifier 15.5-16.5 MiB (2.4-2.55x), a 0.6 MiB
classifier 3.1-3.3 MiB. The first session of a process also pays onnxruntime's own start (10-20 MiB),
which is the agent's cost, not a model's. docs/agent.md has the table and how to measure a model of yours.

The peak counted for an activation is every model that will be loaded at once during its swap: the other
models' active versions and shadow candidates, the version being replaced (its in-flight requests finish
on it after the swap) and the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from agent.errors import MemoryBudgetExceeded
from agent.settings import ActivationSettings
from infra.sizes import mib

DEFAULT_SHARE = 0.75  # of the device's RAM, when no budget is set


@dataclass(frozen=True)
class MemoryBudget:
    """The models' memory budget and the estimate it checks against."""

    budget_bytes: int
    per_byte: float
    per_model: int

    @classmethod
    def from_settings(cls, settings: ActivationSettings, total_ram: int | None = None) -> MemoryBudget:
        """The budget of `settings` (unset: 75 % of `total_ram`, default this machine's RAM)."""
        budget = settings.memory_budget_bytes
        if budget is None:
            budget = int((total_ram if total_ram is not None else psutil.virtual_memory().total) * DEFAULT_SHARE)
        return cls(budget, settings.memory_per_model_byte, settings.memory_per_model_bytes)

    def estimate(self, file_bytes: int) -> int:
        """Estimated RSS of a loaded model whose ONNX file has `file_bytes`."""
        return int(file_bytes * self.per_byte) + self.per_model

    def check(self, what: str, file_bytes: int, loaded: Mapping[str, int]) -> int:
        """Refuse to load `what` (a model file of `file_bytes`) beside `loaded` (description -> file bytes of
        every model in memory at the peak) when the estimate exceeds the budget. Returns the peak estimate.

        Raises:
            MemoryBudgetExceeded: with the estimate of each part, the total and the budget.
        """
        need = self.estimate(file_bytes)
        parts = {k: self.estimate(v) for k, v in loaded.items()}
        peak = need + sum(parts.values())
        if peak <= self.budget_bytes:
            return peak
        others = ", ".join(f"{k} {mib(v)}" for k, v in sorted(parts.items())) or "none"
        raise MemoryBudgetExceeded(
            f"{what} needs about {mib(need)} "
            f"(a {mib(file_bytes)} file x {self.per_byte:g} + {mib(self.per_model)}); "
            f"with the models loaded at the swap ({others}) the peak is about {mib(peak)}, over the memory "
            f"budget of {mib(self.budget_bytes)} (EDGEFLEET_AGENT_ACTIVATION_MEMORY_BUDGET_BYTES); "
            "nothing was loaded and every model keeps serving"
        )

"""Loading a stored blob into a new, warmed-up, golden-checked engine, and `EngineActivation`, which swaps it in."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ActivationError, AgentError, StoreError
from agent.ports import Restart, ServingPort
from agent.store import ModelStore, StoredModel
from fleet.errors import error_code
from fleet.messages import AppliedModel, ModelRef, RuntimeOptions
from models.descriptor import ModelDescriptor
from models.engine import Engine, EngineOptions
from models.errors import ModelError


@dataclass(frozen=True)
class Loaded:
    """A ready engine, the description it was checked against, and the model as it will be reported."""

    engine: Engine
    descriptor: ModelDescriptor
    applied: AppliedModel

    @property
    def provider(self) -> str:
        """The execution provider the engine runs on."""
        return self.engine.active_provider


def engine_options(runtime: RuntimeOptions, warmup_runs: int) -> EngineOptions:
    """Engine options for a desired state's runtime options (golden check always required)."""
    return EngineOptions(
        providers=tuple(runtime.providers),
        intra_op_threads=runtime.intra_op_threads or 0,
        warmup_runs=warmup_runs,
        golden="require",
    )


def load(
    path: Path,
    sha256: str,
    *,
    name: str,
    version: str,
    descriptor: dict[str, Any],
    runtime: RuntimeOptions,
    warmup_runs: int = 2,
) -> Loaded:
    """Load the verified blob at `path` as model `name` `version`: engine, warm-up and golden check.

    Raises:
        ActivationError: with a code naming the failed step (bad_descriptor, descriptor_mismatch,
            golden_mismatch, provider_unavailable, invalid_model_file, ...) and the reason.
    """
    try:
        desc = ModelDescriptor.from_json(descriptor)
    except ModelError as e:
        raise ActivationError(f"{name} {version}: {e}", code="bad_descriptor") from e
    if desc.name != name or desc.version != version:
        raise ActivationError(
            f"the description is for {desc.name} {desc.version}, the desired state names {name} {version}",
            code="descriptor_mismatch",
        )
    if desc.sha256 is not None and desc.sha256 != sha256:
        raise ActivationError(
            f"{name} {version}: the description records sha256 {desc.sha256[:12]}, the blob is {sha256[:12]}",
            code="descriptor_mismatch",
        )
    try:
        engine = Engine.load(path, desc, engine_options(runtime, warmup_runs))
    except ModelError as e:
        raise ActivationError(f"{name} {version}: {e}", code=error_code(e)) from e
    except Exception as e:  # onnxruntime or numpy failing in an unforeseen way must not kill the agent
        raise ActivationError(f"{name} {version}: unexpected load failure: {e}", code="load_failed") from e
    applied = AppliedModel(
        name=name, version=version, sha256=sha256, provider=engine.active_provider, activated_at=time.time()
    )
    return Loaded(engine, desc, applied)


@dataclass
class Restored:
    """What `restore` started serving from the store, and what went wrong on the way."""

    loaded: Loaded | None = None
    runtime: RuntimeOptions | None = None
    previous: AppliedModel | None = None
    errors: list[AgentError] = field(default_factory=list)


def restore(store: ModelStore, *, warmup_runs: int) -> Restored:
    """Load the store's active model, or its previous one when the active one fails (not yet served).

    The pointers are left as they are (for inspection); `previous` is what still counts as last-known-good.
    """
    out = Restored()
    active = None
    try:
        active = store.active()
        prev = store.previous()
        out.previous = prev.model if prev else None
    except StoreError as e:
        out.errors.append(AgentError(str(e), code=e.code, permanent=False))
    fallback: StoredModel | None = None
    with contextlib.suppress(StoreError):
        fallback = store.previous()
    for rec in (r for r in (active, fallback) if r is not None):
        try:
            out.loaded = load(
                store.blob_path(rec.sha256), rec.sha256, name=rec.model.name, version=rec.model.version,
                descriptor=rec.descriptor, runtime=rec.runtime, warmup_runs=warmup_runs,
            )  # fmt: skip
        except ActivationError as e:
            out.errors.append(e)
            continue
        out.runtime = rec.runtime
        if rec is not active:  # serving previous because active failed: nothing older is known-good
            out.previous = None
        break
    return out


class EngineActivation:
    """The agent's `ActivationPort`: onnxruntime engines (`load`) swapped into a `ServingPort`.

    Args:
        serving: the serving side (HTTP API or headless).
        store: the model store whose pointers `restore` reads.
        warmup_runs: golden-input runs before a swap.
    """

    def __init__(self, serving: ServingPort, store: ModelStore, *, warmup_runs: int) -> None:
        self.serving = serving
        self.store = store
        self.warmup_runs = warmup_runs

    def _load(self, path: Path, ref: ModelRef, runtime: RuntimeOptions) -> Loaded:
        return load(path, ref.blob.sha256, name=ref.name, version=ref.version, descriptor=ref.descriptor,
                    runtime=runtime, warmup_runs=self.warmup_runs)  # fmt: skip

    def restore(self) -> Restart:
        restored = restore(self.store, warmup_runs=self.warmup_runs)
        out = Restart(runtime=restored.runtime, previous=restored.previous, errors=restored.errors)
        if restored.loaded is not None:
            loaded = restored.loaded
            self.serving.activate(loaded.engine, loaded.applied, loaded.descriptor, restored.runtime)
            out.active = loaded.applied
        return out

    def activate(self, path: Path, ref: ModelRef, runtime: RuntimeOptions) -> AppliedModel:
        loaded = self._load(path, ref, runtime)
        self.serving.activate(loaded.engine, loaded.applied, loaded.descriptor, runtime)
        return loaded.applied

    def set_shadow(self, path: Path, ref: ModelRef, runtime: RuntimeOptions, sample_rate: float) -> AppliedModel:
        loaded = self._load(path, ref, runtime)
        self.serving.set_shadow(loaded.engine, loaded.applied, sample_rate)
        return loaded.applied

    def clear_shadow(self) -> None:
        self.serving.set_shadow(None, None, 0.0)

    def deactivate(self) -> None:
        self.serving.deactivate()

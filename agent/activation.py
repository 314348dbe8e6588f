"""Loading a stored blob into a new, warmed-up, golden-checked engine (nothing is swapped here)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ActivationError, AgentError, StoreError
from agent.store import ModelStore, StoredModel
from fleet.errors import error_code
from fleet.messages import AppliedModel, RuntimeOptions
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

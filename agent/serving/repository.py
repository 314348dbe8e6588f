"""The model repository: every model a device serves, by name, one `ModelSlot` each.

`ModelRepository` implements `agent.ports.ServingPort` for a device that serves several models (a detector
and a classifier on its crops, say), each versioned, swapped and shadowed on its own: the control side names
the model in every call, and a request names the model it wants. The slots share what is per device, not
per model: the event loop, the settings the transport configures (batching defaults, concurrency, timeouts,
the transport's in-progress count) and one engine-run lock, because on CPU each onnxruntime run already uses
every core and two runs at once only oversubscribe them (see `agent.serving.served.OneRunAtATime`).

A model that is deactivated keeps its slot until the control side has taken its last telemetry window, so
the requests it served before it was removed are still reported; it answers no new request. Only a deactivated
model's slot goes: a slot just created for a model's first version also holds nothing until its swap has run
on the event loop, and a window taken meanwhile must not drop it (the model would then serve out of reach).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from agent.ports import ServingWindow
from agent.serving.errors import ModelNotFound, NotReady
from agent.serving.served import Served
from agent.serving.slot import DEFAULT_BATCHING, ModelSlot
from fleet.messages import AppliedModel, RuntimeOptions
from models.batcher import BatcherOptions
from models.descriptor import ModelDescriptor
from models.engine import Engine

_SETTINGS = ("defaults", "max_concurrency", "request_timeout_s", "activate_timeout_s", "in_progress")


class ModelRepository:
    """Every model the device serves, by name; implements `agent.ports.ServingPort`. Thread-safe for the
    control side; the request path runs on the event loop the transport attached."""

    def __init__(
        self,
        defaults: BatcherOptions | None = None,
        *,
        max_concurrency: int = 256,
        request_timeout_s: float = 10.0,
        seed: int | None = None,
    ) -> None:
        self.slots: dict[str, ModelSlot] = {}
        self._config: dict[str, Any] = {
            "defaults": defaults or DEFAULT_BATCHING,
            "max_concurrency": max_concurrency,
            "request_timeout_s": request_timeout_s,
            "activate_timeout_s": 30.0,
            "in_progress": None,
        }
        self._seed = seed
        self._run_lock = threading.Lock()  # one engine run at a time across every model of the device
        self._lock = threading.Lock()  # guards slots, _leaving and the loop binding
        self._leaving: set[str] = set()  # deactivated models: their slots go once empty and reported
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # --- settings the transport configures (shared by every slot) ------------------------------------

    def configure(self, **values: Any) -> None:
        """Set shared serving settings (`defaults`, `max_concurrency`, `request_timeout_s`,
        `activate_timeout_s`, `in_progress`) on the repository and every slot."""
        unknown = set(values) - set(_SETTINGS)
        if unknown:
            raise TypeError(f"unknown serving settings: {', '.join(sorted(unknown))}")
        with self._lock:
            self._config.update(values)
            for slot in self.slots.values():
                for key, value in values.items():
                    setattr(slot, key, value)

    @property
    def defaults(self) -> BatcherOptions:
        """Batching options of a model whose slot names none."""
        value: BatcherOptions = self._config["defaults"]
        return value

    @property
    def in_progress(self) -> Callable[[], int] | None:
        """Requests the transport is handling, all models together (None: unknown)."""
        fn: Callable[[], int] | None = self._config["in_progress"]
        return fn

    # --- ServingPort (any thread) --------------------------------------------------------------------

    def activate(
        self, engine: Engine, model: AppliedModel, descriptor: ModelDescriptor, runtime: RuntimeOptions | None = None
    ) -> None:
        """Make `engine` the active version of model `model.name` (see ServingPort)."""
        self._ensure(model.name).activate(engine, model, descriptor, runtime)

    def set_shadow(self, name: str, engine: Engine | None, model: AppliedModel | None, sample_rate: float) -> None:
        """Run `engine` beside model `name` on `sample_rate` of its requests; None stops shadowing."""
        slot = self._ensure(name) if engine is not None else self.slots.get(name)
        if slot is not None:
            slot.set_shadow(engine, model, sample_rate)

    def deactivate(self, name: str) -> None:
        """Stop serving model `name`: new requests for it get 404, in-flight ones finish."""
        with self._lock:
            slot = self.slots.get(name)
            if slot is not None:
                self._leaving.add(name)
        if slot is not None:
            slot.set_shadow(None, None, 0.0)
            slot.deactivate()

    def take_windows(self) -> dict[str, ServingWindow]:
        """Counters of every model since the previous call; slots of deactivated models go once reported."""
        with self._lock:
            slots = dict(self.slots)
        out = {name: slot.take_window() for name, slot in slots.items()}
        with self._lock:
            for name, slot in slots.items():
                empty = slot.current is None and slot.shadow_model is None
                if empty and name in self._leaving and self.slots.get(name) is slot:
                    del self.slots[name]
                    self._leaving.discard(name)
        return out

    # --- lookups (any thread) ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Models serving now, sorted."""
        return sorted(n for n, s in self.slots.items() if s.current is not None)

    def get(self, name: str) -> ModelSlot:
        """The slot serving model `name`.

        Raises:
            NotReady: no model at all is active yet. ModelNotFound: `name` is not served (the message lists
                what is).
        """
        slot = self.slots.get(name)
        if slot is not None and slot.current is not None:
            return slot
        served = self.names()
        if not served:
            raise NotReady("no model is active on this device yet; retry later")
        raise ModelNotFound(f"model {name[:100]!r} is unknown here; serving {', '.join(map(repr, served))}")

    def lookup(self, name: str, version: str | None = None) -> Served:
        """The served version of model `name` for metadata and readiness (no request is counted).

        Raises:
            ModelNotFound: the model, or that version of it, is not served here.
        """
        slot = self.slots.get(name)
        if slot is None or slot.current is None:
            served = self.names()
            what = f"serving {', '.join(map(repr, served))}" if served else "no model is active"
            raise ModelNotFound(f"model {name[:100]!r} is unknown here; {what}")
        return slot.lookup(name, version)

    def only(self) -> ModelSlot:
        """The one model served (for callers that name none).

        Raises:
            NotReady: none is. ModelNotFound: several are (the caller must name one).
        """
        served = self.names()
        if not served:
            raise NotReady("no model is active on this device yet; retry later")
        if len(served) > 1:
            raise ModelNotFound(f"this device serves {len(served)} models ({', '.join(served)}); name one")
        return self.slots[served[0]]

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Triton's `model_stats` of every model's versions served since start (or of `name`, `version`).

        Raises:
            ModelNotFound: `name` (or that version of it) was never served here.
        """
        if name is not None:
            slot = self.slots.get(name)
            if slot is None:
                raise ModelNotFound(f"model {name[:100]!r} is unknown here")
            return slot.statistics(name, version)
        return [s for _n, slot in sorted(self.slots.items()) for s in slot.statistics()]

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index over every model: each one's active version and those served before."""
        return [m for _n, slot in sorted(self.slots.items()) for m in slot.repository_index(ready_only)]

    @property
    def active_model(self) -> AppliedModel | None:
        """The active version when exactly one model is served (None otherwise)."""
        served = self.names()
        return self.slots[served[0]].active_model if len(served) == 1 else None

    @property
    def shadow_model(self) -> AppliedModel | None:
        """The shadow candidate when exactly one model is served (None otherwise, or without a candidate)."""
        served = self.names()
        return self.slots[served[0]].shadow_model if len(served) == 1 else None

    def active_models(self) -> dict[str, AppliedModel]:
        """The active version of every model served, by name."""
        return {n: m for n, s in list(self.slots.items()) if (m := s.active_model) is not None}

    def is_ready(self) -> bool:
        """True when at least one model is active and every active model's batcher runs."""
        slots = [s for s in list(self.slots.values()) if s.current is not None]
        return bool(slots) and all(s.is_ready() for s in slots)

    # --- event loop lifecycle ------------------------------------------------------------------------

    async def attach(self) -> None:
        """Bind every slot (and every slot created later) to the running loop; start their batchers."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            slots = list(self.slots.values())
        for slot in slots:
            await slot.attach()

    async def detach(self) -> None:
        """Stop every slot's batchers and unbind from the loop; engines stay loaded."""
        with self._lock:
            self._loop = None
            self._loop_thread = None
            slots = list(self.slots.values())
        for slot in slots:
            await slot.detach()

    # --- internals -----------------------------------------------------------------------------------

    def _ensure(self, name: str) -> ModelSlot:
        """The slot of model `name`, created (and bound to the loop, if attached) when it has none; a model
        deactivated and wanted again keeps its slot."""
        with self._lock:
            self._leaving.discard(name)
            slot = self.slots.get(name)
            if slot is not None:
                return slot
            slot = ModelSlot(self.defaults, seed=self._seed, run_lock=self._run_lock)
            for key in _SETTINGS:
                setattr(slot, key, self._config[key])
            if self._loop is not None and self._loop_thread is not None:
                slot.bind(self._loop, self._loop_thread)
            self.slots[name] = slot
            return slot

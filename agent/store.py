"""The model store on disk: content-addressed blobs and atomically switched `active`/`previous` pointers.

Layout under the store root (one filesystem, so every rename is atomic)::

    blobs/<sha256>                  verified model bytes, named by their sha256
    manifests/<sha256>              the signed chunk list of each blob (BlobManifest JSON): which chunks it holds
    partial/                        downloads in progress (fleet.chunks.ChunkReceiver work files)
    models/<name>/active.json       the version of model <name> serving now   } StoredModel JSON: blob sha256,
    models/<name>/previous.json     its last-known-good version              } AppliedModel, descriptor, runtime
    models/<name>/shadow.json       its shadow candidate and sample rate (ShadowPointer JSON), if one runs

Each model has its own pair of pointers (a device serves several models, each versioned and rolled back on
its own). A pointer is replaced by writing a temporary file, fsyncing it, renaming it over the old one and
fsyncing the directory, so a crash at any instant leaves either the old or the new pointer, both naming
blobs that are present. `previous.json` is written before `active.json`: a crash between the two leaves
both naming the old model, which is loadable. Other processes (cluster mode: `edgefleet agent serve` in
pods) read the store with `ModelStore(root).active(name)` (and `.shadow(name)`) and never write it.

A store written by a single-model agent (schema 1: `active.json` and `previous.json` at the root) is moved
under `models/<name>/` when the agent opens it.

A new version's download takes every chunk the store already holds (found by its sha256 in the manifests of
the blobs present) from disk and fetches only the others. Blobs no pointer names are spare: `collect` deletes
them (least recently used first, a blob's mtime being when it last became active or shadow, or was stored)
beyond a byte budget, or as many as a download that does not fit needs (those sharing fewest chunks with it
first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import StoreError
from fleet.chunks import Accepted, ChunkFrame, ChunkReceiver
from fleet.errors import InvalidId
from fleet.files import atomic_write, fsync_dir
from fleet.ids import Sha256, check_device_id, check_sha256
from fleet.messages import AppliedModel, BlobManifest, Range, RuntimeOptions

MAX_POINTER_BYTES = 1 << 20
PointerName = Literal["active", "previous", "shadow"]
_POINTERS: tuple[PointerName, ...] = ("active", "previous", "shadow")


_Pointer = TypeVar("_Pointer", bound=BaseModel)


class ChunkSource(NamedTuple):
    """A chunk the store already holds: which blob file, and where in it."""

    path: Path
    offset: int
    length: int


class Spare(NamedTuple):
    """A blob `collect` may delete: what the collection order looks at."""

    sha256: str
    size: int
    last_used: float  # when it last became active or shadow, or was stored (the agent: its file's mtime)
    chunks: Sequence[str]  # its chunk digests (empty: unknown)


def collection_order(spare: Iterable[Spare], reuse: BlobManifest | None) -> list[Spare]:
    """The order in which spare blobs are deleted, the agent's and the simulator's store alike: those sharing the
    fewest chunks with `reuse` (the blob about to be fetched, which takes the chunks the store holds) first, then
    the least recently used."""
    wanted = frozenset(reuse.chunks) if reuse is not None else frozenset()
    return sorted(spare, key=lambda b: (len(wanted.intersection(b.chunks)), b.last_used, b.sha256))


class StoredModel(BaseModel):
    """What a pointer file names: everything needed to load and serve one model version again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="pointer file schema version")
    sha256: Sha256 = Field(description="the blob in blobs/ holding the .onnx bytes")
    model: AppliedModel = Field(description="name, version, sha256 and provider as last activated")
    task: Literal["classification", "detection", "tensors"] = Field(description="the model's task")
    descriptor: dict[str, Any] = Field(description="the models package description (models.ModelDescriptor JSON)")
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions, description="runtime options it runs with")
    desired_version: int | None = Field(default=None, ge=0, description="desired-state version that set it")


class ShadowPointer(BaseModel):
    """What `shadow.json` names: a candidate version run beside the model's active one on sampled requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="shadow pointer schema version")
    candidate: StoredModel = Field(description="the candidate, as a pointer file names a version")
    sample_rate: float = Field(gt=0, le=1, description="fraction of the model's requests also run on it")


class ModelStore:
    """A content-addressed model store rooted at `root`.

    Args:
        root: the store directory.
        create: create the directories (the agent does; read-only readers pass False).
    """

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.models = self.root / "models"
        self.manifests = self.root / "manifests"
        self._chunks: dict[str, ChunkSource] | None = None  # chunk sha256 -> where the store holds it
        if create:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.partial.mkdir(parents=True, exist_ok=True)
            self.manifests.mkdir(parents=True, exist_ok=True)
            self.models.mkdir(parents=True, exist_ok=True)
            for stray in (*self.root.glob("*.json.tmp"), *self.models.glob("*/*.json.tmp")):
                stray.unlink(missing_ok=True)
            self._adopt_single_model_layout()

    # -- pointers ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The models that have pointers in this store (active or previous), sorted."""
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if p.is_dir() and any(p.glob("*.json")))

    def active(self, name: str) -> StoredModel | None:
        """The version of model `name` that should be serving (None: nothing activated yet).

        Raises:
            StoreError: the pointer file is unreadable or names a blob that is missing.
        """
        return self._read(name, "active")

    def previous(self, name: str) -> StoredModel | None:
        """The last-known-good version of model `name`, kept for an instant rollback (None: none yet)."""
        return self._read(name, "previous")

    def shadow(self, name: str) -> ShadowPointer | None:
        """The shadow candidate of model `name` and its sample rate (None: none runs).

        Raises:
            StoreError: the pointer file is unreadable or names a blob that is missing.
        """
        return self._read_json(name, "shadow", ShadowPointer)

    def set_shadow(self, pointer: ShadowPointer) -> None:
        """Run `pointer.candidate` beside its model's active version (what the serving pods follow).

        Raises:
            StoreError: the candidate's blob is not in the store.
        """
        record = pointer.candidate
        if not self.has_blob(record.sha256):
            raise StoreError(f"cannot shadow {record.model.name} {record.model.version}: blob missing")
        self._write(record.model.name, "shadow", pointer)
        self._mark_used(record.sha256)

    def clear_shadow(self, name: str) -> None:
        """No shadow candidate runs beside model `name` any more."""
        self._remove(name, "shadow")

    def _dir(self, name: str) -> Path:
        try:
            check_device_id(name)  # model names follow the device-id rules: a safe directory name
        except InvalidId as e:
            raise StoreError(f"not a model name: {e}") from e
        return self.models / name

    def _read(self, model: str, name: PointerName) -> StoredModel | None:
        return self._read_json(model, name, StoredModel)

    def _read_json(self, model: str, name: PointerName, kind: type[_Pointer]) -> _Pointer | None:
        path = self._dir(model) / f"{name}.json"
        try:
            if path.stat().st_size > MAX_POINTER_BYTES:
                raise StoreError(f"{path} is larger than {MAX_POINTER_BYTES} bytes; not a pointer file")
            pointer = kind.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as e:
            raise StoreError(f"pointer {path} is unreadable: {str(e)[:300]}") from e
        record = pointer.candidate if isinstance(pointer, ShadowPointer) else pointer
        assert isinstance(record, StoredModel)
        if record.model.name != model:
            raise StoreError(f"pointer {path} names model {record.model.name!r}, not {model!r}")
        if not self.has_blob(record.sha256):
            raise StoreError(f"pointer {path} names blob {record.sha256[:12]}, which is not in {self.blobs}")
        return pointer

    def promote(self, record: StoredModel) -> StoredModel | None:
        """Make `record` its model's active version; the version active until now becomes `previous`.

        Returns the new previous. Activating the version that is already active only rewrites its pointer
        (previous is kept). Other models' pointers are not touched.

        Raises:
            StoreError: the blob of `record` is not in the store.
        """
        name = record.model.name
        if not self.has_blob(record.sha256):
            raise StoreError(f"cannot activate {name} {record.model.version}: blob missing")
        try:
            current = self.active(name)
        except StoreError:
            current = None
        previous = self.previous(name) if current is None or current.sha256 == record.sha256 else current
        if previous is not None and previous.sha256 != record.sha256:
            self._write(name, "previous", previous)
        elif previous is not None:  # rolling back onto previous: nothing older is known-good any more
            previous = None
            self._remove(name, "previous")
        self._write(name, "active", record)
        self._mark_used(record.sha256)
        return previous

    def clear_active(self, name: str) -> None:
        """Stop serving model `name`: its active version becomes previous (kept for a rollback)."""
        current = self.active(name)
        if current is not None:
            self._write(name, "previous", current)
        self._remove(name, "active")

    def forget(self, name: str) -> None:
        """Remove every pointer of model `name` (its blobs become spare, collected by `collect`)."""
        for pointer in _POINTERS:
            self._remove(name, pointer)
        with contextlib.suppress(OSError):
            self._dir(name).rmdir()
            fsync_dir(self.models)

    def _write(self, model: str, name: PointerName, record: StoredModel | ShadowPointer) -> None:
        folder = self._dir(model)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.models)
        atomic_write(folder / f"{name}.json", record.model_dump_json(indent=2).encode())

    def _remove(self, model: str, name: PointerName) -> None:
        path = self._dir(model) / f"{name}.json"
        if path.exists():
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

    def _adopt_single_model_layout(self) -> None:
        """Move the pointers of a single-model store (`active.json`, `previous.json` at the root) under
        `models/<name>/`; the previous pointer first, as `promote` writes them. Unreadable ones stay put."""
        order: tuple[PointerName, ...] = ("previous", "active")
        for pointer in order:
            old = self.root / f"{pointer}.json"
            if not old.exists():
                continue
            try:
                record = StoredModel.model_validate_json(old.read_bytes())
            except (OSError, ValidationError, ValueError):
                continue
            target = self._dir(record.model.name) / f"{pointer}.json"
            if not target.exists():
                self._write(record.model.name, pointer, record)
            old.unlink(missing_ok=True)
            fsync_dir(self.root)

    # -- blobs ----------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """Where the blob `sha256` lives (whether or not it is present)."""
        return self.blobs / check_sha256(sha256)

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """True when the verified blob is present (and has `size` bytes when given)."""
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def free_bytes(self) -> int:
        """Free bytes on the store's filesystem."""
        return shutil.disk_usage(self.root).free

    def referenced(self) -> set[str]:
        """Blobs named by a pointer of any model (never collected)."""
        refs = set()
        for model in self.names():
            for pointer in ("active", "previous"):
                with contextlib.suppress(StoreError):
                    record = self._read(model, pointer)
                    if record is not None:
                        refs.add(record.sha256)
            with contextlib.suppress(StoreError):
                if (shadow := self.shadow(model)) is not None:
                    refs.add(shadow.candidate.sha256)
        return refs

    def collect(
        self,
        keep_bytes: int,
        *,
        keep: set[str] | frozenset[str] = frozenset(),
        room: int = 0,
        reuse: BlobManifest | None = None,
    ) -> list[str]:
        """Delete unreferenced blobs while they take more than `keep_bytes` or the filesystem has less than `room`
        bytes free (a download that would not fit otherwise), one at a time, so no more goes than that needs.

        Blobs named by `active`, `previous`, `shadow` or in `keep` (a desired state's) stay, whatever `room` asks.
        Order: the blobs sharing the fewest chunks with `reuse` (the blob about to be fetched, which takes the
        chunks the store holds) first, then the least recently used (activated or stored) first.
        Returns the deleted digests.
        """
        protected = self.referenced() | set(keep)
        spare = []
        for path in self.blobs.iterdir():
            if path.name in protected or len(path.name) != 64:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                manifest = self._load_manifest(self.manifests / path.name) if reuse is not None else None
                chunks = manifest.chunks if manifest is not None else ()
                spare.append(Spare(path.name, st.st_size, st.st_mtime, chunks))
        total = sum(b.size for b in spare)
        removed = []
        for b in collection_order(spare, reuse):
            if total <= keep_bytes and (room <= 0 or self.free_bytes() >= room):
                break
            self.blob_path(b.sha256).unlink(missing_ok=True)
            (self.manifests / b.sha256).unlink(missing_ok=True)
            total -= b.size
            removed.append(b.sha256)
        if removed:
            fsync_dir(self.blobs)
            self._chunks = None  # rebuilt from the manifests left on the next lookup
        return removed

    def _mark_used(self, sha256: str) -> None:
        """Record that the blob serves (its mtime): `collect` deletes the least recently used spare blobs first."""
        with contextlib.suppress(OSError):
            os.utime(self.blob_path(sha256))

    # -- chunks ---------------------------------------------------------------------------------------
    def record_manifest(self, manifest: BlobManifest) -> None:
        """Remember the chunk list of a blob now in the store, so later versions can take its chunks."""
        self.manifests.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifests / manifest.sha256, manifest.model_dump_json(exclude_none=True).encode())
        if self._chunks is not None:
            self._index(manifest, self._chunks)

    def find_chunk(self, sha256: str) -> ChunkSource | None:
        """Where the store holds a chunk with this sha256 (a blob and a range of it), or None."""
        if self._chunks is None:
            self._chunks = {}
            if self.manifests.is_dir():
                for path in self.manifests.iterdir():
                    manifest = self._load_manifest(path)
                    if manifest is not None:
                        self._index(manifest, self._chunks)
        return self._chunks.get(sha256)

    def _load_manifest(self, path: Path) -> BlobManifest | None:
        """A recorded manifest whose blob is present; an unreadable or orphaned one is deleted."""
        try:
            manifest = BlobManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            manifest = None
        if manifest is None or manifest.sha256 != path.name or not self.has_blob(manifest.sha256, manifest.size):
            path.unlink(missing_ok=True)
            return None
        return manifest

    def _index(self, manifest: BlobManifest, index: dict[str, ChunkSource]) -> None:
        path = self.blob_path(manifest.sha256)
        for i, digest in enumerate(manifest.chunks):
            index.setdefault(digest, ChunkSource(path, manifest.offset(i), manifest.chunk_length(i)))

    def discard_partials(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete download work files of blobs other than `keep` (stale transfers)."""
        removed = []
        for path in self.partial.iterdir():
            digest = path.name.split(".", 1)[0]
            if digest not in keep:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def receiver(self, manifest: BlobManifest, *, sync_every: int, sync_interval_s: float) -> ChunkReceiver:
        """The work files of a download of `manifest`'s blob under `partial/` (resumed if present)."""
        return ChunkReceiver(manifest, self.partial, sync_every=sync_every, sync_interval_s=sync_interval_s)


class ChunkSink(Protocol):
    """Where a download puts verified chunks: `fleet.chunks.ChunkReceiver` on the agent's disk."""

    @property
    def have_count(self) -> int: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def complete(self) -> bool: ...
    def missing(self) -> list[int]: ...
    def missing_ranges(self) -> list[Range]: ...
    def accept(self, frame: ChunkFrame | bytes) -> Accepted: ...
    def put(self, index: int, data: bytes | memoryview) -> Accepted: ...
    def flush(self) -> None: ...
    def finish(self, dest: Path) -> Path: ...
    def close(self) -> None: ...
    def discard(self) -> None: ...


class StorePort(Protocol):
    """What the reconciler and its downloads need of a model store: `ModelStore` on the agent's disk, or
    the fleet simulator's per-device view of one shared blob directory (`sim.store`). Pointers are kept per
    model name."""

    root: Path

    def names(self) -> list[str]: ...
    def active(self, name: str) -> StoredModel | None: ...
    def previous(self, name: str) -> StoredModel | None: ...
    def promote(self, record: StoredModel) -> StoredModel | None: ...
    def clear_active(self, name: str) -> None: ...
    def shadow(self, name: str) -> ShadowPointer | None: ...
    def set_shadow(self, pointer: ShadowPointer) -> None: ...
    def clear_shadow(self, name: str) -> None: ...
    def forget(self, name: str) -> None: ...
    def blob_path(self, sha256: str) -> Path: ...
    def has_blob(self, sha256: str, size: int | None = None) -> bool: ...
    def free_bytes(self) -> int: ...
    def collect(
        self,
        keep_bytes: int,
        *,
        keep: set[str] | frozenset[str] = frozenset(),
        room: int = 0,
        reuse: BlobManifest | None = None,
    ) -> list[str]: ...
    def record_manifest(self, manifest: BlobManifest) -> None: ...
    def find_chunk(self, sha256: str) -> ChunkSource | None: ...
    def discard_partials(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]: ...
    def receiver(self, manifest: BlobManifest, *, sync_every: int, sync_interval_s: float) -> ChunkSink: ...

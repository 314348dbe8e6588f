"""The model registry: uploads streamed to disk, validated by `models`, stored content-addressed by sha256.

Blobs live in `data_dir/blobs`. Where the store is shared by replicas on several hosts (PostgreSQL), it keeps
each blob's bytes too, taken in the same transaction as the version that brings it: a replica's directory is
then a cache, and one that lacks a blob another replica took in copies it from the store when it first serves
it (`local_blob`, checked against the digest), so no file system has to be shared.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.limits import check_json
from fleet.messages import BlobManifest, DesiredModel, ModelRef
from fleet.plan import Chunking, plan_file
from hub.errors import Conflict, InvalidModel, NotFound, TooLarge
from hub.limits import desired_state_bytes, fits, too_large_message
from hub.store import ModelVersion, Store
from models.descriptor import ModelDescriptor
from models.errors import ModelError

log = logging.getLogger(__name__)
_BLOCK = 1 << 20


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key for semantic versions (pre-releases before their release); unparsable ones sort first."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?", version)
    if not m:
        return (-1, version)
    pre = m.group(4)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, pre or "")


@dataclass(frozen=True)
class PushResult:
    """What a push did: the stored version, and whether it was new (False: the same bytes were there)."""

    version: ModelVersion
    created: bool
    restored: bool = False  # the version existed without its bytes on this host: the push put them back


def blob_relpath(sha256: str) -> Path:
    """A blob's place under the blob directory: `<first two hex digits>/<sha256>` (the layout backups copy)."""
    return Path(sha256[:2]) / sha256


class Registry:
    """Models, versions and blobs. Transport-free: the API and the CLI both call this."""

    def __init__(
        self, store: Store, blob_dir: Path, tmp_dir: Path, *, chunk_size: int, chunking: Chunking = "content"
    ) -> None:
        self.store = store
        self.blob_dir = blob_dir
        self.tmp_dir = tmp_dir
        self.chunk_size = chunk_size
        self.chunking: Chunking = chunking
        self._fetching = threading.Lock()
        blob_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.blob_dir / blob_relpath(sha256)

    def share_local_blobs(self) -> int:
        """Give the store the bytes of registered blobs it lacks and this host has (pushed before the store kept
        them: a hub upgraded from a release that needed a shared blob directory); returns how many."""
        shared = 0
        for sha256 in self.store.unshared_blobs():
            path = self.blob_path(sha256)
            if not path.exists():
                continue
            with path.open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != sha256:  # never hand the others a bad copy
                    self.set_aside(sha256, "found while copying it into the store")
                    continue
            self.store.share_blob(sha256, path)
            shared += 1
        if shared:
            log.info(
                "registry: %d blob(s) of this host's blob directory copied into the store for other replicas", shared
            )
        return shared

    def _unreachable(self) -> Callable[[str], bool]:
        """Whether a blob has no copy this host can have: not here, and not in the store (on SQLite it keeps none;
        on PostgreSQL one found bad is deleted). A replica fetches from the store what it lacks (`local_blob`)."""
        unshared = set(self.store.unshared_blobs()) if self.store.shares_blobs else None
        return lambda sha256: not self.blob_path(sha256).exists() and (unshared is None or sha256 in unshared)

    def missing_blobs(self) -> dict[str, list[str]]:
        """Registered blobs that no copy of can be had (`_unreachable`), with the versions that name them: they
        cannot be served until their files are pushed again."""
        unreachable = self._unreachable()
        missing: dict[str, list[str]] = {}
        for mv in self.store.list_model_versions():
            if unreachable(mv.sha256):
                missing.setdefault(mv.sha256, []).append(f"{mv.name}:{mv.version}")
        if missing:
            names = ", ".join(v for versions in missing.values() for v in versions)
            log.error(
                "registry: %d blob(s) are registered but missing from %s (moved to corrupt/, or lost with a disk), "
                "so devices cannot fetch them: push the model files again (%s)", len(missing), self.blob_dir,
                names[:500],
            )  # fmt: skip
        return missing

    def local_blob(self, sha256: str) -> Path:
        """The blob's file on this host, copied from the store first if only the store has it (a replica on
        another host took it in).

        Raises:
            FileNotFoundError: neither this host nor the store has it.
            OSError: the store's copy does not match the digest (nothing is kept), or the disk failed.
        """
        path = self.blob_path(sha256)
        if path.exists():
            return path
        with self._fetching:
            if path.exists():
                return path
            tmp = self.tmp_dir / f"fetch-{uuid.uuid4().hex}"
            digest = hashlib.sha256()
            try:
                with tmp.open("wb") as f:

                    def out(data: bytes) -> None:
                        digest.update(data)
                        f.write(data)

                    if not self.store.copy_blob(sha256, out):
                        raise FileNotFoundError(f"blob {sha256} is neither in {self.blob_dir} nor in the store")
                    if digest.hexdigest() != sha256:
                        self._forget_store_copy(sha256)
                        raise OSError(errno.EIO, f"the store's copy of blob {sha256} does not match its digest")
                    f.flush()
                    os.fsync(f.fileno())
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def receive(self, blocks: Iterable[bytes], *, max_bytes: int) -> Path:
        """Stream `blocks` into a new temporary file; TooLarge (file removed) beyond `max_bytes`."""
        path = self.tmp_dir / f"upload-{uuid.uuid4().hex}.onnx"
        size = 0
        try:
            with path.open("wb") as f:
                for block in blocks:
                    size += len(block)
                    if size > max_bytes:
                        raise TooLarge(f"upload exceeds the {max_bytes}-byte limit")
                    f.write(block)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> None:
        """Remove abandoned uploads."""
        cutoff = time.time() - older_than_s
        for p in self.tmp_dir.glob("upload-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    def push(
        self, upload: Path, descriptor: dict[str, Any] | ModelDescriptor, *, actor: str, filename: str | None = None
    ) -> PushResult:
        """Validate the uploaded file against its description and register it. The upload file is consumed.

        `filename` is the client's name of the file, used in error messages instead of the temporary name.

        Raises:
            InvalidModel: the description or the file fails validation (the reason is in the message).
            Conflict: the name and version exist with other bytes.
        """
        # onnx and onnxruntime (a third of the hub's start-up imports) load with the first push, not with the hub
        from models.validate import validate  # noqa: PLC0415

        try:
            try:
                if not isinstance(descriptor, ModelDescriptor):  # depth and finite numbers before anything walks it
                    check_json(descriptor, where="descriptor")
                d = descriptor if isinstance(descriptor, ModelDescriptor) else ModelDescriptor.from_json(descriptor)
                report = validate(upload, d)
                check_json(report.descriptor.to_json(), where="descriptor")  # it travels in signed desired states
            except ValueError as e:
                raise InvalidModel(str(e)) from e
            except ModelError as e:
                raise InvalidModel(str(e).replace(upload.name, filename or "the upload")) from e
            existing = self.store.get_model_version(d.name, d.version)
            dest = self.blob_path(report.sha256)
            if existing is not None and existing.sha256 == report.sha256:
                return PushResult(existing, created=False, restored=self._restore(upload, dest, existing, actor))
            manifest = plan_file(upload, self.chunk_size, chunking=self.chunking)
            ref = ModelRef(name=d.name, version=d.version, task=d.task.value, blob=manifest,
                           descriptor=report.descriptor.to_json())  # fmt: skip
            size = desired_state_bytes([DesiredModel(model=ref)])
            if not fits(size):  # agents would refuse every desired state naming it
                raise InvalidModel(too_large_message(size, f"a desired state naming {d.name}:{d.version}"))
            if not dest.exists():
                self._install(upload, dest)
            mv = ModelVersion(
                name=d.name, version=d.version, task=d.task.value, sha256=report.sha256, size=report.size,
                descriptor=report.descriptor.to_json(), manifest=manifest.model_dump(mode="json"),
                created_at=time.time(), created_by=actor,
            )  # fmt: skip
            try:
                stored = self.store.add_model_version(mv, content=dest)
            except BaseException:
                if self.store.blob_manifest(report.sha256) is None:  # no other version holds these bytes
                    dest.unlink(missing_ok=True)
                raise
            self.store.add_event(
                time.time(), actor, "model.push", f"model/{d.name}:{d.version}",
                {"sha256": report.sha256, "size": report.size, "opset": report.opset,
                 **({"ignored_outputs": report.ignored_outputs} if report.ignored_outputs else {})},
            )  # fmt: skip
            return PushResult(stored, created=True)
        finally:
            upload.unlink(missing_ok=True)

    def _restore(self, upload: Path, dest: Path, mv: ModelVersion, actor: str) -> bool:
        """A push of a version's own bytes (`upload`, validated) puts back what is missing of them: this host's
        file (set aside as corrupt, or lost with a disk) and the store's copy (deleted when found bad); whether
        it put anything back (a replica's file alone is only a cache where the store keeps the bytes)."""
        local = not dest.exists()
        if local:
            self._install(upload, dest)
        stored = self.store.share_blob(mv.sha256, dest if local else upload)  # one indexed lookup when kept
        if stored or (local and not self.store.shares_blobs):
            where = " and ".join(w for w, done in (("this host", local), ("the store", stored)) if done)
            log.warning("registry: blob %s of %s:%s put back in %s from a push of the same file", mv.sha256,
                        mv.name, mv.version, where)  # fmt: skip
            self.store.add_event(time.time(), actor, "blob.restore", f"blob/{mv.sha256}",
                                 {"model": f"{mv.name}:{mv.version}", "host": local, "store": stored})  # fmt: skip
            return True
        return False

    @staticmethod
    def _install(upload: Path, dest: Path) -> None:
        """Make the validated upload the blob's file on this host (durable before it is named)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with upload.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(upload, dest)

    def _forget_store_copy(self, sha256: str) -> None:
        """The store's copy of a blob went bad: delete it, so that it is stored anew from a good file (a push of
        it, or a replica starting with one) rather than fetched and refused by every replica that lacks it."""
        log.error(
            "registry: the store's copy of blob %s does not match its digest: deleted from the store; a replica "
            "holding a good copy stores it again at its start, or push the model file again", sha256,
        )  # fmt: skip
        try:
            self.store.forget_blob_copy(sha256)
            self.store.add_event(time.time(), "hub", "blob.corrupt", f"blob/{sha256}",
                                 {"detail": "the store's copy", "store_copy": False})  # fmt: skip
        except Exception as e:  # the database is away: the copy is refused again at the next fetch
            log.warning("registry: cannot delete the store's bad copy of blob %s: %s", sha256, e)

    def set_aside(self, sha256: str, detail: str) -> None:
        """Move this host's copy of blob `sha256`, found not to match its digest (`detail` says where), out of the
        way to `blob_dir/corrupt/`, so it is never served again: the next `local_blob` fetches the store's copy
        (checked) where the store keeps one, and where it does not (SQLite) a push of the same file puts it back.
        """
        aside = self.blob_dir / "corrupt" / sha256
        with self._fetching:
            try:
                aside.parent.mkdir(exist_ok=True)
                os.replace(self.blob_path(sha256), aside)
            except FileNotFoundError:
                return  # set aside already
        shared = self.store.shares_blobs
        log.error(
            "registry: this host's copy of blob %s does not match its digest (%s): moved to %s; %s", sha256, detail,
            aside, "the store's copy is fetched instead" if shared else "push the model file again to restore it",
        )  # fmt: skip
        try:
            self.store.add_event(time.time(), "hub", "blob.corrupt", f"blob/{sha256}",
                                 {"detail": detail, "moved_to": str(aside), "store_copy": shared})  # fmt: skip
        except Exception as e:  # the database is away: the log line above says it
            log.warning("registry: cannot record the corrupt copy of blob %s: %s", sha256, e)

    def get(self, name: str, version: str) -> ModelVersion:
        """A version, or NotFound."""
        mv = self.store.get_model_version(name, version)
        if mv is None:
            raise NotFound(self._missing(name, version))
        return mv

    def _missing(self, name: str, version: str | None) -> str:
        """What to say about a model (version) that is not registered: the versions it has, or similar names."""
        versions = sorted((v.version for v in self.store.list_model_versions(name)), key=version_key, reverse=True)
        if versions and version is not None:
            listed = ", ".join(versions[:12]) + (", ..." if len(versions) > 12 else "")
            return f"model {name} has no version {version}; its versions: {listed}"
        names = sorted({v.name for v in self.store.list_model_versions()})
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        said = f"no model named {name}" + (f": did you mean {close[0]}?" if close else "")
        return said + (f" (models: {', '.join(names[:12])})" if names else " (none pushed yet)")

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of one model when `name` is given; NotFound if it has none)."""
        out = self.store.list_model_versions(name)
        if name is not None and not out:
            raise NotFound(self._missing(name, None))
        return out

    def delete(self, name: str, version: str, *, actor: str) -> None:
        """Delete a version; Conflict while a device still wants it, NotFound if absent."""
        mv = self.get(name, version)
        if self.store.delete_model_version(name, version):
            self.blob_path(mv.sha256).unlink(missing_ok=True)
        self.store.add_event(time.time(), actor, "model.delete", f"model/{name}:{version}", {"sha256": mv.sha256})

    def servable(self, name: str, version: str) -> ModelVersion:
        """A version whose bytes this hub can send: NotFound when not registered, Conflict when no copy of its
        blob can be had (set aside as corrupt or lost, and not in the store: a deploy would leave devices
        wanting)."""
        mv = self.get(name, version)
        if self._unreachable()(mv.sha256):
            raise Conflict(
                f"model {name}:{version} cannot be sent: this hub has no copy of its bytes (blob {mv.sha256[:12]} "
                f"was set aside as corrupt or lost); push its file again: edgefleet model push FILE"
            )
        return mv

    def model_ref(self, name: str, version: str) -> ModelRef:
        """The ModelRef an agent needs for this version (its manifest and description)."""
        return self.ref(self.get(name, version))

    @staticmethod
    def ref(mv: ModelVersion) -> ModelRef:
        """The ModelRef of a version already read (`get`, `servable`)."""
        return ModelRef(
            name=mv.name,
            version=mv.version,
            task=mv.task,
            blob=BlobManifest.model_validate(mv.manifest),
            descriptor=mv.descriptor,
        )

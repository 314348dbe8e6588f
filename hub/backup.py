"""`edgefleet hub backup`: an online backup of a hub's data directory that is itself a data directory.

What a hub cannot be rebuilt without: the store (SQLite: copied as one consistent snapshot while the hub
writes, `hub.store.backup`; PostgreSQL: backed up with the operator's own tools), the signing key every
device pins (lost, every device must be enrolled again), the hub's broker account (an external broker has
its hash installed), the development TLS files when `hub init --tls` made them (devices pin that CA), and the
model blobs (immutable, named by their sha256: each is hashed once, as it is copied, and a copy that does not
match its name is left out). Left out on purpose: the local broker's directory (its password and ACL files
are written again from the registry at start, and the hub republishes every desired state when it
connects), temporary files, lock files and blobs set aside as corrupt.

The destination is laid out as a data directory, so restoring is `hub serve --data-dir DEST` (or copying
the folder back). `backup-manifest.json`, written last, lists every file with its sha256 and size: a folder
without it is an unfinished backup, and `check_backup` re-reads a backup against it.

The manifest also records the hub's instance id, which names its broker sessions (`edgefleet-hub-<id>`). A hub
started on a restored copy whose database still holds that id takes a new one first (`restored_from`, used by
`hub.runtime`): a copy started while the original still runs (a restore test, a migration, a staging copy) on
the same broker would otherwise take over the original's session, and the two would kick each other off the
broker at every reconnect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fleet.files import atomic_write, file_digest, fsync_dir
from fleet.signing import HubSigningKey
from hub.acl import HUB_ACCOUNT_FILE
from hub.errors import BackupFailed, BackupRefused, NotInitialised
from hub.registry import blob_relpath
from hub.settings import BLOB_DIR, HubSettings
from hub.store import Database
from hub.store.backup import backup_sqlite, read_meta

MANIFEST_FILE = "backup-manifest.json"
FORMAT = 1
_BLOCK = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class BackupReport:
    """What a backup holds (the manifest's content) and what it could not include."""

    directory: Path
    database: str  # "sqlite" (hub.db included) or "postgresql" (not included)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> sha256, size
    blobs: dict[str, int] = field(default_factory=dict)  # sha256 -> size
    missing_blobs: list[str] = field(default_factory=list)  # named by the database, absent from the data dir
    corrupt_blobs: list[str] = field(default_factory=list)  # present, but their bytes do not match their name
    public_key: str = ""
    instance_id: str | None = None  # the backed-up hub's: a hub started on the copy takes a new one (see restored)

    def manifest(self) -> dict[str, Any]:
        try:
            release = version("edgefleet")
        except PackageNotFoundError:
            release = "unknown"
        return {
            "format": FORMAT,
            "edgefleet_version": release,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "database": self.database,
            "signing_public_key": self.public_key,
            "instance_id": self.instance_id,
            "files": self.files,
            "blobs": self.blobs,
            "missing_blobs": self.missing_blobs,
            "corrupt_blobs": self.corrupt_blobs,
        }


def check_destination(dest: Path, data_dir: Path) -> None:
    """Refuse (BackupRefused) a destination that is not an empty, writable folder outside the data directory;
    create it when it does not exist. Runs before anything is copied."""
    target, source = dest.resolve(), data_dir.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise BackupRefused(f"{dest} overlaps the data directory {data_dir}: back up to a folder outside it")
    if target.exists() and not target.is_dir():
        raise BackupRefused(f"{dest} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise BackupRefused(f"{dest} is not empty: back up to a new or empty folder (nothing was copied)")
    probe = target / ".edgefleet-write-test"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BackupRefused(f"cannot write to {dest}: {e.strerror or e}") from e


def _check_source(settings: HubSettings) -> None:
    s = settings
    if not s.key_path.exists():
        raise NotInitialised(f"{s.data_dir} is not a hub's data directory (no {s.key_path.name}): nothing to back up")
    if s.database_url is None and not s.db_path.exists():
        raise NotInitialised(f"{s.data_dir} is not a hub's data directory (no {s.db_path.name}): nothing to back up")


def _copy(source: Path, dest: Path, mode: int) -> tuple[str, int]:
    """Copy a file, hashing its bytes on the way (one read); returns (sha256, size) of what was written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with source.open("rb") as f, os.fdopen(fd, "wb") as out:
        while block := f.read(_BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dest, mode)  # exactly, whatever the umask
    return digest.hexdigest(), size


def _blob_files(blob_dir: Path) -> Iterator[tuple[str, Path]]:
    """(sha256, path) of every blob in the registry's layout `blobs/<first two hex digits>/<sha256>`; the
    `corrupt/` folder and stray files are not blobs."""
    if not blob_dir.is_dir():
        return
    for sub in sorted(blob_dir.iterdir()):
        if len(sub.name) != 2 or not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if _DIGEST.match(path.name) and path.name.startswith(sub.name) and path.is_file():
                yield path.name, path


def backup_hub(settings: HubSettings, dest: Path, *, on_step: Callable[[str], None] | None = None) -> BackupReport:
    """Back up the hub of `settings` (running or not) into the new or empty folder `dest`.

    Args:
        on_step: told, in a few words, what is being copied (the CLI prints it).

    Raises:
        NotInitialised: the data directory holds no hub.
        BackupRefused: `dest` is not an empty, writable folder outside the data directory (nothing copied).
        BackupFailed: the database copy failed or did not pass its integrity check, or a file could not be read or
            written; `dest` is removed when this call created it, and otherwise left (the message names it).
    """
    s = settings
    say = on_step or (lambda _text: None)
    _check_source(s)
    try:
        public_key = HubSigningKey.load(s.key_path).public.to_text()
    except ValueError as e:
        raise BackupFailed(f"the signing key {s.key_path} does not load: {e}") from e
    created = not dest.exists()
    check_destination(dest, s.data_dir)
    try:
        return _copy_all(s, dest, public_key, say)
    except (BackupFailed, OSError) as e:
        why = e.message if isinstance(e, BackupFailed) else f"{e.strerror or e} ({e.filename or dest})"
        if created:  # the folder is this command's own: remove it rather than leave an unfinished backup
            shutil.rmtree(dest, ignore_errors=True)
            if not dest.exists():
                raise BackupFailed(
                    f"the backup did not finish: {why}; {dest}, which it had created, was removed"
                ) from e
        raise BackupFailed(
            f"the backup did not finish: {why}; {dest} holds an unfinished backup (no {MANIFEST_FILE}): "
            "delete what is in it before trying again"
        ) from e


def _copy_all(s: HubSettings, dest: Path, public_key: str, say: Callable[[str], None]) -> BackupReport:
    report = BackupReport(dest, "postgresql" if s.database_url else "sqlite", public_key=public_key)
    referenced: list[str] | None = None
    if s.database_url is None:
        say("database: a consistent copy of hub.db")
        referenced = backup_sqlite(s.db_path, dest / s.db_path.name)
        sha256, size = file_digest(dest / s.db_path.name)
        report.files[s.db_path.name] = {"sha256": sha256, "size": size}
    secrets = [s.key_path, s.data_dir / HUB_ACCOUNT_FILE]
    if s.tls_dir.is_dir():
        secrets += sorted(p for p in s.tls_dir.rglob("*") if p.is_file())
    say("signing key, broker account" + (", TLS files" if s.tls_dir.is_dir() else ""))
    for path in secrets:
        if not path.exists():
            continue
        relative = path.relative_to(s.data_dir)
        public = path.parent == s.tls_dir and "key" not in path.name  # certificates; private keys stay 0600
        mode = 0o644 if public else 0o600
        sha256, size = _copy(path, dest / relative, mode)
        report.files[str(relative)] = {"sha256": sha256, "size": size}
    say("model blobs")
    blob_dest = dest / BLOB_DIR
    for sha256, path in _blob_files(s.blob_dir):
        target = blob_dest / blob_relpath(sha256)
        got, size = _copy(path, target, 0o644)
        if got != sha256:
            target.unlink()
            report.corrupt_blobs.append(sha256)
            continue
        report.blobs[sha256] = size
    for folder in {blob_dest, *(p.parent for p in blob_dest.rglob("*") if p.is_file())}:
        fsync_dir(folder)
    # the id the copy's database holds: a hub started on this folder while its database still holds it is a
    # restored copy. SQLite: the snapshot's. PostgreSQL: the live database's, when it answers (its own backup is
    # the operator's, and a backup of the rest must not depend on reaching it; without the id a restored copy
    # keeps the original's, as before)
    if s.database_url is None:
        report.instance_id = read_meta(Database.sqlite(dest / s.db_path.name), "instance_id")
    else:
        with contextlib.suppress(BackupFailed):
            report.instance_id = read_meta(s.database, "instance_id")
    if referenced is not None:
        report.missing_blobs = [sha for sha in referenced if sha not in report.blobs]
    atomic_write(dest / MANIFEST_FILE, json.dumps(report.manifest(), indent=2).encode() + b"\n")
    return report


def read_manifest(directory: Path) -> dict[str, Any]:
    """The backup's manifest; ValueError (saying why) when it is absent, unreadable or not a manifest."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"no readable {MANIFEST_FILE} in {directory} ({e}): the backup did not finish") from e
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), dict) for k in ("files", "blobs")):
        raise ValueError(f"{directory / MANIFEST_FILE} is not a backup manifest (no files and blobs tables)")
    return manifest


def restored_from(data_dir: Path) -> tuple[str, str] | None:
    """(instance id, when taken) of the backup that `data_dir` was restored from, when it holds a backup's
    manifest naming one; None otherwise (a data directory `hub init` made, or a backup without the id)."""
    try:
        manifest = read_manifest(data_dir)
    except ValueError:
        return None
    instance_id = manifest.get("instance_id")
    return (instance_id, str(manifest.get("created_at"))) if isinstance(instance_id, str) else None


def check_backup(directory: Path) -> list[str]:
    """Re-read a backup against its manifest; returns what is wrong (empty: the backup is whole)."""
    try:
        manifest = read_manifest(directory)
    except ValueError as e:
        return [str(e)]
    blobs = {
        str(BLOB_DIR / blob_relpath(sha)): {"sha256": sha, "size": size} for sha, size in manifest["blobs"].items()
    }
    expected = {**manifest["files"], **blobs}
    problems = []
    for relative, want in sorted(expected.items()):
        path = directory / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif file_digest(path) != (want.get("sha256"), want.get("size")):
            problems.append(f"{relative}: its bytes changed since the backup")
    return problems

"""Replicas on separate hosts share blobs through the store, not a file system (PostgreSQL), on both backends.

A replica that never saw a push serves the blob from the store's copy, fetched once into its own blob directory
and checked against the digest; a copy that does not match is refused and nothing is kept; deleting the last
version of a blob deletes the store's copy. With SQLite (one machine) the blob directory is the only copy.
A replica's own copy that goes bad is never served: the chunk server checks every chunk it reads.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleet.chunks import ChunkFrame, decode_frame
from fleet.messages import BlobManifest, Want
from fleet.topics import Topics
from hub.errors import Conflict
from hub.registry import Registry
from hub.settings import TransferSettings
from hub.store import Database, SqlStore, open_store
from hub.store import sql as store_sql
from hub.transfer import ChunkServer
from models.descriptor import ModelDescriptor
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for


@pytest.fixture
def store(database: Database) -> Iterator[SqlStore]:
    s = open_store(database, telemetry_process=False)
    yield s
    s.close()


def _replica(store: SqlStore, root: Path) -> Registry:
    """What one hub replica on its own host has: its own blob and temporary directories, the shared store."""
    return Registry(store, root / "blobs", root / "tmp", chunk_size=16 * 1024)


def _model(tmp_path: Path) -> tuple[Path, ModelDescriptor]:
    """The sample classifier's file and description."""
    (tmp_path / "models").mkdir(exist_ok=True)
    return classifier_versions(tmp_path / "models", versions=("1.0.0",))["1.0.0"]


def _push(registry: Registry, path: Path, desc: ModelDescriptor, tmp_path: Path) -> str:
    """Push a copy of `path` (the upload is consumed) through `registry`; the blob's digest."""
    upload = tmp_path / f"upload-{desc.version}.onnx"
    shutil.copyfile(path, upload)
    return registry.push(upload, desc, actor="test").version.sha256


def test_a_replica_that_never_saw_a_push_serves_the_blob_from_the_stores_copy(
    store: SqlStore, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_sql, "BLOB_PART_BYTES", 4096)  # several parts, and a last short one
    path, desc = _model(tmp_path)
    blob = path.read_bytes()
    assert len(blob) % 4096 and len(blob) > 3 * 4096
    a, b = _replica(store, tmp_path / "a"), _replica(store, tmp_path / "b")
    sha = _push(a, path, desc, tmp_path)
    assert a.local_blob(sha).read_bytes() == blob
    if not store.shares_blobs:  # one machine: its blob directory is the only copy
        assert not store.copy_blob(sha, lambda _d: None)
        with pytest.raises(FileNotFoundError, match="neither in"):
            b.local_blob(sha)
        return

    got = b.local_blob(sha)
    assert got == b.blob_path(sha) and got.read_bytes() == blob
    got.unlink()  # gone from the cache (a disk replaced): fetched again
    assert b.local_blob(sha).read_bytes() == blob

    conn = database.connect()
    parts = "SELECT count(*) FROM blob_parts WHERE sha256 = ?"
    try:  # the store's copy goes bad: refused, nothing kept, the temporary file removed
        conn.execute("UPDATE blob_parts SET data = ? WHERE sha256 = ? AND part = 1", (b"\0" * 4096, sha), binary=True)
        c = _replica(store, tmp_path / "c")
        with pytest.raises(OSError, match="does not match its digest"):
            c.local_blob(sha)
        assert not c.blob_path(sha).exists() and not list((tmp_path / "c" / "tmp").iterdir())
        # ... and deleted from the store: no replica fetches it again, none deploys it, a push stores it anew
        assert conn.execute(parts, (sha,)).fetchone()[0] == 0 and store.unshared_blobs() == [sha]
        with pytest.raises(Conflict, match="push its file again"):
            c.servable("cls", "1.0.0")
        assert a.servable("cls", "1.0.0").sha256 == sha  # a still has its own copy
        assert _push_again(c, path, desc, tmp_path) == (False, True)
        assert store.unshared_blobs() == [] and _replica(store, tmp_path / "e").local_blob(sha).read_bytes() == blob
        a.delete("cls", "1.0.0", actor="test")  # the last version of the blob: its copy goes with it
        assert conn.execute(parts, (sha,)).fetchone()[0] == 0
    finally:
        conn.close()
    with pytest.raises(FileNotFoundError):
        _replica(store, tmp_path / "d").local_blob(sha)


def test_a_blob_two_versions_share_is_stored_once_and_kept_until_the_last_goes(
    store: SqlStore, database: Database, tmp_path: Path
) -> None:
    path, desc = _model(tmp_path)
    a, b = _replica(store, tmp_path / "a"), _replica(store, tmp_path / "b")
    for version, registry in (("1.0.0", a), ("1.0.1", b)):  # the same bytes pushed as two versions, on two replicas
        sha = _push(registry, path, desc.model_copy(update={"version": version}), tmp_path)
    if not store.shares_blobs:
        return
    conn = database.connect()
    try:
        parts = conn.execute("SELECT count(*) FROM blob_parts WHERE sha256 = ?", (sha,)).fetchone()[0]
        assert parts == 1  # one part per 8 MiB: stored once, not once per version
        a.delete("cls", "1.0.0", actor="test")
        assert _replica(store, tmp_path / "c").local_blob(sha).read_bytes() == path.read_bytes()
        b.delete("cls", "1.0.1", actor="test")
        assert conn.execute("SELECT count(*) FROM blob_parts WHERE sha256 = ?", (sha,)).fetchone()[0] == 0
    finally:
        conn.close()


def test_blobs_pushed_before_the_store_kept_them_are_shared_by_the_replica_that_has_them(
    store: SqlStore, tmp_path: Path
) -> None:
    path, desc = _model(tmp_path)
    a, b = _replica(store, tmp_path / "a"), _replica(store, tmp_path / "b")
    sha = _push(a, path, desc, tmp_path)
    if not store.shares_blobs:
        assert store.unshared_blobs() == [] and a.share_local_blobs() == 0
        return
    store.forget_blob_copy(sha)  # as a hub of an earlier release left it (a shared directory)
    assert store.unshared_blobs() == [sha]
    with pytest.raises(FileNotFoundError):
        b.local_blob(sha)
    assert b.share_local_blobs() == 0  # b does not have it either
    assert a.share_local_blobs() == 1  # what a hub does at start
    assert store.unshared_blobs() == [] and a.share_local_blobs() == 0
    assert b.local_blob(sha).read_bytes() == path.read_bytes()


def test_a_bad_copy_is_never_copied_into_the_store_and_a_push_of_the_file_stores_it(
    store: SqlStore, tmp_path: Path
) -> None:
    path, desc = _model(tmp_path)
    a = _replica(store, tmp_path / "a")
    sha = _push(a, path, desc, tmp_path)
    if not store.shares_blobs:
        assert store.unshared_blobs() == [] and a.share_local_blobs() == 0
        return
    store.forget_blob_copy(sha)  # as a hub of an earlier release left it (a shared directory)
    bad = bytearray(path.read_bytes())
    bad[100] ^= 0x01  # ... and the upgraded replica's copy went bad meanwhile
    a.blob_path(sha).write_bytes(bad)
    assert a.share_local_blobs() == 0 and store.unshared_blobs() == [sha]  # not handed to the other replicas
    assert (tmp_path / "a" / "blobs" / "corrupt" / sha).read_bytes() == bad
    assert a.missing_blobs() == {sha: ["cls:1.0.0"]}
    assert _push_again(a, path, desc, tmp_path) == (False, True)  # this host's file and the store's copy
    assert a.blob_path(sha).read_bytes() == path.read_bytes() and store.unshared_blobs() == []
    assert _replica(store, tmp_path / "b").local_blob(sha).read_bytes() == path.read_bytes()
    (event,) = store.list_events(since=None, until=None, subject=f"blob/{sha}", action="blob.restore", limit=5)
    assert event.details == {"model": "cls:1.0.0", "host": True, "store": True}


def test_two_replicas_storing_the_same_blob_at_once_keep_one_copy_and_both_succeed(
    store: SqlStore, database: Database, tmp_path: Path
) -> None:
    """Replicas upgraded together start together: each copies the blobs of the shared directory they still
    mount into the store. The second one's insert waits for the first one's transaction, then adds nothing."""
    path, desc = _model(tmp_path)
    a = _replica(store, tmp_path / "a")
    sha = _push(a, path, desc, tmp_path)
    if not store.shares_blobs:
        return
    other = open_store(database, telemetry_process=False)  # the second replica's own connections
    first = database.connect()
    try:
        first.execute("DELETE FROM blob_parts")
        first.begin()  # the first replica is half-way through storing it
        first.execute("INSERT INTO blob_parts VALUES (?, 0, ?)", (sha, path.read_bytes()), binary=True)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = ?"
        probe = database.connect()
        try:
            with ThreadPoolExecutor(1) as pool:
                second = pool.submit(other.share_blob, sha, a.blob_path(sha))
                name = probe.execute("SELECT current_database()").fetchone()[0]
                wait_for(lambda: probe.execute(waiting, (name,)).fetchone()[0] == 1, timeout=30)  # on the first's row
                first.commit()
                second.result(timeout=30)  # a unique violation before the insert said ON CONFLICT DO NOTHING
        finally:
            probe.close()
        assert first.execute("SELECT count(*) FROM blob_parts WHERE sha256 = ?", (sha,)).fetchone()[0] == 1
    finally:
        first.close()
        other.close()
    assert _replica(store, tmp_path / "c").local_blob(sha).read_bytes() == path.read_bytes()


def _serve_all(server: ChunkServer, sent: list[ChunkFrame], sha: str, count: int, now: list[float]) -> list[int]:
    """Want every chunk of `sha` as one device, step the chunk server until it has nothing left to do, and check
    what it published (into `sent`, emptied first) against the signed manifest; the indexes published."""
    sent.clear()
    assert server.want(Want(device_id="cam-1", sha256=sha, missing=[(0, count)]))
    now[0] += 1.0  # past the round interval: the pass starts
    for _ in range(4 * count):
        if server.pending_chunks == 0:
            break
        server.step()
    assert server.pending_chunks == 0
    manifest = server.manifest(sha)
    assert manifest is not None
    assert all(hashlib.sha256(f.data).hexdigest() == manifest.chunks[f.index] for f in sent)  # none bad went out
    return sorted(f.index for f in sent)


def test_a_replicas_copy_that_went_bad_is_never_served_and_is_fetched_again_or_pushed_back(
    store: SqlStore, tmp_path: Path
) -> None:
    path, desc = _model(tmp_path)
    blob = path.read_bytes()
    a = _replica(store, tmp_path / "a")
    sha = _push(a, path, desc, tmp_path)
    raw = store.blob_manifest(sha)
    assert raw is not None
    manifest = BlobManifest.model_validate(raw)
    assert manifest.count >= 4
    now = [1000.0]
    sent: list[ChunkFrame] = []
    server = ChunkServer(
        store, a.local_blob, Topics("t/v1"), lambda _topic, frame: sent.append(decode_frame(frame)),
        TransferSettings(window_chunks=0), set_aside=a.set_aside, clock=lambda: now[0],
    )  # fmt: skip
    bad = bytearray(blob)
    bad[manifest.offset(2) + 7] ^= 0x01  # one bit of chunk 2 flips on this host's disk
    a.blob_path(sha).write_bytes(bad)

    served = _serve_all(server, sent, sha, manifest.count, now)
    assert server.stats.corrupt_chunks == 1
    assert (tmp_path / "a" / "blobs" / "corrupt" / sha).read_bytes() == bad  # kept aside for a look, never served
    (event,) = store.list_events(since=None, until=None, subject=f"blob/{sha}", action="blob.corrupt", limit=5)
    assert "chunk 2 " in event.details["detail"] and event.details["store_copy"] == store.shares_blobs
    if store.shares_blobs:  # the store's checked copy took its place, and the pass went on
        assert served == list(range(manifest.count))
        assert a.blob_path(sha).read_bytes() == blob and server.stats.read_errors == 0
        return

    # one machine: no other copy; what was left of the pass is dropped, not tried chunk by chunk
    assert served == [0, 1] and server.stats.read_errors == 1
    assert not a.blob_path(sha).exists()
    assert a.missing_blobs() == {sha: ["cls:1.0.0"]}  # what a hub starting now logs
    with pytest.raises(Conflict, match="push its file again"):  # what a deploy or a rollout of it is told
        a.servable("cls", "1.0.0")
    assert _serve_all(server, sent, sha, manifest.count, now) == [] and server.stats.read_errors == 2
    assert _push_again(a, path, desc, tmp_path) == (False, True)  # not a new version: its bytes put back
    assert a.blob_path(sha).read_bytes() == blob and a.missing_blobs() == {}
    assert a.servable("cls", "1.0.0").sha256 == sha
    assert store.list_events(since=None, until=None, subject=f"blob/{sha}", action="blob.restore", limit=5)
    assert _serve_all(server, sent, sha, manifest.count, now) == list(range(manifest.count))


def _push_again(registry: Registry, path: Path, desc: ModelDescriptor, tmp_path: Path) -> tuple[bool, bool]:
    """Push a copy of `path` again: whether a new version was created, and whether the blob was put back."""
    upload = tmp_path / "again.onnx"
    shutil.copyfile(path, upload)
    result = registry.push(upload, desc, actor="test")
    return result.created, result.restored

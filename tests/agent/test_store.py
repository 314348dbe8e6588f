"""The model store on real files: pointers, crash states, rollback, garbage collection, readers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.errors import StoreError
from agent.store import ModelStore, StoredModel
from fleet.messages import AppliedModel


def _blob(store: ModelStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.blob_path(sha).write_bytes(data)
    return sha


def _record(sha: str, version: str) -> StoredModel:
    return StoredModel(
        sha256=sha,
        model=AppliedModel(name="m", version=version, sha256=sha),
        task="classification",
        descriptor={"name": "m", "version": version},
    )


def test_promote_keeps_previous_and_rollback_swaps(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    assert store.active() is None and store.previous() is None
    a, b = _blob(store, b"a" * 10), _blob(store, b"b" * 10)
    assert store.promote(_record(a, "1.0.0")) is None
    prev = store.promote(_record(b, "2.0.0"))
    assert prev is not None and prev.model.version == "1.0.0"
    reader = ModelStore(tmp_path)  # another process's view: read-only, no directories created
    assert reader.active().model.version == "2.0.0"  # type: ignore[union-attr]
    assert reader.previous().model.version == "1.0.0"  # type: ignore[union-attr]
    store.promote(_record(a, "1.0.0"))  # rollback
    assert store.active().sha256 == a and store.previous().sha256 == b  # type: ignore[union-attr]
    store.promote(_record(a, "1.0.0"))  # re-activating the active model keeps previous
    assert store.previous().sha256 == b  # type: ignore[union-attr]


def test_crash_between_pointer_writes_leaves_a_loadable_state(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    a, b = _blob(store, b"a"), _blob(store, b"b")
    store.promote(_record(a, "1.0.0"))
    # what a crash after previous.json and before active.json leaves behind (plus a torn temporary file)
    store._write("previous", _record(a, "1.0.0"))
    (tmp_path / "active.json.tmp").write_bytes(b'{"schema_version": 1, "sha2')
    reopened = ModelStore(tmp_path, create=True)
    assert not (tmp_path / "active.json.tmp").exists()
    assert reopened.active().sha256 == a and reopened.previous().sha256 == a  # type: ignore[union-attr]
    reopened.promote(_record(b, "2.0.0"))
    assert reopened.active().sha256 == b and reopened.previous().sha256 == a  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"schema_version": 2}', b"\xff\xfe", b"x" * (2 << 20)],
    ids=["empty", "torn", "array", "future", "binary", "huge"],
)
def test_unreadable_pointer_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    store = ModelStore(tmp_path, create=True)
    (tmp_path / "active.json").write_bytes(content)
    with pytest.raises(StoreError):
        store.active()


def test_pointer_to_a_missing_blob_is_a_store_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    sha = _blob(store, b"x")
    store.promote(_record(sha, "1.0.0"))
    store.blob_path(sha).unlink()
    with pytest.raises(StoreError, match="not in"):
        store.active()
    with pytest.raises(StoreError):
        store.promote(_record(sha, "1.0.0"))


def test_collect_keeps_referenced_and_the_newest_spare_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    active, previous = _blob(store, b"active" * 100), _blob(store, b"prev" * 100)
    store.promote(_record(previous, "1.0.0"))
    store.promote(_record(active, "2.0.0"))
    spares = []
    for i in range(4):
        sha = _blob(store, bytes([i]) * 1000)
        os.utime(store.blob_path(sha), (1000 + i, 1000 + i))
        spares.append(sha)
    shadow = spares[0]
    removed = store.collect(2000, keep={shadow})
    assert set(removed) == {spares[1]}, "oldest unprotected spare goes first, until 2000 bytes remain"
    assert store.collect(0, keep={shadow}) == [spares[2], spares[3]]
    assert {p.name for p in store.blobs.iterdir()} == {active, previous, shadow}


def test_clear_active_keeps_the_model_as_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    sha = _blob(store, b"x")
    store.promote(_record(sha, "1.0.0"))
    store.clear_active()
    assert store.active() is None and store.previous().sha256 == sha  # type: ignore[union-attr]

"""The model store on real files: pointers, crash states, rollback, garbage collection, readers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from agent.errors import StoreError
from agent.store import ModelStore, ShadowPointer, StoredModel
from fleet.messages import AppliedModel
from fleet.plan import plan_bytes
from tests.support.disks import free_bytes, small_disk


def _blob(store: ModelStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.blob_path(sha).write_bytes(data)
    return sha


def _sha(p: StoredModel | None) -> str | None:
    return p.sha256 if p is not None else None


def _version(p: StoredModel | None) -> str | None:
    return p.model.version if p is not None else None


def _record(sha: str, version: str, name: str = "m") -> StoredModel:
    return StoredModel(
        sha256=sha,
        model=AppliedModel(name=name, version=version, sha256=sha),
        task="classification",
        descriptor={"name": name, "version": version},
    )


def test_promote_keeps_previous_and_rollback_swaps(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    assert store.active("m") is None and store.previous("m") is None
    a, b = _blob(store, b"a" * 10), _blob(store, b"b" * 10)
    assert store.promote(_record(a, "1.0.0")) is None
    prev = store.promote(_record(b, "2.0.0"))
    assert prev is not None and prev.model.version == "1.0.0"
    reader = ModelStore(tmp_path)  # another process's view: read-only, no directories created
    assert _version(reader.active("m")) == "2.0.0"
    assert _version(reader.previous("m")) == "1.0.0"
    store.promote(_record(a, "1.0.0"))  # rollback
    assert _sha(store.active("m")) == a and _sha(store.previous("m")) == b
    store.promote(_record(a, "1.0.0"))  # re-activating the active model keeps previous
    assert _sha(store.previous("m")) == b


def test_crash_between_pointer_writes_leaves_a_loadable_state(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    a, b = _blob(store, b"a"), _blob(store, b"b")
    store.promote(_record(a, "1.0.0"))
    # what a crash after previous.json and before active.json leaves behind (plus a torn temporary file)
    store._write("m", "previous", _record(a, "1.0.0"))
    (tmp_path / "models" / "m" / "active.json.tmp").write_bytes(b'{"schema_version": 1, "sha2')
    reopened = ModelStore(tmp_path, create=True)
    assert not (tmp_path / "models" / "m" / "active.json.tmp").exists()
    assert _sha(reopened.active("m")) == a and _sha(reopened.previous("m")) == a
    reopened.promote(_record(b, "2.0.0"))
    assert _sha(reopened.active("m")) == b and _sha(reopened.previous("m")) == a


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"schema_version": 2}', b"\xff\xfe", b"x" * (2 << 20)],
    ids=["empty", "torn", "array", "future", "binary", "huge"],
)
def test_unreadable_pointer_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    store = ModelStore(tmp_path, create=True)
    (tmp_path / "models" / "m").mkdir()
    (tmp_path / "models" / "m" / "active.json").write_bytes(content)
    with pytest.raises(StoreError):
        store.active("m")


def test_pointer_to_a_missing_blob_is_a_store_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    sha = _blob(store, b"x")
    store.promote(_record(sha, "1.0.0"))
    store.blob_path(sha).unlink()
    with pytest.raises(StoreError, match="not in"):
        store.active("m")
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
    store.clear_active("m")
    assert store.active("m") is None and _sha(store.previous("m")) == sha


def test_each_model_has_its_own_pointers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    a, b, c = _blob(store, b"a"), _blob(store, b"b"), _blob(store, b"c")
    store.promote(_record(a, "1.0.0", "det"))
    store.promote(_record(b, "1.0.0", "cls"))
    store.promote(_record(c, "2.0.0", "cls"))
    assert store.names() == ["cls", "det"]
    assert _sha(store.active("det")) == a and store.previous("det") is None
    assert _sha(store.active("cls")) == c and _sha(store.previous("cls")) == b
    assert store.referenced() == {a, b, c}
    store.forget("cls")
    assert store.names() == ["det"] and store.referenced() == {a}
    assert sorted(store.collect(0)) == sorted([b, c])
    with pytest.raises(StoreError, match="not a model name"):
        store.active("../escape")


def test_a_single_model_store_is_moved_under_its_model_name(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    a, b = _blob(store, b"a"), _blob(store, b"b")
    (tmp_path / "previous.json").write_text(_record(a, "1.0.0", "cls").model_dump_json())  # written by schema 1
    (tmp_path / "active.json").write_text(_record(b, "2.0.0", "cls").model_dump_json())
    reopened = ModelStore(tmp_path, create=True)
    assert not (tmp_path / "active.json").exists() and not (tmp_path / "previous.json").exists()
    assert _sha(reopened.active("cls")) == b and _sha(reopened.previous("cls")) == a


def test_the_shadow_pointer_names_a_candidate_its_blob_is_kept_and_bad_ones_are_store_errors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, create=True)
    active, candidate, spare = _blob(store, b"a" * 10), _blob(store, b"c" * 10), _blob(store, b"s" * 10)
    store.promote(_record(active, "1.0.0"))
    assert store.shadow("m") is None
    store.set_shadow(ShadowPointer(candidate=_record(candidate, "2.0.0"), sample_rate=0.25))
    seen = ModelStore(tmp_path).shadow("m")  # a serving pod's read-only view
    assert seen is not None and (seen.candidate.model.version, seen.sample_rate) == ("2.0.0", 0.25)
    assert store.referenced() == {active, candidate}
    assert store.collect(0) == [spare]  # the candidate's blob stays: pods load it
    with pytest.raises(StoreError, match="blob missing"):
        store.set_shadow(ShadowPointer(candidate=_record("0" * 64, "3.0.0"), sample_rate=1.0))
    path = tmp_path / "models" / "m" / "shadow.json"
    for content in (b"{", b"[]", b'{"schema_version": 1, "sample_rate": 2}', b" " * (2 << 20)):
        path.write_bytes(content)
        with pytest.raises(StoreError):
            store.shadow("m")
    other = ShadowPointer(candidate=_record(candidate, "2.0.0", name="other"), sample_rate=1.0)
    path.write_text(other.model_dump_json())
    with pytest.raises(StoreError, match="names model 'other'"):
        store.shadow("m")
    assert store.referenced() == {active}  # an unreadable pointer protects nothing, and breaks nothing
    store.clear_shadow("m")
    assert store.shadow("m") is None
    store.clear_shadow("m")  # nothing to clear is fine
    store.set_shadow(ShadowPointer(candidate=_record(candidate, "2.0.0"), sample_rate=1.0))
    store.forget("m")
    assert store.shadow("m") is None and store.names() == []


def test_collect_frees_only_the_room_asked_for_sparing_the_chunks_a_download_reuses(tmp_path: Path) -> None:
    """On a real 32 MiB ext4 disk: room for a 4 MiB blob deletes the spare blobs sharing no chunk with it, least
    recently used first, and stops once it fits; the active, previous, shadow and kept blobs never go."""
    mib = 1 << 20
    with small_disk(tmp_path) as disk:
        store = ModelStore(disk.path / "store", create=True)
        rng = np.random.default_rng(0)
        active, previous, candidate, kept = (_blob(store, rng.bytes(mib)) for _ in range(4))
        store.promote(_record(previous, "1.0.0"))
        store.promote(_record(active, "2.0.0"))
        store.set_shadow(ShadowPointer(candidate=_record(candidate, "3.0.0"), sample_rate=0.5))
        datas = [rng.bytes(4 * mib) for _ in range(3)]
        spares = []
        for i, data in enumerate(datas):  # spare blobs last used at t=1000, 2000, 3000
            sha = _blob(store, data)
            store.record_manifest(plan_bytes(data, 256 * 1024, chunking="fixed"))
            os.utime(store.blob_path(sha), (1000 * (i + 1), 1000 * (i + 1)))
            spares.append(sha)
        oldest, middle, newest = spares
        new = plan_bytes(datas[0][: 2 * mib] + rng.bytes(2 * mib), 256 * 1024, chunking="fixed")
        assert len(set(new.chunks) & set(plan_bytes(datas[0], 256 * 1024, chunking="fixed").chunks)) == 8
        assert store.blob_path(active).stat().st_mtime > 3000, "promote marks the blob used"
        disk.fill(leave=mib)
        room = 6 * mib  # one 4 MiB blob frees too little, two are enough
        removed = store.collect(2 << 30, keep={kept}, room=room, reuse=new)
        assert removed == [middle, newest], "no chunk shared with the new blob, then least recently used first"
        assert free_bytes(disk.path) >= room
        assert store.has_blob(oldest) and store.find_chunk(new.chunks[0]) is not None, "its shared chunks stay"
        assert store.collect(2 << 30, keep={kept}, room=room, reuse=new) == [], "nothing more than asked"
        assert store.collect(2 << 30, keep={kept}, room=1 << 40) == [oldest]
        assert {p.name for p in store.blobs.iterdir()} == {active, previous, candidate, kept}
        assert {p.name for p in store.manifests.iterdir()} == set()

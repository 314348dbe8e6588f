"""Cluster mode's serving pods: `edgefleet agent serve --store` follows the shared store and hot-swaps.

The agent (one process) writes the store; serving pods only read it. A model change must reach a running
`agent serve` without a restart; a bad pointer or a model that fails its golden check must leave the
current model serving.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.api import ModelRepository
from agent.follower import StoreFollower
from agent.store import ModelStore, ShadowPointer, StoredModel
from fleet.messages import AppliedModel
from tests.agent.conftest import REPO, Sample
from tests.support.broker import free_port
from tests.support.mqtt import wait_for
from tests.support.procs import stop


def _put(store: ModelStore, sample: Sample) -> StoredModel:
    data = sample.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    shutil.copyfile(sample.path, store.blob_path(sha))
    d = sample.descriptor
    return StoredModel(
        sha256=sha,
        model=AppliedModel(name=d.name, version=d.version, sha256=sha),
        task=d.task,
        descriptor=d.to_json(),
    )


def _served(repo: ModelRepository, name: str = "cls") -> str | None:
    model = repo.active_models().get(name)
    return None if model is None else model.version


def _shadowing(repo: ModelRepository, name: str = "cls") -> str | None:
    slot = repo.slots.get(name)
    model = None if slot is None else slot.shadow_model
    return None if model is None else model.version


def test_follower_swaps_and_survives_bad_pointers(tmp_path: Path, samples: dict[str, Sample]) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    slot = ModelRepository()
    follower = StoreFollower(store, slot, poll_s=0.05, warmup_runs=1)
    assert follower.check() is False and _served(slot) is None  # empty store: nothing to serve

    store.promote(_put(store, samples["v1"]))
    assert follower.check() is True and _served(slot) == "1.0.0"
    assert follower.check() is False  # unchanged pointer: no reload

    store.promote(_put(store, samples["v2"]))
    assert follower.check() is True and _served(slot) == "2.0.0"

    # a model failing its golden check: refused, 2.0.0 keeps serving, tried once per pointer change
    store.promote(_put(store, samples["bad"]))
    assert follower.check() is False and _served(slot) == "2.0.0"
    assert (error := follower.state("cls").error) is not None and "golden" in error
    assert follower.check() is False

    # hostile pointers: garbage, oversized, a blob that is missing
    active = store.root / "models" / "cls" / "active.json"
    for content in (b"{not json", b"[]", b" " * (2 << 20)):
        active.write_bytes(content)
        assert follower.check() is False and _served(slot) == "2.0.0"
        assert follower.state("cls").error is not None
    record = _put(store, samples["v1"])
    active.write_text(record.model_copy(update={"sha256": "0" * 64}).model_dump_json())
    assert follower.check() is False and _served(slot) == "2.0.0"

    active.unlink()  # the agent cleared the active model: serve nothing
    assert follower.check() is True and _served(slot) is None


def test_follower_runs_the_shadow_candidate_the_store_names(tmp_path: Path, samples: dict[str, Sample]) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    repo = ModelRepository()
    follower = StoreFollower(store, repo, warmup_runs=1)
    v1, v2 = _put(store, samples["v1"]), _put(store, samples["v2"])
    store.set_shadow(ShadowPointer(candidate=v2, sample_rate=0.5))
    assert follower.check() is False and _shadowing(repo) is None  # nothing serves: nothing to shadow
    store.promote(v1)
    assert follower.check() is True and _served(repo) == "1.0.0"
    assert _shadowing(repo) == "2.0.0"
    tally = repo.slots["cls"].shadow_tally()
    assert tally is not None and tally.candidate_version == "2.0.0"
    assert follower.check() is False  # unchanged pointers: nothing reloaded

    # a candidate failing its golden check: refused once per pointer change, 2.0.0 keeps shadowing
    store.set_shadow(ShadowPointer(candidate=_put(store, samples["bad"]), sample_rate=1.0))
    assert follower.check() is False and _shadowing(repo) == "2.0.0"
    assert follower.check() is False
    # an unreadable pointer: the shadow running stays
    (store.root / "models" / "cls" / "shadow.json").write_bytes(b"{not json")
    assert follower.check() is False and _shadowing(repo) == "2.0.0"

    store.clear_shadow("cls")
    assert follower.check() is True and _shadowing(repo) is None and _served(repo) == "1.0.0"
    store.set_shadow(ShadowPointer(candidate=v2, sample_rate=1.0))
    assert follower.check() is True and _shadowing(repo) == "2.0.0"
    store.clear_active("cls")  # the model stops: its shadow with it
    assert follower.check() is True and _served(repo) is None and _shadowing(repo) is None


def test_a_follower_serves_only_the_models_it_follows(tmp_path: Path, samples: dict[str, Sample]) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    other = samples["v2"].descriptor.model_copy(update={"name": "other"})
    store.promote(_put(store, samples["v1"]))
    store.promote(_put(store, Sample(samples["v2"].path, other)))
    every, only = ModelRepository(), ModelRepository()
    assert StoreFollower(store, every, warmup_runs=1).check() is True
    assert every.names() == ["cls", "other"] and _served(every, "other") == "2.0.0"
    assert StoreFollower(store, only, models=["other"], warmup_runs=1).check() is True
    assert only.names() == ["other"], "a pod of one model's Deployment serves that model only"


@pytest.mark.timeout(120)
def test_agent_serve_process_hot_swaps_without_restart(tmp_path: Path, samples: dict[str, Sample]) -> None:
    store = ModelStore(tmp_path / "store", create=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"PYTHONPATH": str(REPO)}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--store", str(store.root), "--port", str(port), "--poll-s", "0.1"],
        cwd=REPO, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"

    def version() -> str | None:
        try:
            r = httpx.get(f"{api}/v2/models/cls", timeout=2)
        except httpx.HTTPError:
            return None
        return str(r.json()["versions"][0]) if r.status_code == 200 else "none"

    try:
        wait_for(lambda: version() == "none", timeout=60)  # up, nothing active: ready is 503
        assert httpx.get(f"{api}/v2/health/ready", timeout=5).status_code == 503
        store.promote(_put(store, samples["v1"]))
        wait_for(lambda: version() == "1.0.0", timeout=60)
        store.promote(_put(store, samples["v2"]))
        wait_for(lambda: version() == "2.0.0", timeout=60)
        assert proc.poll() is None  # the same process: swapped in place
    finally:
        stop(proc, timeout=20)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]

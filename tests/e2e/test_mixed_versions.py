"""A hub newer than its agents (fleets upgrade gradually): a real agent process of the version before output
kind `tensors` (git rev fbaa79e, run from its own source tree) against this hub and Mosquitto.

That agent's wire model knows tasks `classification` and `detection` only, and a desired state is one signed
document: a `tensors` model in it would make the agent refuse the whole state, so none of the device's models
could update any more. The hub refuses such a deploy or rollout (422 `unsupported_task`, naming the device and
its agent) and the device's other model keeps serving and updating.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from fleet.bundle import DeviceBundle
from models.samples import build_classifier, classifier_descriptor
from tests.support.agents import AGENT_ENV, REPO, AgentProc, agent_command, agent_env
from tests.support.broker import free_port
from tests.support.hub import RunningHub
from tests.support.models import classifier_versions
from tests.support.mqtt import wait_for

BEFORE_TENSORS = "fbaa79e"  # the last main commit before output kind `tensors`


def _old_tree(dest: Path) -> Path:
    """The source tree at `BEFORE_TENSORS` (from this checkout's git history)."""
    r = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_TENSORS], check=False, capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"this checkout lacks git rev {BEFORE_TENSORS} (shallow clone?): {r.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _served_version(api: str, name: str) -> str | None:
    try:
        r = httpx.get(f"{api}/v2/models/{name}", timeout=2)
    except httpx.HTTPError:
        return None
    return str(r.json()["versions"][0]) if r.status_code == 200 else None


def test_a_tensors_model_is_refused_for_an_older_agent_and_its_other_model_keeps_updating(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    old = _old_tree(tmp_path / "old")
    h = running_hub
    for _version, (onnx_path, desc) in classifier_versions(tmp_path).items():
        r = h.push_model(onnx_path, desc.to_json())
        assert r.status_code == 201, r.text
    emb = tmp_path / "emb.onnx"
    emb.write_bytes(build_classifier(num_classes=10, seed=5).SerializeToString())
    raw = classifier_descriptor(num_classes=10, height=64, width=64, name="emb").to_json()
    tensors = {"kind": "tensors", "outputs": [{"name": "logits"}]}
    r = h.push_model(emb, {**raw, "task": "tensors", "labels": [], "output": tensors})
    assert r.status_code == 201, r.text

    with h.client() as api:
        r = api.post("/api/v1/devices", json={"id": "cam-old", "labels": {"site": "lab"}})
        assert r.status_code == 201, r.text
        DeviceBundle.model_validate(r.json()["bundle"]).save(tmp_path / "bundle.json")
    port = free_port()
    env = agent_env(**AGENT_ENV) | {"PYTHONPATH": str(old)}
    agent = AgentProc(agent_command(tmp_path / "bundle.json", tmp_path / "agent", "--api-port", str(port)),
                      env, tmp_path / "agent.log", port, cwd=old)  # fmt: skip
    try:
        with h.client() as api:
            caps = wait_for(lambda: api.get("/api/v1/devices/cam-old").json().get("capabilities"), 30)
            assert "tasks" not in caps or caps["tasks"] is None, "the old agent's birth does not list its tasks"
            r = api.post("/api/v1/deployments", json={"model": "cls", "version": "1.0.0", "selector": "site=lab"})
            assert r.status_code == 201, r.text
            wait_for(lambda: _served_version(agent.api, "cls") == "1.0.0", timeout=60)

            r = api.post("/api/v1/deployments", json={"model": "emb", "version": "1.0.0", "selector": "site=lab"})
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "unsupported_task" and error["devices"] == ["cam-old"], error
            assert f"cam-old (agent {caps['agent_version']} serves classification, detection)" in error["message"]
            r = api.post("/api/v1/rollouts", json={"model": "emb", "version": "1.0.0", "selector": "site=lab"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_task", r.text

            r = api.post("/api/v1/deployments", json={"model": "cls", "version": "2.0.0", "selector": "site=lab"})
            assert r.status_code == 201, r.text
        wait_for(lambda: _served_version(agent.api, "cls") == "2.0.0", timeout=60)
        assert _served_version(agent.api, "emb") is None
    finally:
        code = agent.stop()
    assert code == 0, agent.output()[-3000:]

"""`edgefleet k3s ...` (mounted by the lead as a sub-command): help, rendering, inventory and apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.k3s.cli import app
from tests.agent.k3s.conftest import MODEL, NAMESPACE, desired
from tests.k8s.server import ApiServer

runner = CliRunner()


@pytest.fixture
def desired_file(tmp_path: Path) -> Path:
    path = tmp_path / "desired.json"
    path.write_text(desired(1, replicas=2, gpus=1).model_dump_json())
    return path


@pytest.fixture(autouse=True)
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "EDGEFLEET_K3S_NAMESPACE": NAMESPACE,
        "EDGEFLEET_K3S_RETRY_ATTEMPTS": "2",
        "EDGEFLEET_K3S_RETRY_BACKOFF_S": "0.01",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("command", [[], ["inventory"], ["render"], ["apply"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_render_yaml_and_json(desired_file: Path) -> None:
    result = runner.invoke(app, ["render", "--desired", str(desired_file), "--image", "reg/agent:9"])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service"]
    # the labels dict is shared between the objects: written out in full each time, no anchors or aliases
    assert "&id" not in result.output and "*id" not in result.output
    assert objects[0]["metadata"]["labels"] == objects[1]["metadata"]["labels"] == objects[2]["metadata"]["labels"]
    assert objects[1]["spec"]["replicas"] == 2
    result = runner.invoke(app, ["render", "--desired", str(desired_file), "--json"])
    assert result.exit_code == 0
    assert len(json.loads(result.output)[MODEL]["template_hash"]) == 16  # one workload per model


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), (b"{not json", "not a valid desired state"), (b'{"kind": "desired"}', "device_id")],
)
def test_render_refuses_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "desired.json"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["render", "--desired", str(path)])
    assert result.exit_code == 2
    assert message in result.output


def _with_a_newer_hubs_slot(tmp_path: Path) -> Path:
    """A desired state naming MODEL and a model `seg` whose slot has a field this build does not know."""
    doc = desired(1, replicas=2).model_dump(mode="json")
    seg = json.loads(json.dumps(doc["models"][0]))
    seg["model"]["name"] = "seg"
    seg["runtime"]["tiling"] = {"tile": 512}  # a newer hub's runtime option
    doc["models"].append(seg)
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(doc))
    return path


def test_render_and_apply_read_the_desired_state_slot_by_slot_as_the_agent_does(api: ApiServer, tmp_path: Path) -> None:
    """A slot this build cannot read is named with the reason, and the models it reads are rendered and applied,
    as the agent applies them; the whole file was refused before."""
    path = _with_a_newer_hubs_slot(tmp_path)
    result = runner.invoke(app, ["render", "--desired", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)) == [MODEL]
    assert "model 'seg' not rendered" in result.stderr and "runtime.tiling" in result.stderr, result.stderr
    result = runner.invoke(app, ["render", "--desired", str(path)])
    assert [o["kind"] for o in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "Deployment", "Service"]
    result = runner.invoke(app, ["apply", "--desired", str(path), "--kubeconfig", str(api.kubeconfig), "--json"])
    assert result.exit_code == 1, result.output  # not everything the file names was applied
    assert json.loads(result.stdout)[MODEL]["state"] == "ready"
    assert "model 'seg' not applied" in result.stderr, result.stderr


def test_render_refuses_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (5 << 20))
    result = runner.invoke(app, ["render", "--desired", str(path)])
    assert result.exit_code == 2 and "larger than 4 MiB" in result.output


def test_bad_setting_in_environment(desired_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_K3S_PORT", "not-a-port")
    result = runner.invoke(app, ["render", "--desired", str(desired_file)])
    assert result.exit_code == 2 and "EDGEFLEET_K3S_PORT" in result.output


def test_inventory_table_and_json(api: ApiServer) -> None:
    api.put_node("gpu-1", labels={"nvidia.com/gpu.product": "NVIDIA-L4"}, allocatable={"nvidia.com/gpu": "1"})
    result = runner.invoke(app, ["inventory", "--kubeconfig", str(api.kubeconfig)])
    assert result.exit_code == 0, result.output
    assert "gpu-1" in result.output and "nvidia.com/gpu=1" in result.output
    result = runner.invoke(app, ["inventory", "--kubeconfig", str(api.kubeconfig), "--json"])
    assert json.loads(result.output)[0]["gpu_product"] == "NVIDIA-L4"


def test_inventory_without_configuration(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inventory", "--kubeconfig", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1 and "cluster_config" in result.output


def test_apply_ready_and_not_ready(api: ApiServer, desired_file: Path) -> None:
    args = ["apply", "--desired", str(desired_file), "--kubeconfig", str(api.kubeconfig)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[MODEL]["state"] == "ready"
    api.controller = "never"
    result = runner.invoke(app, [*args, "--image", "reg/agent:2", "--deadline", "0.3"])
    assert result.exit_code == 1
    assert "failed" in result.output and "deadline" in result.output

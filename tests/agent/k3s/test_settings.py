"""Settings from the environment: good values, empty values for optional fields, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.k3s import ClusterSettings
from infra.errors import SettingsError


def test_from_env_reads_prefixed_variables() -> None:
    env = {
        "EDGEFLEET_K3S_NAMESPACE": "edge",
        "EDGEFLEET_K3S_ROLLOUT_DEADLINE_S": "42.5",
        "EDGEFLEET_K3S_KUBECONFIG": "/etc/rancher/k3s/k3s.yaml",
        "EDGEFLEET_K3S_GPU_IMAGE": "",
        "EDGEFLEET_K3S_FORCE_CONFLICTS": "false",
        "UNRELATED": "x",
    }
    s = ClusterSettings.from_env(env)
    assert s.namespace == "edge"
    assert s.rollout_deadline_s == 42.5
    assert s.kubeconfig == Path("/etc/rancher/k3s/k3s.yaml")
    assert s.gpu_image is None
    assert s.force_conflicts is False


def test_overrides_win_and_none_is_ignored() -> None:
    s = ClusterSettings.from_env({"EDGEFLEET_K3S_NAMESPACE": "edge"}, namespace="other", image=None)
    assert s.namespace == "other"
    assert s.image == ClusterSettings().image


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NAMESPACE", "Not_A_DNS_Label"),
        ("ROLLOUT_DEADLINE_S", "-1"),
        ("CPU_LIMIT", "two cores"),
        ("FIELD_MANAGER", "a b"),
        ("PORT", "70000"),
        ("MODELS_HOST_PATH", "relative/path"),
    ],
)
def test_bad_values_are_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"EDGEFLEET_K3S_{name}"):
        ClusterSettings.from_env({f"EDGEFLEET_K3S_{name}": value})


@pytest.mark.parametrize("value", ["1inference", "9", "-inference"])
def test_a_workload_name_that_cannot_start_a_service_name_is_refused(value: str) -> None:
    """Service names are DNS-1035 labels (a letter first): `1inference-resnet` is refused by the API server."""
    with pytest.raises(SettingsError, match="EDGEFLEET_K3S_WORKLOAD_NAME.*must start with a lowercase letter"):
        ClusterSettings.from_env({"EDGEFLEET_K3S_WORKLOAD_NAME": value})
    assert ClusterSettings.from_env({"EDGEFLEET_K3S_WORKLOAD_NAME": "inference2"}).workload_name == "inference2"


def test_gpu_image_defaults_to_image() -> None:
    s = ClusterSettings(image="a:1")
    assert s.serving_image(gpu=True) == "a:1"
    assert s.model_copy(update={"gpu_image": "a:1-cuda"}).serving_image(gpu=True) == "a:1-cuda"

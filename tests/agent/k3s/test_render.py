"""The workload rendering, without a server: what changes the pod template and what does not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from agent.k3s import ClusterSettings, WorkloadError, render_workload
from agent.k3s.render import ACTIVE_FILE, HASH_ANNOTATION, MAX_CONFIG_BYTES, Workload
from fleet.messages import Autoscaling, RuntimeOptions
from tests.agent.k3s.conftest import MODEL, desired, with_slot

S = ClusterSettings(image="reg.local/agent:1", gpu_image="reg.local/agent:1-cuda")


def container(w: Workload) -> dict[str, Any]:
    c: dict[str, Any] = w.deployment["spec"]["template"]["spec"]["containers"][0]
    return c


def test_model_only_change_keeps_the_pod_template() -> None:
    a = render_workload(desired(1, "1.0.0"), MODEL, S)
    b = render_workload(desired(2, "2.0.0", max_batch=32, providers=["CUDAExecutionProvider"]), MODEL, S)
    assert a.template_hash == b.template_hash
    assert a.deployment["spec"]["template"] == b.deployment["spec"]["template"]
    assert a.config_map != b.config_map  # the model travels in the ConfigMap the pods watch
    active = json.loads(b.config_map["data"][ACTIVE_FILE])
    assert active["model"]["version"] == "2.0.0"
    assert active["runtime"]["max_batch"] == 32
    assert b.deployment["metadata"]["annotations"][HASH_ANNOTATION] == b.template_hash


@pytest.mark.parametrize(
    ("change", "settings"),
    [
        ({"gpus": 1}, S),
        ({"mig_profile": "1g.10gb"}, S),
        ({}, S.model_copy(update={"image": "reg.local/agent:2"})),
        ({}, S.model_copy(update={"memory_limit": "4Gi"})),
    ],
)
def test_image_gpu_or_resources_change_the_template(change: dict[str, Any], settings: ClusterSettings) -> None:
    base = render_workload(desired(1), MODEL, S)
    changed = render_workload(desired(1, **change), MODEL, settings)
    assert changed.template_hash != base.template_hash


def test_replicas_do_not_touch_the_template() -> None:
    one = render_workload(desired(1, replicas=1), MODEL, S)
    three = render_workload(desired(1, replicas=3), MODEL, S)
    assert one.template_hash == three.template_hash
    assert three.deployment["spec"]["replicas"] == 3


def test_gpu_request_uses_the_cuda_image_runtime_class_and_limits() -> None:
    w = render_workload(desired(1, gpus=2), MODEL, S)
    c = container(w)
    assert c["image"] == "reg.local/agent:1-cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    pod = w.deployment["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert w.deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_mig_slice_request() -> None:
    c = container(render_workload(desired(1, mig_profile="3g.40gb"), MODEL, S))
    assert c["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_cpu_only_pod() -> None:
    w = render_workload(desired(1), MODEL, S)
    c = container(w)
    assert c["image"] == "reg.local/agent:1"
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert c["args"] == ["agent", "serve", "--store", "/models", "--model", MODEL]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "runtimeClassName" not in w.deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert w.service["spec"]["selector"] == w.deployment["spec"]["selector"]["matchLabels"]
    assert w.autoscaler is None
    assert [o["kind"] for o in w.objects()] == ["ConfigMap", "Deployment", "Service"]


def test_autoscaler_owns_replicas() -> None:
    scaling = Autoscaling(min_replicas=2, max_replicas=6, cpu_percent=65)
    w = render_workload(desired(1, replicas=3, autoscaling=scaling), MODEL, S)
    assert "replicas" not in w.deployment["spec"]
    assert w.autoscaler is not None
    assert w.autoscaler["spec"]["minReplicas"] == 2
    assert w.autoscaler["spec"]["maxReplicas"] == 6
    assert w.autoscaler["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    assert [o["kind"] for o in w.objects()][-1] == "HorizontalPodAutoscaler"


def test_a_model_the_state_does_not_name_has_no_workload() -> None:
    state = desired(1).model_copy(update={"models": []})
    with pytest.raises(WorkloadError) as info:  # a model no longer desired: its workload is deleted instead
        render_workload(state, MODEL, S)
    assert info.value.code == "no_such_model"


def test_each_model_has_a_workload_of_its_own() -> None:
    a = render_workload(desired(1), MODEL, S)
    other = with_slot(desired(1), model=desired(1).models[0].model.model_copy(update={"name": "plates"}))
    b = render_workload(other, "plates", S)
    assert a.deployment["metadata"]["name"] == "edgefleet-inference-resnet"
    assert b.deployment["metadata"]["name"] == "edgefleet-inference-plates"
    assert container(b)["args"][-2:] == ["--model", "plates"]
    assert json.loads(b.config_map["data"][ACTIVE_FILE])["model"]["name"] == "plates"
    assert a.deployment["spec"]["selector"] != b.deployment["spec"]["selector"]


@pytest.mark.parametrize("profile", ["1g", "1g.10", "../etc", "1g.10gb;rm", "0g.5gb", ""])
def test_bad_mig_profile_is_refused(profile: str) -> None:
    with pytest.raises(ValidationError, match="mig_profile"):  # the wire contract refuses it (the hub never signs it)
        RuntimeOptions(mig_profile=profile)
    forged = with_slot(desired(1), runtime=RuntimeOptions.model_construct(mig_profile=profile, gpus=0))
    with pytest.raises(WorkloadError, match="MIG profile"):  # and rendering checks again
        render_workload(forged, MODEL, S)


def test_oversized_descriptor_is_refused() -> None:
    state = desired(1)
    model = state.models[0].model
    big = model.model_copy(update={"descriptor": {"labels": ["x" * 1000] * (MAX_CONFIG_BYTES // 900)}})
    with pytest.raises(WorkloadError) as info:
        render_workload(with_slot(state, model=big), MODEL, S)
    assert info.value.code == "descriptor_too_large"
    assert info.value.permanent


def test_host_path_store() -> None:
    w = render_workload(desired(1), MODEL, S.model_copy(update={"models_host_path": "/var/lib/edgefleet"}))
    volumes = {v["name"]: v for v in w.deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == "/var/lib/edgefleet"


@pytest.mark.parametrize("runtime", [{}, {"gpus": 1}, {"mig_profile": "1g.10gb"}])
def test_serving_pods_meet_pod_security_restricted(runtime: dict[str, Any]) -> None:
    """The namespace enforces Pod Security `restricted` (deploy/base/namespace.yaml): the pods must pass it."""
    pod = render_workload(desired(1, **runtime), MODEL, S).deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged")


def test_gpu_without_runtime_class() -> None:
    pod = render_workload(desired(1, gpus=1), MODEL, S.model_copy(update={"gpu_runtime_class": None})).deployment
    assert "runtimeClassName" not in pod["spec"]["template"]["spec"]

"""Cluster mode end to end: the agent started exactly as deploy/ starts it, the real hub, the real `edgefleet` CLI.

The agent process runs the command and environment of the Deployment that `kubectl kustomize deploy/overlays/cpu`
renders (only the bundle path, the health port and the kubeconfig differ: no kubelet here), against the
Kubernetes API test server. The operator asks for MIG slices, replicas, GPUs and autoscaling with
`edgefleet deploy` and `edgefleet rollout start`; the hub refuses what the device's advertised nodes cannot run
(on the CLI and on the REST API alike) and the agent applies the rest, which the test reads back from the API
server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fleet.bundle import DeviceBundle
from models.cli import write_model
from models.samples import build_classifier, classifier_descriptor
from tests.agent.k3s.manifests import agent_container, agent_values, render
from tests.e2e.conftest import FAST_AGENT_ENV
from tests.k8s.server import ApiServer
from tests.support.agents import AgentProc
from tests.support.broker import Broker, free_port
from tests.support.hub import RunningHub, start_hub
from tests.support.models import classifier_versions, permute_output
from tests.support.mqtt import wait_for
from tests.support.pods import ServingPod, send
from tests.support.procs import stop

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "edgefleet"
WORKLOAD = "edgefleet-inference-cls"  # one workload per model: model cls's


def edgefleet() -> str:
    """The `edgefleet` console script of this environment (pip install -e . puts it beside Python)."""
    found = shutil.which("edgefleet", path=str(Path(sys.executable).parent)) or shutil.which("edgefleet")
    assert found, "the edgefleet console script is missing: pip install -e '.[test]'"
    return found


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "k8s", controller_delay_s=0.05).start()
    server.add_namespace(NAMESPACE)
    server.put_node("gpu-1", allocatable={"nvidia.com/gpu": "2"}, labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
    server.put_node("a100", allocatable={"nvidia.com/mig-2g.20gb": "3"}, labels={"nvidia.com/mig.strategy": "mixed"})
    yield server
    server.stop()


@pytest.fixture
def gating_hub(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[RunningHub]:
    """A hub that judges a wave soon after its bake (the agents here send a window every 0.5 s, not every 10 s)."""
    h = start_hub(
        tmp_path / "hub", broker.url, topic_prefix, rollouts={"tick_interval_s": 0.2, "telemetry_grace_s": 1.0}
    )
    yield h
    h.stop()


def start_agent_as_deployed(bundle: Path, k8s: ApiServer, tmp_path: Path, **env_extra: str) -> tuple[AgentProc, int]:
    """`edgefleet agent run ...` with the rendered manifest's arguments and environment (`env_extra` last)."""
    objects = render("cpu")
    container = agent_container(objects)
    health = free_port()
    replace = {"--bundle=": f"--bundle={bundle}", "--health-port=": f"--health-port={health}"}
    args = [next((v for k, v in replace.items() if arg.startswith(k)), arg) for arg in container["args"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_AGENT_", "EDGEFLEET_K3S_"))}
    env.update(agent_values(objects))
    env.update(FAST_AGENT_ENV)
    env["EDGEFLEET_AGENT_DATA_DIR"] = str(tmp_path / "agent-data")  # the manifest's claim mount
    env["EDGEFLEET_K3S_KUBECONFIG"] = str(k8s.kubeconfig)  # in a pod: the ServiceAccount
    env["EDGEFLEET_K3S_ROLLOUT_DEADLINE_S"] = "20"
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra)
    proc = AgentProc([edgefleet(), *args], env, tmp_path / "agent.log")
    return proc, health


def cli(hub: RunningHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEFLEET_URL": hub.url, "EDGEFLEET_TOKEN": hub.admin_token, "COLUMNS": "200"}
    return subprocess.run([edgefleet(), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def enrol(hub: RunningHub, device_id: str, labels: dict[str, str], bundle: Path) -> None:
    """Enrol `device_id` on the REST API and save its bundle at `bundle` (what the agent's Secret holds)."""
    with hub.client() as api:
        r = api.post("/api/v1/devices", json={"id": device_id, "labels": labels})
        assert r.status_code == 201, r.text
    DeviceBundle.model_validate(r.json()["bundle"]).save(bundle)


def start_rollout(hub: RunningHub, body: dict[str, Any]) -> str:
    """Start a rollout on the REST API; its id."""
    with hub.client() as api:
        r = api.post("/api/v1/rollouts", json=body)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])


def rollout_outcome(hub: RunningHub, rid: str) -> dict[str, Any]:
    """The rollout once it no longer runs (completed, paused, rolled back)."""

    def rollout() -> dict[str, Any]:
        with hub.client() as api:
            return dict(api.get(f"/api/v1/rollouts/{rid}").json())

    found: dict[str, Any] = wait_for(lambda: (x := rollout())["state"] != "running" and x, timeout=90)
    return found


def serving(k8s: ApiServer) -> dict[str, Any] | None:
    return k8s.get("apps", "deployments", NAMESPACE, WORKLOAD)


def limits(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"])


def test_cli_runtime_options_reach_the_cluster_through_the_deployed_agent(
    running_hub: RunningHub, k8s: ApiServer, tmp_path: Path
) -> None:
    h = running_hub
    (tmp_path / "models").mkdir()
    for path, desc in classifier_versions(tmp_path / "models").values():
        assert h.push_model(path, desc.to_json()).status_code == 201
    enrol(h, "cam-3", {"site": "lab"}, tmp_path / "bundle.json")

    agent, health = start_agent_as_deployed(tmp_path / "bundle.json", k8s, tmp_path)
    try:
        # kubelet's view: live at once, ready once the broker is reached; the agent listens on nothing else
        wait_for(lambda: _get(f"http://127.0.0.1:{health}/livez") == 200, timeout=30)
        wait_for(lambda: _get(f"http://127.0.0.1:{health}/readyz") == 200, timeout=30)
        listening = {
            c.laddr.port for c in psutil.Process(agent.proc.pid).net_connections("tcp") if c.status == "LISTEN"
        }
        assert listening == {health}, f"the control agent serves only its probes, it listens on {listening}"

        def device() -> dict[str, Any]:
            with h.client() as api:
                return dict(api.get("/api/v1/devices/cam-3").json())

        caps = wait_for(lambda: (device().get("capabilities") or {}).get("nodes") and device()["capabilities"], 30)
        assert caps["mode"] == "k3s" and sorted(n["name"] for n in caps["nodes"]) == ["a100", "gpu-1"]

        # a slice the device does not have: refused on the CLI and on the REST API, nothing signed
        refused = cli(h, "deploy", "cls:1.0.0", "-s", "site=lab", "--mig-profile", "1g.10gb")
        assert refused.returncode == 1
        assert "cam-3 has no MIG slices of 1g.10gb; it advertises 2 GPUs, 2g.20gb x3" in refused.stderr
        with h.client() as api:
            body = {"model": "cls", "version": "1.0.0", "selector": "site=lab", "runtime": {"gpus": 3}}
            r = api.post("/api/v1/deployments", json=body)
            assert r.status_code == 422, r.text
            assert "cam-3 has at most 2 x nvidia.com/gpu on one node; a serving pod asks for 3" in r.text
            assert api.get("/api/v1/devices/cam-3/desired").json()["desired"] is None

        # three pods on 2g.20gb slices: what the agent applies
        done = cli(h, "deploy", "cls:1.0.0", "-s", "site=lab", "--mig-profile", "2g.20gb", "--replicas", "3")
        assert done.returncode == 0, done.stderr
        d = wait_for(lambda: (x := serving(k8s)) and x["spec"].get("replicas") == 3 and x, timeout=60)
        assert limits(d)["nvidia.com/mig-2g.20gb"] == "1"
        active = k8s.get("", "configmaps", NAMESPACE, WORKLOAD)
        assert active is not None and '"CUDAExecutionProvider"' in active["data"]["active.json"]  # GPU pods: CUDA first
        assert d["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
        wait_for(
            lambda: any((m.get("cluster") or {}).get("state") == "ready" for m in device()["reported"]["models"]),
            timeout=60,
        )
        # the dashboard's device page: the nodes with their GPUs and MIG slices, and the workload's rollout
        with httpx.Client(base_url=h.url, timeout=30) as browser:
            assert browser.post("/login", data={"token": h.admin_token, "next": "/"}).status_code in (200, 303)
            page = browser.get("/devices/cam-3").text
        assert "K3s cluster" in page and "NVIDIA-L4" in page
        assert "gpu ×2" in page and "mig-2g.20gb ×3" in page
        assert f"{NAMESPACE}/{WORKLOAD}</span>: ready, 3/3 ready" in page

        # a rollout to 2.0.0 on one GPU per pod, autoscaled between 1 and 2 pods at 70 % CPU
        started = cli(
            h, "rollout", "start", "cls:2.0.0", "-s", "site=lab", "--waves", "100%", "--bake", "0s",
            "--gpus", "1", "--max-replicas", "2", "--target-cpu", "70",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

        def serving_on_a_gpu() -> dict[str, Any] | None:
            x = serving(k8s)
            return x if x and "nvidia.com/gpu" in limits(x) else None

        d = wait_for(serving_on_a_gpu, timeout=60)
        assert limits(d)["nvidia.com/gpu"] == "1" and "replicas" not in d["spec"]  # the HPA owns replicas
        hpa = wait_for(lambda: k8s.get("autoscaling", "horizontalpodautoscalers", NAMESPACE, WORKLOAD), timeout=60)
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70

        # a rollout the device cannot run is refused before it starts
        too_many = cli(h, "rollout", "start", "cls:1.0.0", "-s", "site=lab", "--gpus", "1", "--replicas", "3")
        assert too_many.returncode == 1
        assert "cam-3 fits 2 serving pod(s) of 1 GPU on its ready nodes; 3 asked" in too_many.stderr
    finally:
        status = agent.stop()
    assert status == 0, agent.output()[-3000:]


def test_a_cluster_devices_serving_errors_fail_the_error_rate_gate(
    gating_hub: RunningHub, k8s: ApiServer, tmp_path: Path
) -> None:
    """The control agent scrapes its serving pod, so the hub's error-rate gate judges cluster-mode devices too
    (before, their windows were empty and the gate recorded no_data, which passes)."""
    h = gating_hub
    (tmp_path / "models").mkdir()
    versions = classifier_versions(tmp_path / "models")
    for path, desc in versions.values():
        assert h.push_model(path, desc.to_json()).status_code == 201
    enrol(h, "cam-9", {"site": "edge"}, tmp_path / "bundle.json")
    port = free_port()
    agent, _ = start_agent_as_deployed(tmp_path / "bundle.json", k8s, tmp_path, EDGEFLEET_K3S_PORT=str(port))
    stop = threading.Event()
    pods: list[ServingPod] = []
    codes: list[int] = []

    def load() -> None:  # clients of the serving pod: more at once than it takes (max_concurrency 1: 503s)
        while not stop.is_set():
            try:
                codes.extend(pods[0].send(16, parallel=4))
            except httpx.HTTPError:
                pass
            stop.wait(0.05)

    clients = threading.Thread(target=load, daemon=True)
    try:
        # no control devices and no version before: the p95 gate has no reference (no_data), which must not hold
        # the failing error-rate gate back
        body = {"model": "cls", "version": "2.0.0", "selector": "site=edge", "bake_s": 4.0, "on_failure": "pause",
                "gates": {"max_error_rate": 0.05}}  # fmt: skip
        rid = start_rollout(h, body)
        # the serving pod the agent's Deployment asked for, on the IP the test API server's controller gave it
        pod = wait_for(lambda: k8s.pods(NAMESPACE), timeout=60)[0]
        path, desc = versions["2.0.0"]
        pods.append(ServingPod(pod["status"]["podIP"], port, path, desc, "cls", max_concurrency=1))
        clients.start()
        done = rollout_outcome(h, rid)
        wave = done["waves"][0]
        gate = next(g for g in wave["gates"] if g["name"] == "error_rate")
        assert (done["state"], wave["phase"], gate["status"]) == ("paused", "failed", "fail"), done
        assert gate["measured"]["requests"] >= 20 and gate["measured"]["errors"] > 0, gate
        assert gate["value"] > 0.05 and 503 in codes
        assert next(g for g in wave["gates"] if g["name"] == "p95_latency")["status"] == "no_data"
    finally:
        stop.set()
        if clients.is_alive():
            clients.join(timeout=30)
        for p in pods:
            p.stop()
        status = agent.stop()
    assert status == 0, agent.output()[-3000:]


def test_a_cluster_devices_serving_pod_runs_the_shadow_and_a_disagreeing_candidate_fails_its_gate(
    gating_hub: RunningHub, k8s: ApiServer, tmp_path: Path
) -> None:
    """The serving pod (`edgefleet agent serve` on the shared store, the Deployment's command) runs the shadow
    candidate the control agent recorded, and the control agent scrapes its comparisons: the hub's shadow gate
    judges a cluster-mode device (before, no pod ran the candidate and the gate had no data)."""
    h = gating_hub
    desc = classifier_descriptor(10, 64, 64, name="cls")
    agreeing = build_classifier(10, seed=0)
    models = {"1.0.0": agreeing, "2.1.0": permute_output(agreeing, "logits", [(i + 3) % 10 for i in range(10)])}
    for version, model in models.items():
        onnx_path, yaml_path = write_model(model, desc.model_copy(update={"version": version}), tmp_path, version)
        assert h.push_model(onnx_path, yaml_path).status_code == 201
    enrol(h, "cam-7", {"site": "shadowed"}, tmp_path / "bundle.json")
    port = free_port()
    agent, _ = start_agent_as_deployed(tmp_path / "bundle.json", k8s, tmp_path, EDGEFLEET_K3S_PORT=str(port))
    stop_load = threading.Event()
    pod: subprocess.Popen[bytes] | None = None
    log = (tmp_path / "pod.log").open("wb")
    try:
        done = cli(h, "deploy", "cls:1.0.0", "-s", "site=shadowed")
        assert done.returncode == 0, done.stderr
        ip = wait_for(lambda: k8s.pods(NAMESPACE), timeout=60)[0]["status"]["podIP"]
        # the pod's container: the Deployment's command and serving port, on the store the claim shares
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {"PYTHONPATH": str(REPO), "EDGEFLEET_API_HOST": ip, "EDGEFLEET_API_PORT": str(port)}
        store = tmp_path / "agent-data" / "store"
        pod = subprocess.Popen(
            [edgefleet(), "agent", "serve", "--store", str(store), "--model", "cls", "--poll-s", "0.2"],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        url = f"http://{ip}:{port}"
        wait_for(lambda: _get(f"{url}/v2/models/cls/versions/1.0.0/ready") == 200, timeout=60)

        def load() -> None:  # the application's clients of the serving pod
            while not stop_load.is_set():
                try:
                    send(url, "cls", 4)
                except httpx.HTTPError:
                    pass
                stop_load.wait(0.05)

        clients = threading.Thread(target=load, daemon=True)
        clients.start()
        body = {"model": "cls", "version": "2.1.0", "selector": "site=shadowed", "bake_s": 2.0, "waves": ["100%"],
                "shadow_rate": 1.0, "on_failure": "pause"}  # fmt: skip
        status = rollout_outcome(h, start_rollout(h, body))
        wave = status["waves"][0]
        gate = next(g for g in wave["gates"] if g["name"] == "shadow_agreement")
        assert (status["state"], wave["failed_in"], gate["status"]) == ("paused", "shadow_baking", "fail"), status
        assert gate["measured"]["samples"] >= 20 and gate["value"] == 0.0, gate  # every answer permuted
        assert gate["measured"]["mean_latency_delta_ms"] is None  # pods do not time it: unknown, not 0
        said = (tmp_path / "pod.log").read_text
        assert "shadowing cls with 2.1.0 on 100% of its requests" in said()  # the pod followed shadow.json
        # the failed wave took the candidate out of the desired state: the pointer goes, the pod stops it
        wait_for(lambda: "cls: shadow 2.1.0 stopped" in said(), timeout=30)
        assert not (store / "models" / "cls" / "shadow.json").exists()
    finally:
        stop_load.set()
        if pod is not None:
            stop(pod, timeout=20)
        log.close()
        status_code = agent.stop()
    assert pod is not None and pod.returncode == 0, (tmp_path / "pod.log").read_text()[-3000:]
    assert status_code == 0, agent.output()[-3000:]


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0

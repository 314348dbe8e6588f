"""Cluster mode's memory: the control agent pod and a serving pod, with the sample classifier.

    .venv/bin/python benchmarks/cluster_footprint.py [--requests 400]

What deploy/ sizes its requests and limits from (docs/k3s.md). Both processes run as the pods run them:

  control agent - `python -m agent run --cluster --health-port P` (the args of deploy/base/agent.yaml) against a
                  real Mosquitto, the hub stand-in of the tests and the Kubernetes API test server: RSS once
                  connected with nothing deployed, then after a model was downloaded, checked (load, warm-up,
                  golden) and its workload applied, and the kernel's high-water mark (VmHWM: the check's peak);
  serving pod   - `python -m agent serve --store <the agent's store>` (the serving Deployment's command): RSS
                  once ready, after `--requests` image requests from 4 clients, and VmHWM.

Raw baseline, same run: a bare Python process that imports onnxruntime, creates one session for the same file
and runs it once (as benchmarks/footprint.py). Also, for comparison: the agent as deploy/ ran it before
cluster mode worked (`agent run --headless`: the model held in the agent pod).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

from models.cli import build_samples  # noqa: E402
from models.descriptor import ModelDescriptor  # noqa: E402
from models.samples import build_classifier, classifier_descriptor  # noqa: E402
from models.validate import validate  # noqa: E402
from tests.k8s.server import ApiServer  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.hubside import HubSide, one  # noqa: E402
from tests.support.procs import peak_rss, stop, vm_hwm  # noqa: E402

RAW = """
import sys, resource
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
s.run(None, {"image": np.zeros((1, 3, 224, 224), dtype=np.float32)})
import psutil
print(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
"""
MIB = 1 << 20


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_AGENT_", "EDGEFLEET_K3S_"))}
    env.update({"PYTHONPATH": str(ROOT), "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1", **extra})
    return env


def _spawn(args: list[str], env: dict[str, str], started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Start `python -m agent ARGS`, noted in `started` (stopped at the end even when a step fails)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args, "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started.append(proc)
    return proc


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 160, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def _big_classifier(out: Path, mib: int) -> tuple[Path, ModelDescriptor]:
    """The 10-class sample classifier carrying a `mib` MiB weight that takes part in the output (added times 0)."""
    out.mkdir(parents=True, exist_ok=True)
    model = build_classifier(num_classes=10, seed=7)
    graph = model.graph
    last = next(n for n in graph.node if list(n.output) == ["logits"])
    last.output[0] = "logits_raw"
    pad = np.random.default_rng(7).standard_normal(mib * MIB // 4).astype(np.float32)
    zero = np.zeros((), np.float32)
    graph.initializer.extend([numpy_helper.from_array(pad, "pad"), numpy_helper.from_array(zero, "zero")])
    graph.node.extend([
        helper.make_node("ReduceSum", ["pad"], ["pad_sum"], keepdims=0),
        helper.make_node("Mul", ["pad_sum", "zero"], ["pad_zero"]),
        helper.make_node("Add", ["logits_raw", "pad_zero"], ["logits"]),
    ])  # fmt: skip
    path = out / "big.onnx"
    path.write_bytes(model.SerializeToString())
    desc = classifier_descriptor(num_classes=10, height=64, width=64, name="mobilenet-like")
    return path, validate(path, desc.model_copy(update={"version": "9.0.0"})).descriptor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="image requests sent to the serving process")
    ap.add_argument("--big-mib", type=int, default=50, help="size of the large classifier the control agent checks")
    args = ap.parse_args()
    binary = find_mosquitto()
    if binary is None:
        print("mosquitto is not installed: apt-get install mosquitto")
        return
    work = Path(tempfile.mkdtemp(prefix="edgefleet-cluster-footprint-"))
    broker = Broker(binary, work / "mosquitto", free_port())
    broker.start()
    hub = HubSide(broker.host, broker.port, f"bench/{uuid.uuid4().hex[:8]}/fleet/v1", chunk_size=256 * 1024)
    k8s = ApiServer(work / "k8s").start()
    k8s.add_namespace("edgefleet")
    k8s.put_node("edge-1")
    rows: list[tuple[str, str, int]] = []
    started: list[subprocess.Popen[bytes]] = []
    try:
        onnx_path, yaml_path = build_samples(work / "samples")[:2]
        desc = ModelDescriptor.load(yaml_path)
        model_mib = onnx_path.stat().st_size / MIB
        device = "bench-001"
        bundle = work / "bundle.json"
        hub.bundle(device, broker.url).save(bundle)
        data = work / "data"
        cluster_env = _env({"EDGEFLEET_K3S_KUBECONFIG": str(k8s.kubeconfig), "EDGEFLEET_K3S_NAMESPACE": "edgefleet"})

        health = free_port()
        control = _spawn(["run", "--cluster", "--bundle", str(bundle), "--data-dir", str(data),
                          "--health-port", str(health)], cluster_env, started)  # fmt: skip
        _wait(lambda: _ok(f"http://127.0.0.1:{health}/readyz"), 60, "control agent ready")
        rows.append(("control agent", "connected, nothing deployed", peak_rss(control.pid, 2.0)))
        hub.publish_desired(device, hub.desired(device, 1, hub.model_ref(onnx_path, desc)))
        hub.wait(lambda: any((c := one(r).cluster) is not None and c.state == "ready" for r in hub.reported),
                 120, "ready")  # fmt: skip
        time.sleep(2.5)  # two telemetry windows: the checked engine's heap is handed back
        rows.append(("control agent", "model checked, workload applied", peak_rss(control.pid, 2.0)))
        rows.append(("control agent", "peak (VmHWM: during the model check)", vm_hwm(control.pid)))
        big_path, big_desc = _big_classifier(work / "big", args.big_mib)
        hub.publish_desired(device, hub.desired(device, 2, hub.model_ref(big_path, big_desc)))
        hub.wait(lambda: any((a := one(r).active) is not None and a.version == big_desc.version for r in hub.reported),
                 300, "big model checked")  # fmt: skip
        time.sleep(2.5)
        big_mib = big_path.stat().st_size / MIB
        rows.append(("control agent", f"{big_mib:.0f} MiB model checked", peak_rss(control.pid, 2.0)))
        rows.append(("control agent", f"peak (VmHWM) with the {big_mib:.0f} MiB model", vm_hwm(control.pid)))
        hub.publish_desired(device, hub.desired(device, 3, hub.model_ref(onnx_path, desc)))  # back to the sample
        hub.wait(lambda: any(r.desired_version == 3 and r.phase == "active" for r in hub.reported), 120, "v3")
        stop(control, timeout=20)

        port = free_port()
        serve = _spawn(["serve", "--store", str(data / "store"), "--host", "127.0.0.1", "--port", str(port)],
                       _env({}), started)  # fmt: skip
        _wait(lambda: _ok(f"http://127.0.0.1:{port}/v2/health/ready"), 60, "serving ready")
        rows.append(("serving pod", "model loaded, ready", peak_rss(serve.pid, 2.0)))
        image = _jpeg()
        url = f"http://127.0.0.1:{port}/v1/models/{desc.name}:predict"
        with httpx.Client(timeout=30) as http, ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: http.post(url, content=image).status_code, range(args.requests)))
        assert codes.count(200) == len(codes), f"serving answered {set(codes)}"
        rows.append(("serving pod", f"after {args.requests} requests from 4 clients", peak_rss(serve.pid, 2.0)))
        rows.append(("serving pod", "peak (VmHWM)", vm_hwm(serve.pid)))
        stop(serve, timeout=20)

        headless = _spawn(["run", "--headless", "--bundle", str(bundle), "--data-dir", str(data)], _env({}), started)
        time.sleep(1.0)
        hub.wait(lambda: len(hub.reported) > 0 and one(hub.reported[-1]).active is not None, 60, "headless active")
        rows.append(("agent --headless (before)", "model held in the agent pod", peak_rss(headless.pid, 2.0)))
        stop(headless, timeout=20)

        out = subprocess.run([sys.executable, "-c", RAW, str(onnx_path)], capture_output=True, check=True)
        raw_rss = int(out.stdout.decode().split()[-2])  # (its ru_maxrss is the parent's: Linux keeps it over exec)
    finally:
        stop(*started, timeout=20)
        k8s.stop()
        hub.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"model: {desc.name} {desc.version} ({model_mib:.1f} MiB on disk)")
    print(f"raw baseline, a bare onnxruntime process with the same model: RSS {raw_rss / MIB:.0f} MiB")
    print()
    print("| process | when | RSS | vs raw onnxruntime process |")
    print("| --- | --- | ---: | ---: |")
    for who, when, value in rows:
        print(f"| {who} | {when} | {value / MIB:.0f} MiB | {value / raw_rss:.2f}x |")


if __name__ == "__main__":
    main()

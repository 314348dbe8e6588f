"""Agent footprint: resident memory and time from process start to ready, with the sample classifier.

    .venv/bin/python benchmarks/footprint.py [--repeat 3]

Runs a real Mosquitto and the hub stand-in of the tests (tests/support/hubside.py). The agent runs as
`python -m agent run`, measured in both serving modes: `--headless` (no HTTP API) and the default (the
inference API of agent/api in the same process, on a free port). Two agent scenarios:

  restart - the model is already in the store: process start -> first reported state with it active
            (load, warm-up, golden check, MQTT connect, birth, report);
  deploy  - an empty device: desired state published -> reported active (download, verify, activate).

Raw baseline, same run: a bare Python process that imports onnxruntime, creates one session for the same
file and runs it once (no MQTT, no checks). Ratios are agent / baseline. Goals: RSS <= 150 MB, ready <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from models.cli import build_samples  # noqa: E402
from models.descriptor import ModelDescriptor  # noqa: E402
from tests.support.broker import Broker, find_mosquitto, free_port  # noqa: E402
from tests.support.hubside import HubSide, one  # noqa: E402
from tests.support.procs import peak_rss, stop, vm_hwm  # noqa: E402

RAW = """
import sys, time, resource
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
s.run(None, {"image": np.zeros((1, 3, 224, 224), dtype=np.float32)})
import psutil
print(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    env["EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S"] = "3600"
    return env


MODES = {"headless": ["--headless"], "with API": ["--api-host", "127.0.0.1", "--api-port", "0"]}


def _spawn(bundle: Path, data: Path, mode: str, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Start the agent in `mode`, noted in `started` (stopped at the end even when a step fails)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", *MODES[mode], "--bundle", str(bundle), "--data-dir", str(data),
         "--log-level", "warning"],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started.append(proc)
    return proc


def _active_since(hub: HubSide, first: int) -> bool:
    """Whether a report from the `first`-th on shows the model active (the agent just started is ready)."""
    return any(one(r).active for r in hub.reported[first:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="restarts measured (median reported)")
    args = ap.parse_args()
    binary = find_mosquitto()
    if binary is None:
        print("mosquitto is not installed: apt-get install mosquitto")
        return
    work = Path(tempfile.mkdtemp(prefix="edgefleet-footprint-"))
    broker = Broker(binary, work / "mosquitto", free_port())
    broker.start()
    hub = HubSide(broker.host, broker.port, f"bench/{uuid.uuid4().hex[:8]}/fleet/v1", chunk_size=256 * 1024)
    started: list[subprocess.Popen[bytes]] = []
    try:
        onnx_path, yaml_path = build_samples(work / "samples")[:2]
        desc = ModelDescriptor.load(yaml_path)
        model_mib = onnx_path.stat().st_size / (1 << 20)
        device = "bench-001"
        bundle = work / "bundle.json"
        hub.bundle(device, broker.url).save(bundle)
        data = work / "data"

        # deploy onto an empty device (headless)
        proc = _spawn(bundle, data, "headless", started)
        hub.wait(lambda: any(s.state == "online" for s in hub.statuses), timeout=60, what="birth")
        t0 = time.perf_counter()
        hub.publish_desired(device, hub.desired(device, 1, hub.model_ref(onnx_path, desc)))
        hub.wait_active(desc.version, timeout=120)
        deploy_s = time.perf_counter() - t0
        stop(proc, timeout=20)

        results: dict[str, tuple[list[float], list[int], list[int]]] = {}
        for mode in MODES:
            ready: list[float] = []
            rss: list[int] = []
            hwm: list[int] = []
            for _ in range(args.repeat):
                before = len(hub.reported)
                t0 = time.perf_counter()
                proc = _spawn(bundle, data, mode, started)
                hub.wait(partial(_active_since, hub, before), timeout=60, what="ready")
                ready.append(time.perf_counter() - t0)
                rss.append(peak_rss(proc.pid, 1.0))  # settled after ready
                hwm.append(vm_hwm(proc.pid))
                stop(proc, timeout=20)
            results[mode] = (ready, rss, hwm)

        raw_s, raw_rss, raw_hwm = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", RAW, str(onnx_path)], capture_output=True, check=True)
            raw_s.append(time.perf_counter() - t0)
            now_raw, high_raw = (int(v) for v in out.stdout.decode().split()[-2:])
            raw_rss.append(now_raw)
            raw_hwm.append(high_raw)
    finally:
        stop(*started, timeout=20)
        hub.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    mib = 1 << 20
    r_raw, m_raw, h_raw = statistics.median(raw_s), statistics.median(raw_rss), statistics.median(raw_hwm)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"model: {desc.name} {desc.version} ({model_mib:.1f} MiB), median of {args.repeat}")
    print()
    print("| agent mode | measure | agent | raw onnxruntime process | ratio | goal |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for mode, (ready, rss, hwm) in results.items():
        r, m, h = statistics.median(ready), statistics.median(rss), statistics.median(hwm)
        print(f"| {mode} | RSS after ready | {m / mib:.0f} MiB ({m / 1e6:.0f} MB) | {m_raw / mib:.0f} MiB | "
              f"{m / m_raw:.2f}x | <= 150 MB ({'met' if m <= 150e6 else 'missed'}) |")  # fmt: skip
        print(f"| {mode} | peak RSS (VmHWM) | {h / mib:.0f} MiB | {h_raw / mib:.0f} MiB | {h / h_raw:.2f}x | |")
        print(f"| {mode} | start -> ready (model in store) | {r:.2f} s | {r_raw:.2f} s | {r / r_raw:.2f}x | "
              f"<= 2 s ({'met' if r <= 2 else 'missed'}) |")  # fmt: skip
    print(f"| headless | deploy: desired -> active (download + activate) | {deploy_s:.2f} s | | | |")


if __name__ == "__main__":
    main()

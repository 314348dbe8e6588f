"""Enrolment: N devices one request each (the way before batch enrolment) vs one `edgefleet device add --count N`.

Each row runs a fresh product hub (`hub.runtime.Hub` + REST API, its own supervised Mosquitto whose password
and ACL files are rewritten for every enrolment request) in its own process:
  single - N x `POST /api/v1/devices` from one HTTP client, bundles written to a folder;
  batch  - one `edgefleet device add --count N --pattern ... --out DIR` (a process of its own: CLI start,
           one `POST /api/v1/devices/batch`, N bundle files), timed from its start to its exit.
Both end with N enrolled devices, N bundles on disk and a broker that knows them (checked). Ratio = batch /
single in the same run.

    .venv/bin/python benchmarks/enrol.py [--devices 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from fleet.bundle import DeviceBundle  # noqa: E402
from tests.support.procs import stop  # noqa: E402


def hub_worker(data: Path) -> None:
    """Run the product hub with its local broker; print the API URL and admin token."""
    from hub.api.server import api_server  # noqa: PLC0415
    from hub.runtime import Hub, init_hub  # noqa: PLC0415
    from hub.settings import HubSettings  # noqa: PLC0415

    settings = HubSettings.model_validate({"data_dir": data, "api": {"host": "127.0.0.1", "port": 0}})
    token = init_hub(settings)
    hub = Hub(settings)
    hub.start()
    api = api_server(hub)
    api.start()
    auth = hub.security.broker_auth
    assert auth is not None, "the local broker has per-device accounts"
    print(json.dumps({"api": api.url, "token": token, "passwords": str(auth.password_file)}), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    api.stop()
    hub.stop()


class RunningHub:
    def __init__(self, work: Path) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_hub", str(work / "hub")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.api, self.token, self.passwords = info["api"], info["token"], Path(info["passwords"])

    def close(self) -> None:
        stop(self.proc)


def _check(hub: RunningHub, n: int, folder: Path) -> None:
    with httpx.Client(base_url=hub.api, headers={"Authorization": f"Bearer {hub.token}"}, timeout=120) as http:
        listed = http.get("/api/v1/devices").json()
    assert len(listed) == n, f"{len(listed)} devices enrolled, expected {n}"
    bundles = list(folder.glob("*.json"))
    assert len(bundles) == n
    assert DeviceBundle.load(bundles[0]).mqtt_password
    accounts = hub.passwords.read_text().count("\n")
    assert accounts >= n, f"the broker's password file has {accounts} accounts, expected {n} devices"


def single(work: Path, n: int) -> float:
    hub = RunningHub(work)
    try:
        folder = work / "bundles"
        folder.mkdir()
        headers = {"Authorization": f"Bearer {hub.token}"}
        t = time.perf_counter()
        with httpx.Client(base_url=hub.api, headers=headers, timeout=120) as http:
            for i in range(n):
                r = http.post("/api/v1/devices", json={"id": f"cam-{i:05d}", "labels": {"site": "bench"}})
                r.raise_for_status()
                DeviceBundle.model_validate(r.json()["bundle"]).save(folder / f"cam-{i:05d}.bundle.json")
        elapsed = time.perf_counter() - t
        _check(hub, n, folder)
        return elapsed
    finally:
        hub.close()


def batch(work: Path, n: int) -> float:
    hub = RunningHub(work)
    try:
        folder = work / "bundles"
        cmd = [sys.executable, "-m", "edgefleet_cli", "device", "add", "--count", str(n), "--pattern", "cam-{n:05d}",
               "--label", "site=bench", "--out", str(folder), "--url", hub.api, "--token", hub.token]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(ROOT)})
        elapsed = time.perf_counter() - t
        _check(hub, n, folder)
        return elapsed
    finally:
        hub.close()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_hub":
        hub_worker(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-enrol-") as tmp:
        for r in range(args.repeat):
            s = single(Path(tmp) / f"s{r}", args.devices)
            b = batch(Path(tmp) / f"b{r}", args.devices)
            rounds.append((s, b))
            print(f"  round {r + 1}: single {s:.1f} s, batch {b:.2f} s, {b / s:.3f}", file=sys.stderr, flush=True)
    s_med = statistics.median(s for s, _ in rounds)
    b_med = statistics.median(b for _, b in rounds)
    ratio = statistics.median(b / s for s, b in rounds)
    print(f"# enrol: {args.devices} devices, median of {args.repeat} rounds; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")  # fmt: skip
    print("| devices | one request each (s) | one `device add --count` (s) | ratio | goal |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {args.devices} | {s_med:.1f} | {b_med:.2f} | {ratio:.3f} | < 0.10 |")


if __name__ == "__main__":
    main()

"""`edgefleet agent run` wiring: cluster mode without a cluster, and an API port already taken, fail clearly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fleet.bundle import DeviceBundle
from fleet.signing import HubSigningKey
from tests.agent.conftest import REPO


def _bundle(tmp_path: Path) -> Path:
    path = tmp_path / "b.json"
    DeviceBundle(
        device_id="cam-1", broker_url="mqtt://127.0.0.1:9", mqtt_username="cam-1", mqtt_password="x",
        hub_public_key=HubSigningKey.generate().public.to_text(),
    ).save(path)  # fmt: skip
    return path


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "KUBECONFIG"))}
    base |= {"PYTHONPATH": str(REPO), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", "--bundle", str(_bundle(tmp_path)), "--data-dir", str(tmp_path / "d"),
         *args],
        cwd=REPO, env=base, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cluster_mode_without_kubernetes_config_is_a_clear_error(tmp_path: Path) -> None:
    res = _run(tmp_path, "--cluster", "--api-port", "0", KUBECONFIG=str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "error:" in res.stderr and "Traceback" not in res.stderr


def test_api_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _run(tmp_path, "--api-host", "127.0.0.1", "--api-port", str(port))
    assert res.returncode == 2
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    # the port and what changes it, not a bare `[Errno 98]`
    assert f"port {port} on 127.0.0.1 is taken" in res.stderr and "Errno" not in res.stderr
    assert "--api-port" in res.stderr and "EDGEFLEET_API_PORT" in res.stderr

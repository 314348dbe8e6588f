"""The agent image ships the CLI without the hub: the client commands work where `hub` cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# what the agent image is: every package but `hub` (an import of it fails as it would there)
_WITHOUT_HUB = """
import sys
from importlib.abc import MetaPathFinder

class NoHub(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hub" or name.startswith("hub."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoHub())
sys.argv = ["edgefleet", *sys.argv[1:]]
import edgefleet_cli
assert "hub" not in sys.modules
edgefleet_cli.main()
"""


def _edgefleet_without_hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_HUB, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def test_client_commands_run_without_the_hub_server_code() -> None:
    res = _edgefleet_without_hub("hub", "--help")
    assert res.returncode == 0, res.stderr
    assert "token" in res.stdout and "serve" not in res.stdout and "init" not in res.stdout
    for command in (["device", "list", "--help"], ["rollout", "start", "--help"], ["model", "push", "--help"]):
        res = _edgefleet_without_hub(*command)
        assert res.returncode == 0 and "--url" in res.stdout, (command, res.stderr)
    # and a client command reaches for the hub over HTTP, failing clearly when nothing listens
    res = _edgefleet_without_hub("device", "list", "--url", "http://127.0.0.1:9")
    assert res.returncode == 1 and "unreachable" in res.stderr


def test_with_the_hub_installed_its_server_commands_join() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", "hub", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0 and all(c in res.stdout for c in ("init", "serve", "token")), res.stderr


def test_the_agent_image_leaves_the_hub_out() -> None:
    dockerfile = (ROOT / "Dockerfile.agent").read_text()
    assert "COPY hubclient ./hubclient" in dockerfile and "COPY hub " not in dockerfile
    admitted = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert "!hubclient/" in admitted and "!hub/" not in admitted

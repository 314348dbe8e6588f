"""An agent as a real process (`python -m agent run ...`) for end-to-end, fault and security tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.procs import stop

REPO = Path(__file__).resolve().parents[2]

AGENT_ENV = {  # fast reconnects and re-wants, no telemetry unless a test asks, one warm-up run
    "EDGEFLEET_AGENT_LINK_BACKOFF_INITIAL_S": "0.05",
    "EDGEFLEET_AGENT_LINK_BACKOFF_MAX_S": "0.5",
    "EDGEFLEET_AGENT_LINK_KEEPALIVE_S": "5",
    "EDGEFLEET_AGENT_DOWNLOAD_REWANT_AFTER_S": "0.5",
    "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "3600",
    "EDGEFLEET_AGENT_ACTIVATION_WARMUP_RUNS": "1",
    "EDGEFLEET_AGENT_ACTIVATION_REPORT_INTERVAL_S": "0.05",
}


def agent_env(**env: str) -> dict[str, str]:
    """The environment of an agent process: this one's without EDGEFLEET_* settings, `AGENT_ENV`, then `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return full_env | AGENT_ENV | env | {"PYTHONPATH": str(REPO)}


def agent_command(bundle: Path, data_dir: Path, *extra: str) -> list[str]:
    """Argv of `python -m agent run` on a bundle and data dir (`extra`: more options)."""
    run = ["run", "--bundle", str(bundle), "--data-dir", str(data_dir), "--log-level", "info", *extra]
    return [sys.executable, "-m", "agent", *run]


class AgentProc:
    """A started agent process; its output goes to `log`. `port` is its inference API port, if it serves one."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, port: int | None = None, cwd: Path = REPO
    ) -> None:
        """`cwd`: the source tree whose `agent` package runs (another version's, for mixed-version tests)."""
        self.port = port
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=self._log)

    @property
    def api(self) -> str:
        """The inference API's base URL."""
        if self.port is None:
            raise RuntimeError("this agent was started without an API port")
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM and wait (the agent must stop cleanly); returns the exit status."""
        code = stop(self.proc, timeout=20)[0]
        self._log.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")

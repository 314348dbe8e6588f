"""An agent as a real process (`python -m agent run ...`) for end-to-end and fault tests."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class AgentProc:
    """A started agent process; its output goes to `log`. `port` is its inference API port, if it serves one."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=self._log)

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

    def stop(self) -> int:
        """SIGTERM and wait (the agent must stop cleanly); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

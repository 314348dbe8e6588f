"""A real Mosquitto broker for tests: generated config, free loopback port, started and stopped by fixtures."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import stop


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


# Servers started by tests listen on ports outside the kernel's ephemeral range: a port the kernel handed out
# (bind to 0) and the test released could be taken, before the server binds it or while a killed server is
# restarted on it, as the local port of any outgoing connection (an MQTT client, an HTTP request), and the
# server then fails with "Address already in use". Each test process walks its own shuffled order of the
# ports below that range and never hands one out twice; the workers of one parallel run (pytest-xdist, which
# names them gw0, gw1, ...) each take their own share, so one never picks a port another has released only
# to restart its server on it.
_EPHEMERAL = _ephemeral_range()
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_CANDIDATES = [p for p in range(10000, 32768) if p not in _EPHEMERAL][_WORKER::_WORKERS]
random.Random(os.getpid()).shuffle(_CANDIDATES)
_NEXT = iter(_CANDIDATES)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the ephemeral range, not handed out before in this process."""
    for port in _NEXT:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (another test run on this machine, another service)
            return port
    raise RuntimeError("no free TCP port left below the ephemeral range")


@dataclass
class Broker:
    """One running Mosquitto process on a loopback port."""

    binary: str
    workdir: Path
    port: int
    max_packet_size: int = 8 * 1024 * 1024
    proc: subprocess.Popen[bytes] | None = None
    password_file: Path | None = None  # with acl_file: no anonymous access, the ACL enforced
    acl_file: Path | None = None
    tls: tuple[Path, Path, Path] | None = None  # (CA, certificate, key): an mqtts listener
    also_listen: tuple[str, ...] = ()  # more addresses (network-namespace hosts' side of their links)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def config(self) -> str:
        return "\n".join(
            [
                *(f"listener {self.port} {addr}" for addr in ("127.0.0.1", *self.also_listen)),
                *self._security_lines(),
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
                f"message_size_limit {self.max_packet_size}",
                "max_queued_messages 100000",
                "max_inflight_messages 0",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "",
            ]
        )

    def _security_lines(self) -> list[str]:
        lines = []
        if (self.password_file or self.tls) and os.geteuid() == 0:
            lines.append("user root")  # Mosquitto's own user could not read files in pytest's 0700 directories
        if self.tls is not None:
            lines += [f"cafile {self.tls[0]}", f"certfile {self.tls[1]}", f"keyfile {self.tls[2]}"]
        if self.password_file is None:
            return [*lines, "allow_anonymous true"]
        return [*lines, "allow_anonymous false", f"password_file {self.password_file}", f"acl_file {self.acl_file}"]

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop(self.proc, timeout=5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the broker (a crash, not a clean shutdown)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

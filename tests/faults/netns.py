"""Network hosts of their own for agents: a Linux network namespace joined to this one by a veth pair.

    host = NetHost.create()          # namespace + veth pair + a /30, names unique to this process
    host.shape(rate="2mbit")         # tc tbf on the hub's side: what reaches the agent is shaped
    host.partition() / host.heal()   # ip link set down / up
    ["ip", "netns", "exec", host.ns, ...] runs a process on the agent's host (host.prefix)
    host.destroy()                   # the namespace, and with it both ends of the pair

Needs root and iproute2; `tc ... netem` is not available here, `tbf` is. No `ping`: reachability is
probed with a TCP connection from inside the namespace (`probe`). Names carry the pid and a counter, so
parallel test processes (and the other suites' namespaces) never collide; addresses come from
172.16.0.0/12, derived from the pid and checked against the addresses already in use.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from dataclasses import dataclass

_counter = itertools.count(1)


class NetnsUnavailable(RuntimeError):
    """The kernel (or missing privileges or tools) refuses network namespaces."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _tc(*args: str) -> None:
    r = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {r.stderr.strip()}")


def _free_subnet() -> tuple[str, str]:
    """(hub side, agent side) addresses of a /30 no interface here uses yet."""
    used = _ip("-o", "-4", "addr", "show").stdout
    pid = os.getpid()
    for n in range(256):
        second = 16 + (pid + n) % 16
        third = (pid // 16 + n * 7) % 256
        for fourth in range(0, 256, 4):
            prefix = f"172.{second}.{third}."
            if f"{prefix}{fourth + 1}/" not in used and f"{prefix}{fourth + 2}/" not in used:
                return f"{prefix}{fourth + 1}", f"{prefix}{fourth + 2}"
    raise RuntimeError("no free /30 in 172.16.0.0/12")


@dataclass
class NetHost:
    """One namespace (the agent's host) and the veth pair to it; `host_ip` is the hub's side."""

    ns: str
    host_if: str
    agent_if: str
    host_ip: str
    agent_ip: str

    @classmethod
    def create(cls) -> NetHost:
        """Make the namespace, the pair and the addresses. NetnsUnavailable when the kernel refuses."""
        n = next(_counter)
        ns, host_if, agent_if = f"ef{os.getpid()}n{n}", f"ef{os.getpid()}h{n}", f"ef{os.getpid()}a{n}"
        try:
            made = _ip("netns", "add", ns, check=False)
        except FileNotFoundError as e:
            raise NetnsUnavailable(f"iproute2 is not installed ({e})") from e
        if made.returncode != 0:
            raise NetnsUnavailable(f"`ip netns add` refused: {made.stderr.strip()} (needs root and netns support)")
        host_ip, agent_ip = _free_subnet()
        h = cls(ns, host_if, agent_if, host_ip, agent_ip)
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", agent_if)
            _ip("link", "set", agent_if, "netns", ns)
            _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", ns, "addr", "add", f"{agent_ip}/30", "dev", agent_if)
            _ip("-n", ns, "link", "set", agent_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            h.destroy()
            raise
        return h

    @property
    def prefix(self) -> list[str]:
        """Prepend to a command line to run it on the agent's host."""
        return ["ip", "netns", "exec", self.ns]

    def shape(self, rate: str, *, burst: str = "32kb", latency: str = "200ms") -> None:
        """Limit what the hub's side sends to the agent to `rate` (tc tbf; e.g. "2mbit")."""
        _tc("qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", rate, "burst", burst, "latency", latency)

    def partition(self) -> None:
        """Cut the link (the agent's side loses its carrier too)."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def probe(self, host: str, port: int, timeout: float = 5.0) -> bool:
        """Whether a TCP connection from the agent's host to host:port succeeds (no ping here)."""
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout}).close()"
        r = subprocess.run([*self.prefix, sys.executable, "-c", code], capture_output=True, timeout=timeout + 30,
                           check=False)  # fmt: skip
        return r.returncode == 0

    def destroy(self) -> None:
        """Remove the namespace (its end of the pair goes with it) and our end, if still there."""
        with contextlib.suppress(Exception):
            _ip("netns", "delete", self.ns, check=False)
        with contextlib.suppress(Exception):
            _ip("link", "delete", self.host_if, check=False)

"""Separate network hosts for tests: Linux network namespaces joined to this host by veth pairs (root only).

    with NetLab() as lab:                    # or the `netlab` fixture (tests/conftest.py)
        a = lab.host("a")                    # namespace with its own address; lab.host_ip(a) is this side
        proc = a.popen([...])                # a process on that host
        a.cut(); a.heal()                    # `ip link set down/up` on the link: a partition, then its end
        a.drop(); a.undrop()                 # a silent partition: frames lost on the way, senders unaware
        a.shape("2mbit")                     # `tc tbf` on this side: what this host sends it is rate-limited
        a.probe(ip, port)                    # a TCP connection from inside (no `ping` here)

Every host gets a /30 of its own: this side `.1` (where brokers and databases the test starts listen), the
namespace `.2`, with a default route through this side. Names carry this process's id and a counter, so
parallel test runs on one machine never collide. Everything is removed on exit, even after a failure:
processes left in a namespace are killed, then the namespace (and with it its veth pair) is deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

_COUNTER = itertools.count()
_NOWHERE = "02:00:00:00:00:01"  # a locally administered MAC address no interface here has (`NetHost.drop`)


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces (not root, no `ip`, the kernel refuses), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"efprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (OSError, RuntimeError) as e:
        return f"cannot create a network namespace: {e}"
    with contextlib.suppress(OSError, RuntimeError):
        _ip("netns", "del", probe)
    return None


@dataclass
class NetHost:
    """One namespace: `ip` is its address, `host_ip` this side of its link."""

    name: str
    veth: str  # this side's interface
    ip: str
    host_ip: str
    peer: str = ""  # the namespace's end of the link
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside the namespace (same filesystem, own network)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)
        self.procs.append(proc)
        return proc

    @property
    def prefix(self) -> list[str]:
        """Prepend to a command line to run it on this host (for helpers that start their own processes)."""
        return ["ip", "netns", "exec", self.name]

    def shape(self, rate: str, *, burst: str = "32kb", latency: str = "200ms") -> None:
        """Limit what this side sends to the host to `rate` (`tc qdisc ... tbf`; `netem` is not available)."""
        cmd = ["tc", "qdisc", "replace", "dev", self.veth, "root", "tbf", "rate", rate, "burst", burst,
               "latency", latency]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def probe(self, ip: str, port: int, timeout: float = 5.0) -> bool:
        """Whether a TCP connection from this host to ip:port succeeds."""
        code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()"
        done = subprocess.run([*self.prefix, sys.executable, "-c", code], capture_output=True,
                              timeout=timeout + 30, check=False)  # fmt: skip
        return done.returncode == 0

    def cut(self) -> None:
        """Partition the host: its link goes down (connections stall; nothing is reset)."""
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        """End the partition: the link comes back up (stalled connections resume)."""
        _ip("link", "set", self.veth, "up")

    def drop(self) -> None:
        """Partition the host silently: both ends keep sending, and every frame is lost on the way (each end's
        neighbour entry for the other names a MAC address nobody has, so the receiver discards the frame).

        Unlike `cut`, where the sender's own link is down (the kernel retries every 0.5 s and a connection
        resumes at once after `heal`), this is what a lossy network does: TCP does not know, and its
        retransmissions back off exponentially. `undrop` ends it.
        """
        _ip("neigh", "replace", self.ip, "lladdr", _NOWHERE, "dev", self.veth, "nud", "permanent")
        _ip("neigh", "replace", self.host_ip, "lladdr", _NOWHERE, "dev", self.peer, "nud", "permanent", netns=self.name)

    def undrop(self) -> None:
        """End a `drop`: the neighbour entries go, addresses are resolved again (ARP) at the next frame."""
        _ip("neigh", "del", self.ip, "dev", self.veth)
        _ip("neigh", "del", self.host_ip, "dev", self.peer, netns=self.name)


class NetLab:
    """Namespaces made for one test, removed on exit."""

    def __init__(self) -> None:
        self.tag = f"ef{os.getpid() % 100000}x{next(_COUNTER)}"
        self.hosts: list[NetHost] = []
        # a /24 picked from the pid and the counter, then a /30 per host: parallel runs rarely share it (and
        # never a name; a clash of addresses fails loudly at `ip addr add`)
        self._base = f"10.{100 + os.getpid() % 150}.{(os.getpid() // 150 + 7 * next(_COUNTER)) % 250}"

    def host(self, role: str) -> NetHost:
        n = len(self.hosts)
        name = f"{self.tag}{role}"[:15]
        veth, peer = f"{self.tag}{n}h"[:15], f"{self.tag}{n}n"[:15]
        base = self._base
        h = NetHost(name=name, veth=veth, ip=f"{base}.{4 * n + 2}", host_ip=f"{base}.{4 * n + 1}", peer=peer)
        self.hosts.append(h)  # before creating anything: cleanup removes what exists
        _ip("netns", "add", name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", name)
        _ip("addr", "add", f"{h.host_ip}/30", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("addr", "add", f"{h.ip}/30", "dev", peer, netns=name)
        _ip("link", "set", peer, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        _ip("route", "add", "default", "via", h.host_ip, netns=name)
        return h

    def close(self) -> None:
        for h in self.hosts:
            for proc in h.procs:
                if proc.poll() is None:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
            with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
                for pid in _ip("netns", "pids", h.name).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(OSError, RuntimeError):
                _ip("netns", "del", h.name)
            with contextlib.suppress(OSError, RuntimeError):
                _ip("link", "del", h.veth)  # gone with the namespace already, unless it never moved there

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

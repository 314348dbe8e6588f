"""A local Mosquitto that `edgefleet hub serve` starts and supervises when no broker URL is configured.

Generated config: a loopback listener for devices (mqtts when TLS files are given), persistence on, a
message size limit, and, when `auth` files are given, no anonymous access: the password and ACL files
hub.acl writes from the registry, re-read on `reload()` (SIGHUP) without dropping connections. The
supervisor restarts Mosquitto if it dies and stops it when the hub stops.

With auth, a device's session is tied to its identity: the device listener sets `use_username_as_clientid`,
so whatever client id a device sends, its session is named by its username (its device id). A device
that sends another device's client id gets its own session, never the other's: the other stays connected
and its will does not fire. The hub itself connects to a second listener on loopback whose password file
holds only the hub's account (`hub_url`), so its client ids (one per replica) stay its own and no device
can log in there to pick a client id of its choosing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from hub.acl import HUB_PASSWORD_FILE
from hub.errors import BrokerError
from hub.settings import BrokerSettings
from hub.tls import TlsFiles
from infra.server import bind_error


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function making the broker get SIGTERM when the hub dies, even by SIGKILL (Linux only).

    Without it a killed hub leaves its Mosquitto running and holding the port. libc is looked up here, in the
    parent, so the child only makes the prctl(2) call. The signal fires when the spawning thread exits: the
    supervisor restarts the broker from its own long-lived thread.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_pdeathsig


_DIE_WITH_PARENT = _die_with_parent()
log = logging.getLogger(__name__)


def find_mosquitto(configured: str | None = None) -> str:
    """The mosquitto binary: the configured path, then PATH, then /usr/sbin. Raises BrokerError if absent."""
    candidates = [configured] if configured else []
    found = shutil.which("mosquitto")
    candidates += [found] if found else []
    candidates += ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto), and no broker URL is configured")


_PORT_TRIES = 3  # starts on newly picked ports when a picked one was taken before Mosquitto bound it


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_free(host: str, port: int) -> None:
    """Raise BrokerError, in one line naming the setting, when the configured port is taken (on Debian the
    `mosquitto` package starts a system broker on 1883): Mosquitto would exit at once with its log as reason."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            flag, env = "--broker-port", "EDGEFLEET_HUB_BROKER_LOCAL_PORT"
            raise BrokerError(f"local broker: {bind_error(e, host, port, flag=flag, env=env)}") from e


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP socket listening on `port`."""
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


class LocalBroker:
    """One supervised Mosquitto process."""

    def __init__(
        self,
        settings: BrokerSettings,
        workdir: Path,
        *,
        auth: tuple[Path, Path] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth  # (password file, ACL file)
        self.tls = tls
        self.workdir = workdir
        self.binary = find_mosquitto(settings.mosquitto_binary)
        self.host = settings.local_host
        self._pick_ports()
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def _pick_ports(self) -> None:
        """The configured port, or a free one (`local_port` 0); the hub's own listener always takes a free one."""
        self.port = self.settings.local_port or _free_port(self.host)
        self.hub_port = _free_port("127.0.0.1") if self.auth is not None else self.port

    @property
    def _picks_ports(self) -> bool:
        """Whether a listener's port is picked free at start (it can be taken before Mosquitto binds it)."""
        return self.settings.local_port == 0 or self.auth is not None

    @property
    def url(self) -> str:
        """The devices' listener."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def hub_url(self) -> str:
        """The hub's own listener (loopback, the hub's account only); the devices' one without auth."""
        return "mqtt://127.0.0.1:" + str(self.hub_port) if self.auth is not None else self.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def config_text(self) -> str:
        """The generated mosquitto.conf."""
        return "\n".join(
            [
                "# generated by edgefleet hub serve; edits are overwritten",
                *self._listener_lines(),
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 30",
                f"message_size_limit {self.settings.max_message_bytes}",
                "max_queued_messages 100000",
                *self._expiry_lines(),
                f"max_inflight_messages {self.settings.max_inflight_messages}",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "",
            ]
        )

    def _expiry_lines(self) -> list[str]:
        days = self.settings.session_expiry_days
        return [] if days is None else [f"persistent_client_expiration {days}d"]

    def _listener_lines(self) -> list[str]:
        lines = []
        if os.geteuid() == 0:
            # as root Mosquitto drops to user `mosquitto`, which cannot read the hub's private files: keep the
            # hub's user (run the hub as an unprivileged user in production; the broker then runs as that user)
            lines.append("user root")
        tls = []
        if self.tls is not None:
            tls = [f"cafile {self.tls.ca_cert}", f"certfile {self.tls.broker_cert}",
                   f"keyfile {self.tls.broker_key}", "tls_version tlsv1.2"]  # fmt: skip
        if self.auth is None:
            return [*lines, f"listener {self.port} {self.host}", *tls, "allow_anonymous true"]
        passwords, acl = self.auth
        return [
            *lines,
            "per_listener_settings true",
            "# devices: a session is named by the account (the device id), whatever client id is sent",
            f"listener {self.port} {self.host}", *tls, "use_username_as_clientid true",
            "allow_anonymous false", f"password_file {passwords}", f"acl_file {acl}",
            "# the hub: loopback, its own account only, its own client ids (one per replica)",
            f"listener {self.hub_port} 127.0.0.1",
            "allow_anonymous false", f"password_file {passwords.with_name(HUB_PASSWORD_FILE)}", f"acl_file {acl}",
        ]  # fmt: skip

    def reload(self) -> None:
        """Make Mosquitto re-read its password and ACL files (SIGHUP): revoked accounts are disconnected."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def start(self, timeout: float = 10.0) -> None:
        """Start Mosquitto, wait until it listens, and start the supervisor thread.

        A port picked free can be taken before Mosquitto binds it (another process listening, or the kernel
        handing it out as the source port of a connection): Mosquitto then exits at once, and it is started
        again on newly picked ports, up to `_PORT_TRIES` times. Restarts keep the ports (devices know them).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.settings.local_port:
            _check_free(self.host, self.settings.local_port)
        for attempt in range(_PORT_TRIES):
            (self.workdir / "mosquitto.conf").write_text(self.config_text())
            try:
                self._spawn(timeout)
                break
            except BrokerError as e:
                exited = self._proc is not None and self._proc.poll() is not None
                if not (exited and self._picks_ports) or attempt == _PORT_TRIES - 1:
                    raise
                log.warning("broker: mosquitto could not start on the ports picked (%s); picking others", e)
                self._pick_ports()
        self._watcher = threading.Thread(target=self._watch, name="hub-broker-supervisor", daemon=True)
        self._watcher.start()

    def _spawn(self, timeout: float) -> None:
        with self._lock, (self.workdir / "mosquitto.log").open("ab") as logf:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.workdir / "mosquitto.conf")],
                stdout=logf,
                stderr=logf,
                preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509  (one async-signal-safe syscall in the child)
                # its own process group: a Ctrl-C on the hub's terminal reaches the hub, which stops the broker
                # in order, and not the broker, whose exit the supervisor would take for a crash and restart
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            if _listens(self._proc.pid, self.port):  # Mosquitto itself: a connect would also reach a squatter
                log.info("broker: mosquitto %d listening on %s", self._proc.pid, self.url)
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on {self.url} within {timeout:.0f}s: {self.log_tail()}")

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            log.warning("broker: mosquitto exited with %s; restarting", proc.returncode)
            if self._stopping.wait(self.settings.restart_backoff_s):
                return
            try:
                self._spawn(10.0)
                self.restarts += 1
            except BrokerError:
                log.exception("broker: restart failed; trying again")

    def stop(self) -> None:
        """Stop supervising and terminate Mosquitto."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5)
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

"""A real PostgreSQL server for tests: Debian's `postgresql` package (scripts/ensure-postgresql.sh installs it
under `make test`), a cluster made by `initdb` in a temporary directory, started by a fixture on a free port.

PostgreSQL refuses to run as root, so as root the server runs as the package's `postgres` user in a directory
of its own outside pytest's (root-only) temporary tree. Durability is switched off (`fsync`, full page writes):
these clusters live for one test session. Each store test gets a database of its own (`create_database`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.broker import free_port


def find_postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (with initdb and pg_ctl), or None."""
    env = os.environ.get("EDGEFLEET_PG_BIN")
    if env:
        return Path(env)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresServer:
    """One PostgreSQL cluster and its server process.

    Args:
        bindir: where initdb, pg_ctl and postgres are.
        listen: addresses the server listens on (loopback; a multi-host test adds its hosts' address).
        port: TCP port (free loopback port by default).
        durable: keep PostgreSQL's durability settings (benchmarks); tests switch them off.
    """

    def __init__(
        self, bindir: Path, *, listen: tuple[str, ...] = ("127.0.0.1",), port: int | None = None, durable: bool = False
    ) -> None:
        self.bindir = bindir
        self.durable = durable  # benchmarks: PostgreSQL's default durability (fsync, full page writes)
        self.listen = listen
        self.port = port or free_port()
        self.password = secrets.token_hex(12)
        self.root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.root / "data"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        """initdb, configure, start; returns once the server accepts connections."""
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, pwd.getpwnam(self._user).pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile), "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        pwfile.unlink()
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n"
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(
                f"listen_addresses = '{','.join(self.listen)}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 300\nshared_buffers = 32MB\n"
            )
            if not self.durable:
                f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres:{self.password}@{host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg  # noqa: PLC0415

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def block(self, url: str, *, blocked: bool = True) -> None:
        """Take the database at `url` away (every new connection refused, the open ones ended), or bring it back."""
        import psycopg  # noqa: PLC0415

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {'false' if blocked else 'true'}")
            if blocked:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

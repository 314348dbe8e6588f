"""Shared fixtures: a real Mosquitto on a free loopback port, unique topic prefixes, a real PostgreSQL server and
the store's database on each backend; the hypothesis profile of the run; the outcome table at its end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.store import Database
from tests.support.broker import Broker, find_mosquitto, free_port
from tests.support.fuzz import load_profile
from tests.support.netns import NetLab, netns_unavailable
from tests.support.outcomes import export, merge, print_table
from tests.support.postgres import PostgresServer, find_postgres_bin

PROFILE = load_profile()  # before any test module builds its hypothesis settings


def pytest_report_header() -> str:
    return f"hypothesis profile: {PROFILE} (make fuzz: randomised and longer; see tests/support/fuzz.py)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The security and fault outcome table of whatever this run recorded (tests/support/outcomes.py)."""
    print_table(terminalreporter)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker of a parallel run (pytest-xdist) hands its outcome rows to the controller, which prints the table."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["outcomes"] = export()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller of a parallel run adds each finished worker's outcome rows (none from a worker that died)."""
    merge(getattr(node, "workeroutput", {}).get("outcomes", []))


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Mark every hypothesis test `fuzz`, so `make fuzz` (pytest -m fuzz) finds them all."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """The mosquitto binary; broker tests skip without it, except under CI=true where that fails."""
    binary = os.environ.get("EDGEFLEET_MOSQUITTO") or find_mosquitto()
    if binary is None:
        message = (
            "mosquitto is not installed: broker tests need it "
            "(`make test` installs it as root, or run `apt-get install mosquitto`)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def broker(mosquitto_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the whole session. Tests isolate themselves with `topic_prefix`."""
    b = Broker(mosquitto_binary, tmp_path_factory.mktemp("mosquitto"), free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def private_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, for tests that kill or restart it."""
    b = Broker(mosquitto_binary, tmp_path / "mosquitto", free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so tests on the shared broker never see each other."""
    return f"test/{uuid.uuid4().hex[:12]}/fleet/v1"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (Debian's package); skipped without it, except under CI=true."""
    bindir = find_postgres_bin()
    if bindir is None:
        message = (
            "PostgreSQL is not installed: PostgreSQL store tests need it "
            "(`make test` installs it as root, or run `apt-get install postgresql`)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The store's database, once on each backend: an SQLite file, and a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return Database.sqlite(tmp_path / "hub.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return Database.from_url(server.create_database())


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """Network-namespace hosts for this test (tests/support/netns.py), removed afterwards even on failure.

    Skipped where the kernel or the user cannot make namespaces, except under CI=true where that fails."""
    why = netns_unavailable()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    with NetLab() as lab:
        yield lab

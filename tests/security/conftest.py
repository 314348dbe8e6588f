"""Security fixtures: a Mosquitto enforcing the hub's generated password and ACL files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hub.acl import acl_text, hub_account, password_text
from hub.credentials import mosquitto_hash, new_password
from tests.security.probe import Probe
from tests.support.broker import Broker, free_port
from tests.support.hub import running_hub

__all__ = ["running_hub"]


@dataclass
class AclBroker:
    """A real Mosquitto with the password and ACL files hub.acl generates, for devices of one prefix."""

    broker: Broker
    prefix: str
    hub_user: str
    hub_password: str
    passwords: dict[str, str] = field(default_factory=dict)

    def write(self, revoked: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        assert self.broker.password_file is not None and self.broker.acl_file is not None
        account = hub_account(self.broker.workdir)
        accounts = [(account.username, account.password_hash)]
        accounts += [(d, mosquitto_hash(p)) for d, p in self.passwords.items() if d not in revoked]
        self.broker.password_file.write_text(password_text(accounts))
        self.broker.acl_file.write_text(acl_text(self.prefix, account.username))

    def probe(self, user: str | None, *, v5: bool = False, password: str | None = None) -> Probe:
        """A client as `user` (a device id, "hub", or None for anonymous)."""
        if user == "hub":
            return Probe(self.broker.host, self.broker.port, self.hub_user, self.hub_password, v5=v5)
        pw = password if password is not None else self.passwords.get(user or "", None)
        return Probe(self.broker.host, self.broker.port, user, pw, v5=v5)


@pytest.fixture
def acl_broker(mosquitto_binary: str, tmp_path: Path, topic_prefix: str) -> Iterator[AclBroker]:
    """Mosquitto enforcing the generated ACL for devices cam-a and cam-b (and the hub's account)."""
    workdir = tmp_path / "acl-broker"
    workdir.mkdir()
    b = Broker(mosquitto_binary, workdir, free_port(), password_file=workdir / "passwords", acl_file=workdir / "acl")
    account = hub_account(workdir)
    ab = AclBroker(b, topic_prefix, account.username, account.password,
                   {"cam-a": new_password(), "cam-b": new_password()})  # fmt: skip
    ab.write()
    b.start()
    yield ab
    b.stop()

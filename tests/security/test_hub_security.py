"""The hub's own Mosquitto with the generated ACL, device revocation, TLS for MQTT and HTTPS for the API."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from agent.mqtt import MqttLink
from agent.settings import LinkSettings
from edgefleet_cli import app
from fleet.address import BrokerAddress
from fleet.bundle import DeviceBundle
from fleet.codec import encode
from fleet.messages import DeviceStatus
from hub.runtime import init_hub
from hub.tls import create_dev_pki
from tests.security.probe import Probe
from tests.support.hub import RunningHub, hub_settings, start_hub
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


@pytest.fixture
def own_broker_hub(tmp_path: Path, topic_prefix: str, mosquitto_binary: str) -> Iterator[RunningHub]:
    """A hub running its own supervised Mosquitto (the ACL on, as by default)."""
    h = start_hub(tmp_path / "hub", None, topic_prefix)
    yield h
    h.stop()


def _enrol(h: RunningHub, device_id: str, client: httpx.Client | None = None) -> DeviceBundle:
    if client is None:
        with h.client() as c:
            return _enrol(h, device_id, c)
    r = client.post("/api/v1/devices", json={"id": device_id})
    assert r.status_code == 201, r.text
    return DeviceBundle.model_validate(r.json()["bundle"])


def _probe(h: RunningHub, bundle: DeviceBundle | None, **kw: Any) -> Probe:
    lb = h.hub.local_broker
    assert lb is not None
    user, pw = (bundle.mqtt_username, bundle.mqtt_password) if bundle else (None, None)
    return Probe(lb.host, lb.port, user, pw, **kw)


def _accepted_probe(h: RunningHub, bundle: DeviceBundle) -> Probe | None:
    """A probe the broker accepted, else None (the refused one closed): retried until the broker knows the device."""
    p = _probe(h, bundle)
    if p.accepted:
        return p
    p.close()
    return None


def test_the_hubs_own_broker_enforces_the_acl_from_enrolment_on(own_broker_hub: RunningHub) -> None:
    h = own_broker_hub
    conf = (h.settings.broker_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
    anonymous = _probe(h, None)
    assert not anonymous.accepted
    anonymous.close()
    a, b = _enrol(h, "cam-a"), _enrol(h, "cam-b")  # enrolled while the broker runs: no restart needed
    pa = wait_for(lambda: _accepted_probe(h, a), timeout=10)
    pb = _probe(h, b, v5=True)
    try:
        t = h.hub.topics
        spoof = DeviceStatus(device_id="cam-a", state="online", ts=1.0)
        assert pb.publish(t.status("cam-a"), encode(spoof)) == 135  # cam-b may not speak for cam-a
        assert pa.publish(t.status("cam-a"), encode(spoof)) == 0
        wait_for(lambda: (d := h.hub.store.get_device("cam-a")) is not None and d.status == "online")
        record("attack", "device publishes another device's status", "refused")
    finally:
        pa.close()
        pb.close()


def test_revoking_a_device_disconnects_it_and_its_messages_are_refused(own_broker_hub: RunningHub) -> None:
    h = own_broker_hub
    a, b = _enrol(h, "cam-a"), _enrol(h, "cam-b")
    pa = wait_for(lambda: _accepted_probe(h, a), timeout=10)
    pb = _probe(h, b)
    pid = h.hub.local_broker.pid if h.hub.local_broker else None
    try:
        with h.client() as c:
            r = c.post("/api/v1/devices/cam-a/revoke")
            assert r.status_code == 200 and r.json()["changed"] is True, r.text
            assert c.post("/api/v1/devices/cam-a/revoke").json()["changed"] is False
            assert c.post("/api/v1/devices/nope/revoke").status_code == 404
            assert c.get("/api/v1/security").json()["revoked_devices"] == ["cam-a"]
            events = c.get("/api/v1/events", params={"action": "device.revoke"}).json()
            assert [e["subject"] for e in events] == ["device/cam-a"]
        assert pa.disconnected.wait(10), "the revoked device stayed connected"
        again = _probe(h, a)
        assert not again.accepted
        again.close()
        assert h.hub.local_broker is not None and h.hub.local_broker.pid == pid  # no broker restart
        assert not pb.disconnected.is_set()
        # the hub refuses whatever still arrives in the revoked device's name (e.g. through another broker)
        before = h.hub.ingest.rejected[("status", "unknown_device")]
        h.hub.ingest.handle(h.hub.topics.status("cam-a"), encode(DeviceStatus(device_id="cam-a", state="online",
                                                                               ts=2.0)))  # fmt: skip
        assert h.hub.ingest.rejected[("status", "unknown_device")] == before + 1
        record("attack", "revoked device credential", "refused")
    finally:
        pa.close()
        pb.close()


def test_revocation_survives_a_hub_restart(own_broker_hub: RunningHub) -> None:
    h = own_broker_hub
    a = _enrol(h, "cam-a")
    with h.client() as c:
        c.post("/api/v1/devices/cam-a/revoke").raise_for_status()
    h.restart()
    assert "cam-a:" not in (h.settings.broker_dir / "passwords").read_text()
    p = _probe(h, a)
    assert not p.accepted
    p.close()


def _rekey(h: RunningHub, device_id: str) -> DeviceBundle:
    with h.client() as c:
        r = c.post(f"/api/v1/devices/{device_id}/rekey")
    assert r.status_code == 200, r.text
    return DeviceBundle.model_validate(r.json()["bundle"])


def test_rekeying_a_device_refuses_its_old_password_and_keeps_the_device(own_broker_hub: RunningHub) -> None:
    """A device whose bundle was lost could only be enrolled again under a new id (its labels, history and
    rollouts lost): a rekey gives the same id a new password, and the old one stops working at once."""
    h = own_broker_hub
    with h.client() as c:
        r = c.post("/api/v1/devices", json={"id": "cam-a", "labels": {"site": "berlin"}})
        assert r.status_code == 201, r.text
    old = DeviceBundle.model_validate(r.json()["bundle"])
    enrolled_at = r.json()["device"]["enrolled_at"]
    pa = wait_for(lambda: _accepted_probe(h, old), timeout=10)
    try:
        with h.client(h.token("operator")) as c:
            assert c.post("/api/v1/devices/cam-a/rekey").status_code == 403  # credentials are an admin's
        with h.client(None) as c:
            assert c.post("/api/v1/devices/cam-a/rekey").status_code == 401
        with h.client() as c:
            assert c.post("/api/v1/devices/nope/rekey").status_code == 404
            r = c.post("/api/v1/devices/cam-a/rekey")
            assert r.status_code == 200, r.text
            new = DeviceBundle.model_validate(r.json()["bundle"])
            assert r.json()["device"]["labels"] == {"site": "berlin"}
            assert r.json()["device"]["enrolled_at"] == enrolled_at
            events = c.get("/api/v1/events", params={"action": "device.rekey"}).json()
            assert [(e["subject"], e["details"]) for e in events] == [("device/cam-a", {"readmitted": False})]
        assert new.device_id == "cam-a" and new.labels == {"site": "berlin"}
        assert new.mqtt_password != old.mqtt_password and new.hub_public_key == old.hub_public_key
        assert pa.disconnected.wait(10), "a session made with the old password stayed connected"
        refused = _probe(h, old)
        assert not refused.accepted
        refused.close()
        pn = wait_for(lambda: _accepted_probe(h, new), timeout=10)
        pn.close()
        d = h.hub.store.get_device("cam-a")
        assert d is not None and d.labels == {"site": "berlin"}
        record("attack", "a rekeyed device's old password", "refused")
    finally:
        pa.close()


def test_rekeying_a_revoked_device_admits_it_again(own_broker_hub: RunningHub) -> None:
    h = own_broker_hub
    old = _enrol(h, "cam-a")
    with h.client() as c:
        c.post("/api/v1/devices/cam-a/revoke").raise_for_status()
    new = _rekey(h, "cam-a")
    p = wait_for(lambda: _accepted_probe(h, new), timeout=10)
    p.close()
    refused = _probe(h, old)
    assert not refused.accepted
    refused.close()
    with h.client() as c:
        assert c.get("/api/v1/security").json()["revoked_devices"] == []
        events = c.get("/api/v1/events", params={"action": "device.rekey"}).json()
        assert [e["details"] for e in events] == [{"readmitted": True}]
    assert h.hub.is_enrolled("cam-a")  # its messages are accepted again
    h.restart()  # and stays admitted, with the new password only
    p = wait_for(lambda: _accepted_probe(h, new), timeout=10)
    p.close()


def test_the_cli_rekeys_a_device_into_a_new_bundle(own_broker_hub: RunningHub, tmp_path: Path) -> None:
    h = own_broker_hub
    cli = CliRunner()

    def rekey(*args: str) -> Result:
        return cli.invoke(app, ["device", "rekey", *args, "--url", h.url, "--token", h.admin_token])

    old = _enrol(h, "cam-1")
    # a destination that cannot be written is refused before the hub changes anything: the old bundle still works
    bad = rekey("cam-1", "--out", str(tmp_path / "nowhere" / "cam-1.json"))
    assert bad.exit_code == 1 and "there is no folder" in bad.output, bad.output
    assert rekey("cam-1", "--out", str(tmp_path)).exit_code == 1  # a folder
    p = wait_for(lambda: _accepted_probe(h, old), timeout=10)
    p.close()
    unknown = rekey("nope", "--out", str(tmp_path / "nope.json"))
    assert unknown.exit_code == 1 and "not enrolled" in unknown.output, unknown.output

    path = tmp_path / "cam-1.bundle.json"
    done = rekey("cam-1", "--out", str(path))
    assert done.exit_code == 0 and "cam-1 rekeyed" in done.output, done.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = DeviceBundle.load(path)
    p = wait_for(lambda: _accepted_probe(h, new), timeout=10)
    p.close()
    refused = _probe(h, old)
    assert not refused.accepted
    refused.close()


# -- TLS -----------------------------------------------------------------------------------------------
@pytest.fixture
def tls_hub(tmp_path: Path, topic_prefix: str, mosquitto_binary: str) -> Iterator[RunningHub]:
    """A hub initialised with `--tls`: its own broker on mqtts, the API on https."""
    settings = hub_settings(tmp_path / "hub", None, topic_prefix)
    token = init_hub(settings)
    create_dev_pki(settings.tls_dir)
    h = RunningHub(settings, token).start()
    yield h
    h.stop()


def _https(h: RunningHub, token: str | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(h.settings.tls_dir / "ca.pem"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=h.url, headers=headers, verify=ctx, timeout=30)


def test_tls_broker_and_https_api(tls_hub: RunningHub) -> None:
    h = tls_hub
    assert h.url.startswith("https://") and h.hub.broker_url.startswith("mqtts://")
    with _https(h, h.admin_token) as c:
        assert c.get("/healthz").json()["mqtt_connected"] is True
        bundle = _enrol(h, "cam-tls", c)
        assert c.get("/healthz").headers["strict-transport-security"].startswith("max-age=")
    assert bundle.broker_url.startswith("mqtts://") and bundle.ca_cert_pem and "BEGIN CERTIFICATE" in bundle.ca_cert_pem
    # plain HTTP to the HTTPS port and a client not trusting the dev CA both fail
    with pytest.raises(httpx.HTTPError):
        httpx.get(h.url.replace("https://", "http://") + "/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(h.url + "/healthz", timeout=5)
    # the agent's link connects over mqtts with the CA from its bundle
    connected = threading.Event()
    link = MqttLink(
        BrokerAddress.parse(bundle.broker_url), "tls-agent", username=bundle.mqtt_username,
        password=bundle.mqtt_password, will=(h.hub.topics.status("cam-tls"), b""),
        settings=LinkSettings(backoff_initial_s=0.05, backoff_max_s=0.5),
        on_message=lambda _t, _p: None, on_connect=connected.set, ca_pem=bundle.ca_cert_pem,
    )  # fmt: skip
    link.start()
    try:
        assert connected.wait(15)
        msg = DeviceStatus(device_id="cam-tls", state="online", ts=1.0)
        assert link.publish(h.hub.topics.status("cam-tls"), encode(msg), wait=True)
        wait_for(lambda: (d := h.hub.store.get_device("cam-tls")) is not None and d.status == "online")
    finally:
        link.stop()
    lb = h.hub.local_broker
    assert lb is not None
    # without the CA (system trust store) the broker's certificate is refused
    ctx = ssl.create_default_context(cadata=_other_ca(h))
    with socket.create_connection((lb.host, lb.port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname=lb.host)
    record("attack", "TLS client not trusting the CA / plain text to a TLS port", "refused", 3)


def _other_ca(h: RunningHub) -> str:
    other = create_dev_pki(h.settings.data_dir / "other-ca")
    return other.ca_pem()

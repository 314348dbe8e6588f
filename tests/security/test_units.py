"""The pieces on their own: the generated ACL text, the token bucket, the dev CA, and the CLI commands."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from edgefleet_cli import app
from hub.acl import HUB_USERNAME, acl_text, hub_account, password_text
from hub.credentials import mosquitto_verify
from hub.errors import InvalidInput
from hub.ratelimit import KeyedLimiter
from hub.settings import HubSettings
from hub.tls import TlsFiles, create_dev_pki, resolve
from tests.support.hub import RunningHub

runner = CliRunner()


def test_acl_names_only_own_topics_and_blob_topics() -> None:
    text = acl_text("fleet/v1")
    assert f"user {HUB_USERNAME}\ntopic readwrite fleet/v1/#" in text
    patterns = [line for line in text.splitlines() if line.startswith("pattern")]
    assert all("%u" in line or "/blob/+/" in line for line in patterns)
    assert "pattern read fleet/v1/dev/%u/desired" in patterns and "pattern write fleet/v1/blob/+/want" in patterns
    writes = [p for p in patterns if p.startswith("pattern write")]
    assert not [p for p in writes if p.endswith(("/desired", "/cmd", "/chunk"))]
    assert password_text([("a", "$7$x"), ("b", "$7$y")]) == "a:$7$x\nb:$7$y\n"


def test_the_hub_account_is_private_stable_and_not_a_device_id(tmp_path: Path) -> None:
    first = hub_account(tmp_path)
    assert hub_account(tmp_path) == first and mosquitto_verify(first.password, first.password_hash)
    assert (tmp_path / "broker-hub-account.json").stat().st_mode & 0o777 == 0o600
    assert first.username != first.username.lower()  # device ids are lower case


def test_token_bucket_refuses_beyond_the_burst_and_refills() -> None:
    now = [0.0]
    lim = KeyedLimiter(rate_per_s=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]
    assert lim.blocked("a") and lim.retry_after("a") > 0 and lim.refused["a"] == 1
    assert lim.allow("b")  # another key is unaffected
    now[0] += 0.5
    assert lim.allow("a") and not lim.allow("a")
    lim.allow("c")  # a third key evicts: memory stays bounded
    assert len(lim._buckets) <= 2
    assert KeyedLimiter(1.0, 0).allow("x")  # burst 0: off


def test_hub_init_tls_creates_a_dev_ca_and_certificates(tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = runner.invoke(app, ["hub", "init", "--data-dir", str(data), "--tls", "--tls-host", "hub.lan", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tls_dir"] == str(data / "tls")
    files = resolve(HubSettings(data_dir=data))
    assert files == TlsFiles.in_dir(data / "tls")
    for key in (files.broker_key, files.api_key, data / "tls" / "ca.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(files.api_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.lan" in names.get_values_for_type(x509.DNSName)
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    ctx.load_cert_chain(files.api_cert, files.api_key)  # the key matches the certificate
    assert (data / "broker-hub-account.json").exists()
    assert resolve(HubSettings(data_dir=tmp_path / "plain")) is None  # no files, no TLS


def test_device_revoke_command(running_hub: RunningHub) -> None:
    h = running_hub
    with h.client() as c:
        c.post("/api/v1/devices", json={"id": "cam-cli"}).raise_for_status()
    result = runner.invoke(app, ["device", "revoke", "cam-cli", "--url", h.url, "--token", h.admin_token, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"device_id": "cam-cli", "revoked": True, "changed": True}
    assert "cam-cli:" not in (h.settings.broker_dir / "passwords").read_text()
    missing = runner.invoke(app, ["device", "revoke", "nope", "--url", h.url, "--token", h.admin_token])
    assert missing.exit_code == 1 and "not enrolled" in missing.output


def test_a_ca_file_alone_verifies_an_external_broker_without_serving_https(tmp_path: Path) -> None:
    ca = create_dev_pki(tmp_path / "elsewhere").ca_cert
    settings = HubSettings(data_dir=tmp_path / "d", broker={"url": "mqtts://broker.lan:8883"}, tls={"ca_file": ca})
    assert resolve(settings) is None
    on = settings.model_copy(update={"tls": settings.tls.model_copy(update={"enabled": True})})
    with pytest.raises(InvalidInput, match="api.pem") as refused:  # the API's certificate is missing: said clearly
        resolve(on)
    assert "broker.pem" not in str(refused.value)  # an external broker brings its own

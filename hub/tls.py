"""TLS files: a development CA (`edgefleet hub init --tls`) and the certificate paths the hub uses.

The development CA signs two server certificates, one for the broker (mqtts) and one for the REST API
(https), each valid for `localhost`, `127.0.0.1`, `::1` and any extra host names given. Private keys are
written with mode 0600. Production deployments bring certificates of their own CA through the settings
(`EDGEFLEET_HUB_TLS_*`); devices get the CA certificate in their bootstrap bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.files import atomic_write
from hub.errors import Conflict, InvalidInput
from hub.settings import HubSettings

DEV_VALIDITY_DAYS = 825  # the longest server-certificate validity browsers accept


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA certificate and the broker's and API's certificate and key are."""

    ca_cert: Path
    broker_cert: Path
    broker_key: Path
    api_cert: Path
    api_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        """The file names `create_dev_pki` writes in `directory`."""
        return cls(
            directory / "ca.pem", directory / "broker.pem", directory / "broker.key", directory / "api.pem",
            directory / "api.key",
        )  # fmt: skip

    def exist(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.broker_cert, self.broker_key, self.api_cert, self.api_key))

    def ca_pem(self) -> str:
        """The CA certificate text (put into device bundles)."""
        try:
            return self.ca_cert.read_text()
        except OSError as e:
            raise InvalidInput(f"cannot read the TLS CA certificate {self.ca_cert}: {e}") from e


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(pem, pkcs8, serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _server_cert(
    name: str, hosts: list[str], ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, now: dt.datetime
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_VALIDITY_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def create_dev_pki(directory: Path, hosts: list[str] | None = None) -> TlsFiles:
    """Create a development CA and broker and API server certificates in `directory`.

    Raises:
        Conflict: the directory already holds a CA (delete it to start over).
    """
    files = TlsFiles.in_dir(directory)
    if files.ca_cert.exists():
        raise Conflict(f"{directory} already holds a CA certificate")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_VALIDITY_DAYS * 2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(directory / "ca.key", _key_pem(ca_key), mode=0o600)
    atomic_write(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    extra = list(hosts or [])
    for name, cert_path, key_path in (
        ("edgefleet broker", files.broker_cert, files.broker_key),
        ("edgefleet hub api", files.api_cert, files.api_key),
    ):
        cert_pem, key_pem = _server_cert(name, extra, ca_key, ca, now)
        atomic_write(cert_path, cert_pem, mode=0o644)
        atomic_write(key_path, key_pem, mode=0o600)
    return files


def resolve(settings: HubSettings) -> TlsFiles | None:
    """The TLS files the hub serves with, or None when TLS is off.

    TLS is on when `settings.tls.enabled` says so, or (unset) when `hub init --tls` created the dev files.
    Files given in the settings win over the dev ones. Raises InvalidInput when TLS is on and a file it
    needs is missing. (`tls.ca_file` without TLS on only makes the hub verify an external mqtts broker.)
    """
    t = settings.tls
    dev = TlsFiles.in_dir(settings.tls_dir)
    enabled = t.enabled if t.enabled is not None else dev.exist()  # a CA file alone only verifies a broker
    if not enabled:
        return None
    files = TlsFiles(
        t.ca_file or dev.ca_cert, t.broker_cert_file or dev.broker_cert, t.broker_key_file or dev.broker_key,
        t.api_cert_file or dev.api_cert, t.api_key_file or dev.api_key,
    )  # fmt: skip
    needed = [files.ca_cert, files.api_cert, files.api_key]
    if settings.broker.url is None:  # the local broker serves mqtts with its own pair
        needed += [files.broker_cert, files.broker_key]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise InvalidInput(f"TLS is on but these files are missing: {', '.join(missing)} (run `hub init --tls`)")
    return files

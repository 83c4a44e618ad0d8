"""The broker's small private PKI: a CA and the broker's server certificate.

Made with the ``cryptography`` library rather than by driving the openssl
command: the extensions that matter (subject alternative names with IP
addresses, serverAuth, CA path length) are typed arguments instead of an
openssl.cnf written to a temporary file, errors are exceptions, and Debian
ships it (python3-cryptography) for both bookworm and trixie.

Keys are ECDSA P-256: every TLS 1.2/1.3 stack we meet (OpenSSL in Mosquitto,
Python's ssl on the Pis) speaks it, and a key is made in milliseconds, not the
second an RSA-3072 key takes on a Pi.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
#: Server certificates: a little over two years, renewed with
#: ``madoguchi broker server-cert`` (docs/security.md, rotation).
SERVER_DAYS = 825


class PkiError(Exception):
    """A key or certificate could not be read, made or written."""


@dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def not_after(cert: x509.Certificate) -> dt.datetime:
    """The end of validity as an aware datetime (cryptography 38 … 43+)."""
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=dt.UTC)


def new_ca(common_name: str, *, days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "madoguchi"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def issue_server(ca: KeyPair, hostnames: list[str], ips: list[str], *, days: int = SERVER_DAYS) -> KeyPair:
    """The broker's certificate, valid for ``hostnames`` and ``ips``.

    Raises :class:`PkiError` for an unusable name or address.
    """
    if not hostnames and not ips:
        raise PkiError("the server certificate needs at least one host name or IP address")
    try:
        alt: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    except ValueError as exc:
        raise PkiError(f"not a host name or IP address: {exc}") from exc
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cn = hostnames[0] if hostnames else ips[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "madoguchi"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), not_after(ca.cert)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def load(cert_path: Path, key_path: Path) -> KeyPair:
    """Read a PEM certificate and its unencrypted PEM key (an existing CA)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiError(f"{key_path}: an EC or RSA key is needed")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    return KeyPair(key, cert)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a secret file that is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)

"""TLS for the coordinator: a small local CA, the server certificate it signs, and loading
both with every check gRPC would otherwise report obscurely (or not at all).

The coordinator speaks gRPC over TLS with a certificate signed by a local CA that
:func:`generate_tls` creates (ECDSA P-256); clients trust that CA and nothing else.

Files: ``ca.pem``, ``server.pem`` (PEM certificates, public) and ``server.key`` (the server's
PKCS#8 PEM private key, mode 0600, never overwritten, never quoted in an error).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.errors import ConfigurationError
from secagg.service.files import create_file, make_directory, read_file, refuse_existing

__all__ = [
    "CA_CERT_FILE",
    "MAX_CERT_DAYS",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "TlsFiles",
    "generate_tls",
    "load_ca",
    "load_tls_server_credentials",
]

CA_CERT_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
MAX_CERT_DAYS = 36_500

_MAX_PEM_FILE_BYTES = 1 << 20
# Certificates start a little in the past, so that a peer whose clock lags still accepts them.
_CLOCK_SKEW = dt.timedelta(hours=1)
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?(?:{_DNS_LABEL}\.)*{_DNS_LABEL}")
_MAX_HOSTNAME_CHARS = 253


def _read(path: Path, what: str) -> bytes:
    return read_file(path, what, limit=_MAX_PEM_FILE_BYTES)


@dataclass(frozen=True)
class TlsFiles:
    """Where the coordinator's TLS material lives: the CA certificate, its certificate, its key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        """The standard names (``ca.pem``, ``server.pem``, ``server.key``) in ``directory``."""
        directory = Path(directory)
        return cls(
            ca_cert=directory / CA_CERT_FILE,
            server_cert=directory / SERVER_CERT_FILE,
            server_key=directory / SERVER_KEY_FILE,
        )


def _check_hostnames(hostnames: Sequence[str]) -> list[str]:
    if isinstance(hostnames, str | bytes):
        raise ConfigurationError("hostnames must be a sequence of names, not a single string")
    checked: list[str] = []
    for name in hostnames:
        if not isinstance(name, str):
            raise ConfigurationError(f"a hostname must be a str, got {type(name).__name__}")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise ConfigurationError(f"{name!r} is an IP address: pass it in ip_addresses")
        if len(name) > _MAX_HOSTNAME_CHARS or not _HOSTNAME.fullmatch(name):
            raise ConfigurationError(f"{name!r} is not a valid (ASCII) DNS name")
        if name not in checked:
            checked.append(name)
    return checked


def _check_ip_addresses(
    ip_addresses: Sequence[str],
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(ip_addresses, str | bytes):
        raise ConfigurationError(
            "ip_addresses must be a sequence of addresses, not a single string"
        )
    checked: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in ip_addresses:
        if not isinstance(text, str):
            raise ConfigurationError(f"an IP address must be a str, got {type(text).__name__}")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigurationError(f"{text!r} is not an IP address") from None
        if address not in checked:
            checked.append(address)
    return checked


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def generate_tls(
    directory: Path,
    *,
    hostnames: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 365,
) -> TlsFiles:
    """Create a local CA and a server certificate it signs; write them into ``directory``.

    The CA (ECDSA P-256, basicConstraints CA:TRUE with path length 0, keyCertSign) signs one
    server certificate (ECDSA P-256, not a CA, extended key usage serverAuth) whose
    subjectAltName lists ``hostnames`` (DNS names) and ``ip_addresses``. Both are valid from
    an hour ago (clock skew) for ``days`` days.

    Writes ``ca.pem``, ``server.pem`` (the server certificate) and ``server.key`` (its PKCS#8
    PEM private key, mode 0600) into ``directory``, created if needed. The CA's private key is
    *not* written anywhere: it is needed only to sign the server certificate, and discarding it
    means nobody can later issue another certificate clients would trust. To change hostnames
    or renew, generate a new set and hand the new ``ca.pem`` to the clients.

    Raises ConfigurationError if any of the three files already exists (nothing is
    overwritten), or on invalid names, addresses or ``days``.
    """
    names = _check_hostnames(hostnames)
    addresses = _check_ip_addresses(ip_addresses)
    if not names and not addresses:
        raise ConfigurationError("the server certificate needs at least one hostname or IP address")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_CERT_DAYS:
        raise ConfigurationError(f"days must be an int in [1, {MAX_CERT_DAYS}], got {days!r}")
    directory = Path(directory)
    files = TlsFiles.in_directory(directory)
    for path in (files.ca_cert, files.server_cert, files.server_key):
        refuse_existing(path)
    make_directory(directory)

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - _CLOCK_SKEW, now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    # The key id in the name tells CAs of different deployments apart.
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"secagg local CA {ca_key_id.digest[:4].hex()}")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_key_id, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alt_names += [x509.IPAddress(address) for address in addresses]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secagg coordinator")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    del ca_key  # deliberately never serialised

    outputs = (
        (files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), False),
        (
            files.server_key,
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            True,
        ),
    )
    written: list[Path] = []
    try:
        for path, data, private in outputs:
            create_file(path, data, private=private)
            written.append(path)
    except ConfigurationError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return files


def _load_certificates(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(f"{what} {path} is not a PEM certificate") from None
    if not certificates:
        raise ConfigurationError(f"{what} {path} holds no PEM certificate")
    return data, certificates


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except (x509.ExtensionNotFound, ValueError):
        return False
    return constraints.value.ca


def _spki(key: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_tls_server_credentials(files: TlsFiles) -> tuple[bytes, bytes]:
    """``(private key PEM, certificate chain PEM)``, as ``grpc.ssl_server_credentials`` wants.

    Checks before the server starts what gRPC would otherwise report obscurely: both files are
    readable PEM, the key is not encrypted, the key belongs to the certificate, and the
    certificate is valid now (neither expired nor not yet valid: clients would refuse it at
    every connection, and the coordinator would wait for a cohort that never forms). Raises
    ConfigurationError naming the file otherwise (never quoting the key).
    """
    chain, certificates = _load_certificates(files.server_cert, "server certificate")
    key_pem = _read(files.server_key, "server private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigurationError(
            f"server private key {files.server_key} is encrypted; the service needs it "
            "unencrypted (protect it with file permissions)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"server private key {files.server_key} is not a PEM private key"
        ) from None
    leaf = certificates[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise ConfigurationError(
            f"server private key {files.server_key} does not belong to the certificate "
            f"{files.server_cert}"
        )
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_before_utc > now:
        raise ConfigurationError(
            f"server certificate {files.server_cert} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)"
        )
    if leaf.not_valid_after_utc <= now:
        raise ConfigurationError(
            f"server certificate {files.server_cert} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    return key_pem, chain


def load_ca(path: Path) -> bytes:
    """The root certificate(s) PEM in ``path``, for ``grpc.ssl_channel_credentials``.

    Raises ConfigurationError if the file is missing, unreadable, not PEM, or holds a
    certificate that is not a CA (e.g. ``server.pem`` given by mistake).
    """
    data, certificates = _load_certificates(Path(path), "CA certificate")
    if not all(_is_ca(certificate) for certificate in certificates):
        raise ConfigurationError(f"{path} holds a certificate that is not a CA certificate")
    return data

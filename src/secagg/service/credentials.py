"""Credentials of the network service: TLS certificates, client identities and the allow-list.

The coordinator speaks gRPC over TLS with a certificate signed by a small local CA that
:func:`generate_tls` creates (ECDSA P-256); clients trust that CA and nothing else. Inside the
TLS channel each client proves a long-term Ed25519 identity: it signs the coordinator's fresh
challenge (:func:`sign_challenge`) and the coordinator checks the signature against its
allow-list (:meth:`AllowList.verify`). :func:`create_deployment` writes everything a local
deployment needs.

Files, all written by this module:

- ``ca.pem``, ``server.pem``: PEM certificates (public); ``server.key``: the server's PKCS#8
  PEM private key.
- ``client-<id>.key``: a first line ``secagg-client-id: <id>``, then the client's PKCS#8 PEM
  Ed25519 private key.
- ``allowlist.toml``: a ``[clients]`` table mapping decimal ids (as TOML keys) to hex public
  keys.

Private key files are created with mode 0600 from their first instant (never readable by
anyone else, whatever the umask) and are never overwritten. No private key ever appears in a
``repr``, a log line or an exception message.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.errors import AuthenticationError, ConfigurationError, UsageError
from secagg.hazmat.keys import (
    ED25519_PUBLIC_BYTES,
    Ed25519SigningKey,
    ed25519_verify,
    encode_fields,
)
from secagg.hazmat.randomness import SystemRandomness

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness

__all__ = [
    "ALLOW_LIST_FILE",
    "AUTH_LABEL",
    "CA_CERT_FILE",
    "CHALLENGE_BYTES",
    "MIN_CHALLENGE_BYTES",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "AllowList",
    "ClientIdentity",
    "Deployment",
    "TlsFiles",
    "auth_message",
    "create_deployment",
    "generate_tls",
    "load_ca",
    "load_tls_server_credentials",
    "new_challenge",
    "sign_challenge",
]

CA_CERT_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
ALLOW_LIST_FILE = "allowlist.toml"

AUTH_LABEL = "secagg/v1/client-auth"
CHALLENGE_BYTES = 32
"""Length of the challenges :func:`new_challenge` makes."""
MIN_CHALLENGE_BYTES = 16
"""The shortest challenge :meth:`AllowList.verify` accepts (shorter ones could repeat)."""

MAX_CERT_DAYS = 36_500

_CLIENT_ID_LIMIT = 1 << 64  # what encode_fields can bind into the signed message
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_MAX_PEM_FILE_BYTES = 1 << 20
# Certificates start a little in the past, so that a peer whose clock lags still accepts them.
_CLOCK_SKEW = dt.timedelta(hours=1)

_ID_LINE_PREFIX = "secagg-client-id: "
_ID_LINE = re.compile(r"secagg-client-id: (0|[1-9][0-9]{0,19})")
_DECIMAL_ID = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX = re.compile(r"[0-9a-fA-F]*")
_PEM_BEGIN = "-----BEGIN PRIVATE KEY-----"
_PEM_END = "-----END PRIVATE KEY-----"
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?(?:{_DNS_LABEL}\.)*{_DNS_LABEL}")
_MAX_HOSTNAME_CHARS = 253


# --- files -----------------------------------------------------------------------------------


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read(path: Path, what: str, *, limit: int | None = _MAX_PEM_FILE_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {_reason(exc)}") from exc
    if limit is not None and len(data) > limit:
        raise ConfigurationError(f"{what} {path} is larger than {limit} bytes")
    return data


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise ConfigurationError(f"{path} already exists; refusing to overwrite it")


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create directory {directory}: {_reason(exc)}") from exc


def _create_file(path: Path, data: bytes, *, private: bool, durable: bool = False) -> None:
    """Write ``data`` to a new file; never overwrite (nor follow a symlink at) ``path``.

    A private file is created with mode 0600, so it is never readable by others, not even
    while being written; a public one gets 0644 less the umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, _PRIVATE_MODE if private else _PUBLIC_MODE)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {_reason(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if private and hasattr(os, "fchmod"):
                # The umask can only have removed bits; make it exactly 0600 as documented.
                os.fchmod(f.fileno(), _PRIVATE_MODE)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {_reason(exc)}") from exc


def _replace_file(path: Path, data: bytes) -> None:
    """Atomically replace (or create) the public file ``path`` with ``data``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _create_file(temporary, data, private=False, durable=True)
    try:
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {_reason(exc)}") from exc


def _check_client_id(client_id: object) -> int:
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise ConfigurationError(f"a client id must be an int, got {type(client_id).__name__}")
    if not 0 <= client_id < _CLIENT_ID_LIMIT:
        raise ConfigurationError(f"a client id must be in [0, 2**64), got {client_id}")
    return client_id


# --- TLS -------------------------------------------------------------------------------------


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
        _refuse_existing(path)
    _make_directory(directory)

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
            _create_file(path, data, private=private)
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
    certificate has not expired. Raises ConfigurationError naming the file otherwise (never
    quoting the key).
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
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
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


# --- client identities -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClientIdentity:
    """A client's id and long-term Ed25519 signing key.

    Two identities are equal when they have the same id and public key (hence the same
    private key). The ``repr`` shows the id and a public key fingerprint only.
    """

    client_id: int
    signing_key: Ed25519SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_client_id(self.client_id)
        if not isinstance(self.signing_key, Ed25519SigningKey):
            raise UsageError("signing_key must be an Ed25519SigningKey")

    @property
    def public_key(self) -> bytes:
        """The 32-byte raw Ed25519 public key, as listed in the allow-list."""
        return self.signing_key.public

    @classmethod
    def generate(cls, client_id: int, *, rng: Randomness | None = None) -> ClientIdentity:
        """A fresh identity; the key comes from ``rng`` (default: the system CSPRNG)."""
        return cls(
            client_id, Ed25519SigningKey.generate(SystemRandomness() if rng is None else rng)
        )

    def save(self, path: Path) -> None:
        """Write the identity file, mode 0600; ConfigurationError if ``path`` already exists."""
        # Ed25519SigningKey has no public accessor for its private key yet (X25519KeyPair has
        # ``private_bytes``); this is the one place that serialises it.
        pem = self.signing_key._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        header = f"{_ID_LINE_PREFIX}{self.client_id}\n".encode("ascii")
        _create_file(Path(path), header + pem, private=True)

    @classmethod
    def load(cls, path: Path) -> ClientIdentity:
        """Read an identity file written by :meth:`save`; ConfigurationError on anything else."""
        path = Path(path)
        data = _read(path, "client identity")
        what = f"{path} is not a secagg client identity file"
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ConfigurationError(f"{what}: it is not ASCII text") from None
        first, newline, rest = text.partition("\n")
        match = _ID_LINE.fullmatch(first.removesuffix("\r"))
        if not newline or match is None:
            raise ConfigurationError(
                f"{what}: the first line must be '{_ID_LINE_PREFIX}<decimal id>'"
            )
        client_id = int(match[1])
        if client_id >= _CLIENT_ID_LIMIT:
            raise ConfigurationError(f"{what}: the client id is not in [0, 2**64)")
        body = rest.strip()
        if (
            not (body.startswith(_PEM_BEGIN) and body.endswith(_PEM_END))
            or body.count("-----BEGIN") != 1
        ):
            raise ConfigurationError(
                f"{what}: expected one unencrypted PKCS#8 PEM block after the id line"
            )
        try:
            key = serialization.load_pem_private_key(body.encode("ascii"), password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            raise ConfigurationError(f"{what}: the private key does not parse") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{what}: the private key is not an Ed25519 key")
        return cls(client_id, Ed25519SigningKey.from_private_bytes(key.private_bytes_raw()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientIdentity):
            return NotImplemented
        return self.client_id == other.client_id and self.public_key == other.public_key

    def __hash__(self) -> int:
        return hash((self.client_id, self.public_key))

    def __repr__(self) -> str:
        return f"ClientIdentity(client_id={self.client_id}, public={self.public_key[:6].hex()}…)"


def new_challenge(rng: Randomness | None = None) -> bytes:
    """A fresh ``CHALLENGE_BYTES``-byte challenge (default: from the system CSPRNG)."""
    return (SystemRandomness() if rng is None else rng).bytes(CHALLENGE_BYTES)


def auth_message(challenge: bytes, client_id: int, public_key: bytes) -> bytes:
    """What a client signs to authenticate: the label, the challenge, its id and public key."""
    return encode_fields(AUTH_LABEL, challenge, client_id, public_key)


def sign_challenge(identity: ClientIdentity, challenge: bytes) -> bytes:
    """The client's 64-byte answer to the coordinator's ``challenge``."""
    if not isinstance(challenge, bytes | bytearray | memoryview):
        raise UsageError("the challenge must be bytes")
    message = auth_message(bytes(challenge), identity.client_id, identity.public_key)
    return identity.signing_key.sign(message)


# --- the allow-list --------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowList:
    """The clients the coordinator accepts: client id -> 32-byte Ed25519 public key.

    ``keys`` is copied into a read-only mapping, sorted by id. Raises ConfigurationError on an
    invalid id or key, or if two clients share a key.
    """

    keys: Mapping[int, bytes]

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping):
            raise ConfigurationError("the allow-list must map client ids to public keys")
        keys: dict[int, bytes] = {}
        owners: dict[bytes, int] = {}
        for client_id, public_key in self.keys.items():
            _check_client_id(client_id)
            if (
                not isinstance(public_key, bytes | bytearray | memoryview)
                or len(public_key) != ED25519_PUBLIC_BYTES
            ):
                raise ConfigurationError(
                    f"client {client_id}'s public key must be {ED25519_PUBLIC_BYTES} bytes"
                )
            public_key = bytes(public_key)
            if public_key in owners:
                raise ConfigurationError(
                    f"clients {owners[public_key]} and {client_id} have the same public key"
                )
            owners[public_key] = client_id
            keys[client_id] = public_key
        object.__setattr__(self, "keys", MappingProxyType(dict(sorted(keys.items()))))

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """Read a TOML allow-list: a ``[clients]`` table of ``"<id>" = "<64 hex digits>"``."""
        path = Path(path)
        data = _read(path, "allow-list", limit=None)
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigurationError(f"allow-list {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"allow-list {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(document) - {"clients"})
        if unknown:
            raise ConfigurationError(
                f"allow-list {path}: unexpected top-level keys {unknown}; "
                "only a [clients] table is allowed"
            )
        table = document.get("clients")
        if not isinstance(table, dict):
            raise ConfigurationError(f"allow-list {path} has no [clients] table")
        keys: dict[int, bytes] = {}
        for name, value in table.items():
            if not _DECIMAL_ID.fullmatch(name):
                raise ConfigurationError(
                    f"allow-list {path}: client id {name[:24]!r} is not a decimal integer "
                    "without leading zeros"
                )
            client_id = int(name)
            if not isinstance(value, str) or not _HEX.fullmatch(value):
                raise ConfigurationError(
                    f"allow-list {path}: client {name}'s public key must be a string of hex digits"
                )
            if len(value) != 2 * ED25519_PUBLIC_BYTES:
                raise ConfigurationError(
                    f"allow-list {path}: client {name}'s public key must be "
                    f"{2 * ED25519_PUBLIC_BYTES} hex digits ({ED25519_PUBLIC_BYTES} bytes), "
                    f"got {len(value)}"
                )
            keys[client_id] = bytes.fromhex(value)
        try:
            return cls(keys)
        except ConfigurationError as exc:
            raise ConfigurationError(f"allow-list {path}: {exc}") from None

    def to_toml(self) -> str:
        """The allow-list as the TOML text :meth:`load` reads."""
        lines = ["# secagg allow-list: client id = Ed25519 public key (hex)", "[clients]"]
        lines += [f'"{client_id}" = "{key.hex()}"' for client_id, key in self.keys.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> None:
        """Write the allow-list to ``path``, atomically replacing any previous version."""
        _replace_file(Path(path), self.to_toml().encode("ascii"))

    def verify(self, client_id: int, public_key: bytes, challenge: bytes, signature: bytes) -> None:
        """Check that ``signature`` answers ``challenge`` for the allow-listed ``client_id``.

        Raises AuthenticationError if the id is not listed, the public key is not the listed
        one, or the signature does not verify; the messages name the client id only. The
        caller must make ``challenge`` fresh for each attempt (see :func:`new_challenge`).
        """
        if not isinstance(challenge, bytes | bytearray | memoryview):
            raise UsageError("the challenge must be bytes")
        if len(challenge) < MIN_CHALLENGE_BYTES:
            raise UsageError(f"a challenge must be at least {MIN_CHALLENGE_BYTES} bytes")
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise UsageError("client_id must be an int")
        expected = self.keys.get(client_id)
        if expected is None:
            raise AuthenticationError(f"client {client_id} is not on the allow-list")
        if not isinstance(public_key, bytes | bytearray | memoryview) or not hmac.compare_digest(
            expected, bytes(public_key)
        ):
            raise AuthenticationError(f"public key does not match client {client_id}'s")
        try:
            ed25519_verify(expected, auth_message(bytes(challenge), client_id, expected), signature)
        except AuthenticationError:
            raise AuthenticationError("bad signature") from None


# --- a whole local deployment ----------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The files :func:`create_deployment` wrote."""

    tls: TlsFiles
    allow_list: Path
    identities: Mapping[int, Path]
    """Client id -> its identity file."""


def create_deployment(directory: Path, clients: int, *, first_id: int = 0) -> Deployment:
    """Credentials for a coordinator and ``clients`` clients with ids ``first_id, first_id+1, ...``.

    Writes ``directory/tls/{ca.pem,server.pem,server.key}`` (:func:`generate_tls` with its
    defaults: localhost only), ``directory/clients/client-<id>.key`` per client and
    ``directory/allowlist.toml`` listing them all. Refuses (ConfigurationError) before
    writing anything if any of those files exists.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be a positive int, got {clients!r}")
    _check_client_id(first_id)
    _check_client_id(first_id + clients - 1)
    directory = Path(directory)
    tls = TlsFiles.in_directory(directory / "tls")
    allow_list_path = directory / ALLOW_LIST_FILE
    identity_paths = {
        client_id: directory / "clients" / f"client-{client_id}.key"
        for client_id in range(first_id, first_id + clients)
    }
    for path in (allow_list_path, *identity_paths.values()):
        _refuse_existing(path)

    generate_tls(tls.ca_cert.parent)
    _make_directory(directory / "clients")
    keys: dict[int, bytes] = {}
    for client_id, path in identity_paths.items():
        identity = ClientIdentity.generate(client_id)
        identity.save(path)
        keys[client_id] = identity.public_key
    _create_file(allow_list_path, AllowList(keys).to_toml().encode("ascii"), private=False)
    return Deployment(
        tls=tls, allow_list=allow_list_path, identities=MappingProxyType(identity_paths)
    )

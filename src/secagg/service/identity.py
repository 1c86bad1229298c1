"""Who a client is: its long-term Ed25519 identity, the challenge it answers, and the
coordinator's allow-list of the identities it accepts.

Inside the TLS channel each client proves its identity: it signs the coordinator's fresh
challenge (:func:`sign_challenge`) and the coordinator checks the signature against its
allow-list (:meth:`AllowList.verify`). In active mode the allow-list is also the PKI that
signed keys and survivor sets are checked against.

Client ids are the protocol's ids: unsigned 32-bit integers (``secagg.schemes.masking.messages.
MAX_ID``), the one bound shared by identity files, the allow-list, the wire messages and the
Shamir evaluation points (id + 1). An id the wire cannot carry is refused here, when the
file is read, not in the middle of a round.

Files:

- ``client-<id>.key``: a first line ``secagg-client-id: <id>``, then the client's PKCS#8 PEM
  Ed25519 private key, mode 0600, never overwritten.
- ``allowlist.toml``: a ``[clients]`` table mapping decimal ids (as TOML keys) to hex public
  keys.

No private key ever appears in a ``repr``, a log line or an exception message.
"""

from __future__ import annotations

import hmac
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from secagg.errors import AuthenticationError, ConfigurationError, DecodeError, UsageError
from secagg.hazmat.kdf import encode_fields
from secagg.hazmat.keys import ED25519_PUBLIC_BYTES, Ed25519SigningKey, ed25519_verify
from secagg.hazmat.randomness import SystemRandomness
from secagg.protocol.codec import MAX_ID
from secagg.service.files import create_file, read_file, replace_file

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness

__all__ = [
    "ALLOW_LIST_FILE",
    "AUTH_LABEL",
    "CHALLENGE_BYTES",
    "MIN_CHALLENGE_BYTES",
    "AllowList",
    "ClientIdentity",
    "auth_message",
    "check_client_id",
    "new_challenge",
    "read_identity_file",
    "sign_challenge",
    "write_identity_file",
]

ALLOW_LIST_FILE = "allowlist.toml"
AUTH_LABEL = "secagg/v1/client-auth"
CHALLENGE_BYTES = 32
"""Length of the challenges :func:`new_challenge` makes."""
MIN_CHALLENGE_BYTES = 16
"""The shortest challenge :meth:`AllowList.verify` accepts (shorter ones could repeat)."""

_ID_RANGE = f"[0, {MAX_ID}]"
_MAX_IDENTITY_FILE_BYTES = 1 << 20
_ID_LINE_PREFIX = "secagg-client-id: "
_DECIMAL_ID = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX = re.compile(r"[0-9a-fA-F]*")


def check_client_id(client_id: object) -> int:
    """``client_id`` if it is an id the protocol can carry; ``ConfigurationError`` if not."""
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise ConfigurationError(f"a client id must be an int, got {type(client_id).__name__}")
    if not 0 <= client_id <= MAX_ID:
        raise ConfigurationError(f"a client id must be in {_ID_RANGE}, got {client_id}")
    return client_id


def write_identity_file(
    path: Path, id_prefix: str, identity_id: int, key: Ed25519SigningKey
) -> None:
    """An identity file: ``<id_prefix><decimal id>``, then the PKCS#8 PEM private key; mode
    0600, never overwriting. Both secagg's clients and Flower nodes keep theirs this way."""
    header = f"{id_prefix}{identity_id}\n".encode("ascii")
    create_file(Path(path), header + key.to_pkcs8_pem(), private=True)


def read_identity_file(
    path: Path, kind: str, id_prefix: str, max_id: int
) -> tuple[int, Ed25519SigningKey]:
    """The id and key of a file :func:`write_identity_file` wrote; ConfigurationError naming
    what is wrong (never the key) on anything else."""
    path = Path(path)
    data = read_file(path, f"{kind} identity", limit=_MAX_IDENTITY_FILE_BYTES)
    what = f"{path} is not a secagg {kind} identity file"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{what}: it is not ASCII text") from None
    first, newline, rest = text.partition("\n")
    # Up to 21 digits are read, so that an id just too large is named as such, not as junk.
    match = re.fullmatch(re.escape(id_prefix) + "(0|[1-9][0-9]{0,20})", first.removesuffix("\r"))
    if not newline or match is None:
        raise ConfigurationError(f"{what}: the first line must be '{id_prefix}<decimal id>'")
    identity_id = int(match[1])
    if identity_id > max_id:
        raise ConfigurationError(f"{what}: the {kind} id is not in [0, {max_id}]")
    try:
        key = Ed25519SigningKey.from_pkcs8_pem(rest)
    except DecodeError as exc:
        raise ConfigurationError(f"{what}: {exc} after the id line") from None
    return identity_id, key


@dataclass(frozen=True, eq=False)
class ClientIdentity:
    """A client's id and long-term Ed25519 signing key.

    Two identities are equal when they have the same id and public key (hence the same
    private key). The ``repr`` shows the id and a public key fingerprint only.
    """

    client_id: int
    signing_key: Ed25519SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        check_client_id(self.client_id)
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
        write_identity_file(path, _ID_LINE_PREFIX, self.client_id, self.signing_key)

    @classmethod
    def load(cls, path: Path) -> ClientIdentity:
        """Read an identity file written by :meth:`save`; ConfigurationError on anything else."""
        return cls(*read_identity_file(path, "client", _ID_LINE_PREFIX, MAX_ID))

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
            check_client_id(client_id)
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
        data = read_file(path, "allow-list")
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
        replace_file(Path(path), self.to_toml().encode("ascii"))

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

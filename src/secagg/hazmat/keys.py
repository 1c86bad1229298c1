"""Key agreement (X25519) and signatures (Ed25519).

Key derivation (HKDF-SHA256, :func:`~secagg.hazmat.kdf.derive_key`,
:func:`~secagg.hazmat.kdf.encode_fields`) lives in :mod:`secagg.hazmat.kdf`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.errors import AuthenticationError, CryptoError, DecodeError

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness

__all__ = [
    "ED25519_PUBLIC_BYTES",
    "ED25519_SIGNATURE_BYTES",
    "X25519_KEY_BYTES",
    "Ed25519SigningKey",
    "X25519KeyPair",
    "ed25519_verify",
    "x25519_public_from_private",
]

X25519_KEY_BYTES = 32
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
_PEM_BEGIN = "-----BEGIN PRIVATE KEY-----"
_PEM_END = "-----END PRIVATE KEY-----"


def _fingerprint(public: bytes) -> str:
    # Public keys are not secret; a prefix is enough to tell them apart in logs.
    return public[:6].hex()


def _require_private_bytes(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what} private key must be bytes")
    data = bytes(data)
    if len(data) != X25519_KEY_BYTES:
        raise DecodeError(f"{what} private key must be {X25519_KEY_BYTES} bytes, got {len(data)}")
    return data


@dataclass(frozen=True, eq=False)
class X25519KeyPair:
    """An X25519 key pair. Build it with :meth:`generate` or :meth:`from_private_bytes`."""

    _key: X25519PrivateKey = field(repr=False)
    public: bytes = field(init=False)
    """The 32-byte raw public key."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, rng: Randomness) -> X25519KeyPair:
        """A key pair whose private key is ``rng.bytes(32)`` (reproducible under a seeded rng)."""
        return cls.from_private_bytes(rng.bytes(X25519_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> X25519KeyPair:
        """Rebuild a key pair from its 32 raw private bytes (e.g. reconstructed from shares)."""
        data = _require_private_bytes(private, "X25519")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes, as given at construction (clamping happens at use)."""
        return self._key.private_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """The 32-byte X25519 shared secret with ``peer_public``.

        Raises CryptoError if the peer key is not 32 bytes or is a small-order point (the
        shared secret would be all zeros, known to anyone).
        """
        if not isinstance(peer_public, bytes | bytearray | memoryview):
            raise CryptoError("peer public key must be bytes")
        peer_public = bytes(peer_public)
        if len(peer_public) != X25519_KEY_BYTES:
            raise CryptoError(
                f"peer public key must be {X25519_KEY_BYTES} bytes, got {len(peer_public)}"
            )
        peer = X25519PublicKey.from_public_bytes(peer_public)
        try:
            shared = self._key.exchange(peer)
        except ValueError:
            raise CryptoError("peer public key is a small-order point") from None
        # cryptography already refuses an all-zero result; this keeps us safe if that changes.
        if not any(shared):
            raise CryptoError("peer public key is a small-order point")
        return shared

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={_fingerprint(self.public)}…)"


def x25519_public_from_private(private: bytes) -> bytes:
    """The 32-byte public key belonging to 32 raw private bytes."""
    return X25519KeyPair.from_private_bytes(private).public


@dataclass(frozen=True, eq=False)
class Ed25519SigningKey:
    """An Ed25519 signing key. Build it with :meth:`generate` or :meth:`from_private_bytes`."""

    _key: Ed25519PrivateKey = field(repr=False)
    public: bytes = field(init=False)
    """The 32-byte raw public (verification) key."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, rng: Randomness) -> Ed25519SigningKey:
        """A signing key whose seed is ``rng.bytes(32)`` (reproducible under a seeded rng)."""
        return cls.from_private_bytes(rng.bytes(X25519_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> Ed25519SigningKey:
        """Rebuild a signing key from its 32-byte seed (RFC 8032 "secret key")."""
        data = _require_private_bytes(private, "Ed25519")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def to_pkcs8_pem(self) -> bytes:
        """The private key as an unencrypted PKCS#8 PEM block: the one way it leaves memory,
        for a key file written mode 0600 (``secagg.service.files.create_file``)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pkcs8_pem(cls, pem: str) -> Ed25519SigningKey:
        """Read one unencrypted PKCS#8 PEM block of an Ed25519 key; ``DecodeError`` naming
        what is wrong (never the key) on anything else."""
        body = pem.strip()
        if (
            not (body.startswith(_PEM_BEGIN) and body.endswith(_PEM_END))
            or body.count("-----BEGIN") != 1
        ):
            raise DecodeError("expected one unencrypted PKCS#8 PEM block")
        try:
            key = serialization.load_pem_private_key(body.encode("ascii"), password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
            raise DecodeError("the private key does not parse") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise DecodeError("the private key is not an Ed25519 key")
        return cls.from_private_bytes(key.private_bytes_raw())

    def __repr__(self) -> str:
        return f"Ed25519SigningKey(public={_fingerprint(self.public)}…)"


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature; raise AuthenticationError on any failure whatsoever."""
    if not all(isinstance(b, bytes | bytearray | memoryview) for b in (public, signature)):
        raise AuthenticationError("public key and signature must be bytes")
    if len(public) != ED25519_PUBLIC_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        raise AuthenticationError("signature did not verify")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        raise AuthenticationError("signature did not verify") from None

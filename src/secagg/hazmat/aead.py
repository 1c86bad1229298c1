"""AES-256-GCM sealing of small messages (key shares) with associated data.

Sealed format: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. Nonces are random (from
the caller's Randomness); every key seals only a handful of messages, far below the 2^32
limit for random 96-bit nonces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import AuthenticationError, UsageError

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness

__all__ = ["KEY_BYTES", "NONCE_BYTES", "OVERHEAD", "TAG_BYTES", "open_sealed", "seal"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise UsageError(f"AEAD key must be {KEY_BYTES} bytes")


def seal(key: bytes, plaintext: bytes, associated_data: bytes, rng: Randomness) -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated_data``."""
    _check_key(key)
    nonce = rng.bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Decrypt the output of :func:`seal`; raise AuthenticationError if it does not verify."""
    _check_key(key)
    if not isinstance(sealed, bytes | bytearray | memoryview) or len(sealed) < OVERHEAD:
        raise AuthenticationError("sealed message is too short")
    view = memoryview(sealed)
    try:
        return AESGCM(key).decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], associated_data)
    except InvalidTag:
        # No detail: which of key, AD or ciphertext was wrong is not knowable, nor to be hinted.
        raise AuthenticationError("sealed message did not verify") from None

"""Key derivation: HKDF-SHA256, the injective field encoding, and purpose-bound keys.

Every derived key is bound to a purpose label and a context through :func:`derive_key`, whose
``info`` is the injective :func:`encode_fields` encoding: a key is never used for two
purposes, and no two distinct contexts can produce the same ``info``.

This module depends on nothing else in :mod:`secagg.hazmat`, so that both key generation
(:mod:`~secagg.hazmat.keys`, which needs randomness) and randomness
(:mod:`~secagg.hazmat.randomness`, which needs HKDF) can build on it without importing each
other.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import UsageError

__all__ = ["derive_key", "encode_fields", "hkdf"]

_SHA256_BYTES = 32
_PURPOSE_PREFIX = "secagg/v1/"

# One tag byte per field type, so that b"1", "1" and 1 never encode alike.
_TAG_BYTES = b"B"
_TAG_INT = b"I"
_TAG_STR = b"S"
_LENGTH_BYTES = 8
_INT_BYTES = 8
_INT_LIMIT = 1 << (8 * _INT_BYTES)


def hkdf(ikm: bytes, *, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` (zeros when None), expand with ``info``."""
    if isinstance(length, bool) or not isinstance(length, int):
        raise UsageError("HKDF length must be an int")
    if not 1 <= length <= 255 * _SHA256_BYTES:
        raise UsageError(f"HKDF length must be in [1, {255 * _SHA256_BYTES}], got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def encode_fields(*fields: bytes | int | str) -> bytes:
    """Canonical, injective encoding of a sequence of fields, for hashing, KDF info and AEAD AD.

    Each field is ``tag (1 byte) || length (8 bytes, big-endian) || payload`` where the tag is
    ``B`` for bytes, ``I`` for an int (payload: 8-byte big-endian unsigned, so 0 <= v < 2**64)
    and ``S`` for a str (payload: UTF-8). Bools are refused: they are ints by accident.
    """
    parts: list[bytes] = []
    for value in fields:
        # Exact types first (every caller's fields are), then what they may subclass: a
        # key derivation runs this a few hundred times per client and round.
        payload: bytes
        if type(value) is bytes:
            tag, payload = _TAG_BYTES, value
        elif type(value) is str:
            tag, payload = _TAG_STR, value.encode("utf-8")
        elif type(value) is int and 0 <= value < _INT_LIMIT:
            tag, payload = _TAG_INT, value.to_bytes(_INT_BYTES, "big")
        elif isinstance(value, bytes | bytearray | memoryview):
            tag, payload = _TAG_BYTES, bytes(value)
        elif isinstance(value, str):
            tag, payload = _TAG_STR, value.encode("utf-8")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < _INT_LIMIT:
                raise UsageError("int fields must be in [0, 2**64)")
            tag, payload = _TAG_INT, value.to_bytes(_INT_BYTES, "big")
        else:
            raise UsageError(f"cannot encode a field of type {type(value).__name__}")
        parts += (tag, len(payload).to_bytes(_LENGTH_BYTES, "big"), payload)
    return b"".join(parts)


def derive_key(secret: bytes, purpose: str, *context: bytes | int | str, length: int = 32) -> bytes:
    """A key for one ``purpose`` in one ``context`` (session id, party ids, ...)."""
    return hkdf(secret, info=encode_fields(_PURPOSE_PREFIX + purpose, *context), length=length)

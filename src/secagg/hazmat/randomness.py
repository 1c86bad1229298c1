"""Sources of randomness, passed explicitly into everything that needs it.

The protocol core never calls ``os.urandom`` itself: it is handed a :class:`Randomness`, so a
run is reproducible when given a :class:`DeterministicRandomness` and secure when given a
:class:`SystemRandomness`. Both are cryptographically strong; numpy's and Python's ``random``
are never used for anything secret.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.keys import encode_fields, hkdf

__all__ = ["DeterministicRandomness", "Randomness", "SystemRandomness"]

# Inside the classes below a method is called ``bytes``, which shadows the builtin for the type
# checker; annotations there use this alias instead.
_Bytes = builtins.bytes

_DRBG_INFO = b"secagg/v1/drbg"
_FORK_LABEL = "secagg/v1/drbg-fork"
MIN_SEED_BYTES = 16

# Keystream is produced by encrypting zeros; one shared, immutable block of them is enough.
_ZERO_CHUNK_BYTES = 1 << 17
# A memoryview, so that slicing it does not copy.
_ZEROS = memoryview(_Bytes(_ZERO_CHUNK_BYTES))


class Randomness(Protocol):
    """A cryptographically secure source of random bytes and uint32 words."""

    def bytes(self, n: int) -> _Bytes:
        """Return ``n`` uniformly random bytes."""
        ...

    def words(self, n: int) -> NDArray[np.uint32]:
        """Return ``n`` uniformly random uint32 values."""
        ...


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"count must be a non-negative int, got {n!r}")


def _keystream_words(encryptor: CipherContext, n: int) -> NDArray[np.uint32]:
    """Encrypt zeros straight into a new uint32 array: the array holds the next keystream."""
    out = np.empty(n, dtype=np.uint32)
    view = out.data.cast("B")
    for lo in range(0, len(view), _ZERO_CHUNK_BYTES):
        hi = min(lo + _ZERO_CHUNK_BYTES, len(view))
        encryptor.update_into(_ZEROS[: hi - lo], view[lo:hi])
    if sys.byteorder == "big":
        # The stream is defined as little-endian words.
        out.byteswap(inplace=True)
    return out


def _keystream_bytes(encryptor: CipherContext, n: int) -> _Bytes:
    out = bytearray(n)
    view = memoryview(out)
    for lo in range(0, n, _ZERO_CHUNK_BYTES):
        hi = min(lo + _ZERO_CHUNK_BYTES, n)
        encryptor.update_into(_ZEROS[: hi - lo], view[lo:hi])
    return _Bytes(out)


class SystemRandomness:
    """The operating system's CSPRNG; ``words`` uses AES-CTR under a fresh random key for speed."""

    __slots__ = ()

    def bytes(self, n: int) -> _Bytes:
        _check_count(n)
        return os.urandom(n)

    def words(self, n: int) -> NDArray[np.uint32]:
        _check_count(n)
        # A fresh key per call, so there is no state to protect; urandom itself is ~10x slower
        # than AES-CTR for millions of words.
        key = os.urandom(16)
        encryptor = Cipher(algorithms.AES(key), modes.CTR(_Bytes(16))).encryptor()
        return _keystream_words(encryptor, n)

    def __repr__(self) -> str:
        return "SystemRandomness()"


class DeterministicRandomness:
    """A reproducible CSPRNG: the AES-256-CTR keystream under HKDF-SHA256(seed, "secagg/v1/drbg").

    ``bytes`` and ``words`` consume one stream sequentially. ``fork(label)`` gives a child
    stream that depends only on the seed and the label, never on how much of the parent was
    consumed, so simulated parties get the same randomness whatever the call order.
    """

    __slots__ = ("_encryptor", "_seed")

    def __init__(self, seed: _Bytes) -> None:
        if not isinstance(seed, _Bytes | bytearray | memoryview):
            raise ConfigurationError("seed must be bytes")
        seed = _Bytes(seed)
        if len(seed) < MIN_SEED_BYTES:
            raise ConfigurationError(
                f"seed must be at least {MIN_SEED_BYTES} bytes, got {len(seed)}"
            )
        self._seed = seed
        key = hkdf(seed, info=_DRBG_INFO, length=32)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_Bytes(16))).encryptor()

    def bytes(self, n: int) -> _Bytes:
        _check_count(n)
        return _keystream_bytes(self._encryptor, n)

    def words(self, n: int) -> NDArray[np.uint32]:
        _check_count(n)
        return _keystream_words(self._encryptor, n)

    def fork(self, label: _Bytes | str) -> DeterministicRandomness:
        """An independent child stream named ``label`` (str labels are taken as UTF-8)."""
        if isinstance(label, str):
            label = label.encode("utf-8")
        if not isinstance(label, _Bytes):
            raise UsageError("fork label must be bytes or str")
        return DeterministicRandomness(hkdf(self._seed, info=encode_fields(_FORK_LABEL, label)))

    def __repr__(self) -> str:
        return "DeterministicRandomness(seed=<redacted>)"

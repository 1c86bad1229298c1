"""Sources of randomness, passed explicitly into everything that needs it.

The protocol core never calls ``os.urandom`` itself: it is handed a :class:`Randomness`, so a
run is reproducible when given a :class:`DeterministicRandomness` and secure when given a
:class:`SystemRandomness`. Both are cryptographically strong; numpy's and Python's ``random``
are never used for anything secret. Both read words and bytes from the one
:class:`~secagg.hazmat.keystream.Keystream`.
"""

from __future__ import annotations

import builtins
import os
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.kdf import encode_fields, hkdf
from secagg.hazmat.keystream import Keystream

__all__ = ["DeterministicRandomness", "Randomness", "SystemRandomness", "forked"]

# Inside the classes below a method is called ``bytes``, which shadows the builtin for the type
# checker; annotations there use this alias instead.
_Bytes = builtins.bytes

_DRBG_INFO = b"secagg/v1/drbg"
_FORK_LABEL = "secagg/v1/drbg-fork"
MIN_SEED_BYTES = 16


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


class SystemRandomness:
    """The operating system's CSPRNG; ``words`` uses AES-CTR under a fresh random key for speed."""

    __slots__ = ()

    def bytes(self, n: int) -> _Bytes:
        _check_count(n)
        return os.urandom(n)

    def words(self, n: int) -> NDArray[np.uint32]:
        _check_count(n)  # before spending entropy on a key
        # A fresh key per call, so there is no state to protect; urandom itself is ~10x slower
        # than AES-CTR for millions of words.
        return Keystream(os.urandom(16)).words(n)

    def __repr__(self) -> str:
        return "SystemRandomness()"


class DeterministicRandomness:
    """A reproducible CSPRNG: the AES-256-CTR keystream under HKDF-SHA256(seed, "secagg/v1/drbg").

    ``bytes`` and ``words`` consume one stream sequentially. ``fork(label)`` gives a child
    stream that depends only on the seed and the label, never on how much of the parent was
    consumed, so simulated parties get the same randomness whatever the call order.
    """

    __slots__ = ("_seed", "_stream")

    def __init__(self, seed: _Bytes) -> None:
        if not isinstance(seed, _Bytes | bytearray | memoryview):
            raise ConfigurationError("seed must be bytes")
        seed = _Bytes(seed)
        if len(seed) < MIN_SEED_BYTES:
            raise ConfigurationError(
                f"seed must be at least {MIN_SEED_BYTES} bytes, got {len(seed)}"
            )
        self._seed = seed
        self._stream = Keystream(hkdf(seed, info=_DRBG_INFO, length=32))

    # The stream checks the counts.
    def bytes(self, n: int) -> _Bytes:
        return self._stream.read(n)

    def words(self, n: int) -> NDArray[np.uint32]:
        return self._stream.words(n)

    def fork(self, label: _Bytes | str) -> DeterministicRandomness:
        """An independent child stream named ``label`` (str labels are taken as UTF-8)."""
        if isinstance(label, str):
            label = label.encode("utf-8")
        if not isinstance(label, _Bytes):
            raise UsageError("fork label must be bytes or str")
        return DeterministicRandomness(hkdf(self._seed, info=encode_fields(_FORK_LABEL, label)))

    def __repr__(self) -> str:
        return "DeterministicRandomness(seed=<redacted>)"


def forked(root: Randomness, label: str) -> Randomness:
    """A seeded run's own stream for ``label`` (``DeterministicRandomness.fork``); the
    operating system's randomness is one stream for every label."""
    return root.fork(label) if isinstance(root, DeterministicRandomness) else root

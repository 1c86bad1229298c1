"""The randomised Hadamard rotation that spreads a vector's L2 mass evenly over coordinates.

``rotate(x, seed) = H · diag(signs) · pad(x) / sqrt(D)``, where D is the next power of two at
or above ``len(x)``, H the D x D Sylvester-Hadamard matrix and ``signs`` D random +-1 drawn from
the 32-byte ``seed``. ``H / sqrt(D)`` is orthonormal and symmetric and the signs are their own
inverse, so ``unrotate(y) = diag(signs) · H · y / sqrt(D)``, cut back to the original length.

Why: distributed DP clips, scales and rounds every coordinate to a fixed-width ring. After the
rotation each coordinate of any fixed vector v is a Rademacher sum with variance proxy
``||v||^2 / D`` (Hoeffding), so no coordinate carries much more than its share of the norm and
the ring can be sized from the L2 clip alone. Every client of a round uses the same seed (the
round derives it), so the rotation is linear across clients and the server undoes it once on
the sum. The signs are secret from nobody; the bound holds as long as the inputs do not depend
on them.

The transform is a fast Walsh-Hadamard transform: log2(D) vectorised butterfly passes, O(D log D).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.errors import UsageError
from secagg.hazmat.randomness import DeterministicRandomness

__all__ = ["SEED_BYTES", "padded_dimension", "rotate", "unrotate"]

SEED_BYTES = 32

# The seed may be a round secret used elsewhere as well; the signs come from a child stream
# with its own label, so this use never collides with another.
_SIGNS_LABEL = b"secagg/v1/dp/rotation-signs"


def padded_dimension(dim: int) -> int:
    """The power of two the rotation pads a ``dim``-vector to (at least 1)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise UsageError(f"dimension must be a positive int, got {dim!r}")
    return 1 << (dim - 1).bit_length()


def _signs(seed: bytes, size: int) -> NDArray[np.float64]:
    """``size`` independent uniform +-1.0 from the seed: one keystream bit each."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise UsageError(f"the rotation seed must be {SEED_BYTES} bytes")
    words = DeterministicRandomness(bytes(seed)).fork(_SIGNS_LABEL).words(-(-size // 32))
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:size]
    signs: NDArray[np.float64] = 1.0 - 2.0 * bits.astype(np.float64)
    return signs


def _hadamard_in_place(a: NDArray[np.float64]) -> None:
    """Unnormalised Walsh-Hadamard transform of ``a`` (length a power of two), in place.

    Pass h combines every pair of blocks of length h: (top, bottom) -> (top + bottom,
    top - bottom). Viewing ``a`` as (D / 2h, 2, h) makes each pass three whole-array ops.
    """
    size = len(a)
    half = 1
    scratch = np.empty(size // 2, dtype=np.float64)
    while half < size:
        pairs = a.reshape(-1, 2, half)
        top, bottom = pairs[:, 0, :], pairs[:, 1, :]
        keep = scratch.reshape(-1, half)
        np.copyto(keep, top)
        top += bottom
        np.subtract(keep, bottom, out=bottom)
        half *= 2


def rotate(x: NDArray[np.floating[Any]], seed: bytes) -> NDArray[np.float64]:
    """The rotated vector, zero-padded to ``padded_dimension(len(x))`` (float64, a new array)."""
    values = np.asarray(x, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise UsageError(f"rotate expects a non-empty 1-D array, got shape {values.shape}")
    size = padded_dimension(len(values))
    out = np.zeros(size, dtype=np.float64)
    out[: len(values)] = values
    out *= _signs(seed, size)
    _hadamard_in_place(out)
    out *= 1.0 / math.sqrt(size)
    return out


def unrotate(y: NDArray[np.floating[Any]], seed: bytes, dim: int) -> NDArray[np.float64]:
    """The inverse of :func:`rotate`: ``y`` (padded length) back to its first ``dim`` values."""
    size = padded_dimension(dim)
    values = np.array(y, dtype=np.float64)  # a copy, transformed in place
    if values.shape != (size,):
        raise UsageError(
            f"unrotate expects a vector of length {size} for dimension {dim}, "
            f"got shape {values.shape}"
        )
    _hadamard_in_place(values)
    values *= _signs(seed, size)
    values *= 1.0 / math.sqrt(size)
    return values[:dim].copy() if dim < size else values

"""Mask expansion: a 16-byte key -> the AES-128-CTR keystream, read as ring words.

A mask is the :mod:`~secagg.hazmat.keystream` under its key: the encryption of zeros under
AES-128-CTR with initial counter block 0 (a 128-bit big-endian counter, as OpenSSL increments
it). Word i is bytes [i*w, (i+1)*w) of the stream, little-endian, for a word width w of 4
(uint32) or 8 (uint64) bytes. It is seekable: any slice of the mask can be produced alone, by
starting at the right counter block.

Masks are never materialised whole: :func:`add_mask` generates the keystream in cache-sized
chunks into one reusable scratch buffer and adds each chunk into the accumulator while it is
still in cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from secagg.errors import UsageError
from secagg.hazmat.keystream import CHUNK_BYTES, Keystream, WordArray

__all__ = [
    "CHUNK_BYTES",
    "MASK_KEY_BYTES",
    "ApplyMasks",
    "Mask",
    "add_mask",
    "apply_masks",
    "expand_into",
]

MASK_KEY_BYTES = 16


def _stream_at(key: bytes, start: int, words: WordArray, name: str) -> Keystream:
    """The mask under ``key`` positioned at word ``start`` of ``words``'s width."""
    if not isinstance(key, bytes) or len(key) != MASK_KEY_BYTES:
        raise UsageError(f"mask key must be {MASK_KEY_BYTES} bytes")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise UsageError(f"start must be a non-negative int, got {start!r}")
    # The width is needed to find the offset; Keystream then checks the array fully.
    if not isinstance(words, np.ndarray):
        raise UsageError(f"{name} must be a 1-D uint32 or uint64 array")
    return Keystream(key, start * words.itemsize)


def expand_into(key: bytes, out: WordArray, start: int = 0) -> None:
    """Fill ``out`` with keystream words ``start, start+1, ...`` at ``out``'s width."""
    _stream_at(key, start, out, "out").words_into(out)


def add_mask(
    acc: WordArray,
    key: bytes,
    *,
    start: int = 0,
    subtract: bool = False,
    scratch: WordArray | None = None,
) -> None:
    """``acc (+|-)= keystream words [start, start + len(acc))``, wrapping in ``acc``'s dtype.

    ``scratch`` (same dtype, C-contiguous, any nonzero length) is reused across chunks; pass
    one in to avoid an allocation per call when adding many masks. The caller reduces the
    result modulo 2^b at the end.
    """
    _stream_at(key, start, acc, "acc").add_into(acc, subtract=subtract, scratch=scratch)


Mask = tuple[bytes, bool]  # (mask key, subtract)


def apply_masks(acc: WordArray, masks: Sequence[Mask], *, start: int = 0) -> None:
    """Add (or subtract) every mask's keystream words [start, start + len(acc)) into
    ``acc``, reusing one scratch buffer."""
    scratch = np.empty(max(1, min(len(acc), CHUNK_BYTES // acc.itemsize)), dtype=acc.dtype)
    for key, subtract in masks:
        add_mask(acc, key, start=start, subtract=subtract, scratch=scratch)


# What the server regenerates the masks to remove with: ``apply_masks`` itself, or a driver's
# function of the same shape that spreads the work (``secagg.parallel.MaskApplier`` over
# processes, the Ray backend's ``RayMaskApplier``). One name for the shape, so the server, the
# masking scheme and the backends agree on what they pass along.
ApplyMasks = Callable[[WordArray, Sequence[Mask]], None]

"""Mask expansion: a 16-byte key -> the AES-128-CTR keystream, read as ring words.

The keystream is the encryption of zeros under AES-128-CTR with initial counter block 0 (a
128-bit big-endian counter, as OpenSSL increments it). Word i is bytes [i*w, (i+1)*w) of the
stream, little-endian, for a word width w of 4 (uint32) or 8 (uint64) bytes. It is seekable:
any slice of the mask can be produced alone, by starting at the right counter block.

Masks are never materialised whole: :func:`add_mask` generates the keystream in cache-sized
chunks into one reusable scratch buffer and adds each chunk into the accumulator while it is
still in cache.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from numpy.typing import NDArray

from secagg.errors import UsageError

__all__ = ["CHUNK_BYTES", "MASK_KEY_BYTES", "Mask", "add_mask", "apply_masks", "expand_into"]

MASK_KEY_BYTES = 16
_BLOCK_BYTES = 16
# 128 KiB of keystream per step: fits in L2 together with the matching slice of the
# accumulator; measured fastest among 32-256 KiB.
CHUNK_BYTES = 1 << 17
# A memoryview, so that slicing it does not copy.
_ZEROS = memoryview(bytes(CHUNK_BYTES))
_BIG_ENDIAN_HOST = sys.byteorder == "big"

WordArray = NDArray[np.unsignedinteger[Any]]


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != MASK_KEY_BYTES:
        raise UsageError(f"mask key must be {MASK_KEY_BYTES} bytes")


def _check_words(a: WordArray, name: str) -> None:
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype not in (np.uint32, np.uint64):
        raise UsageError(f"{name} must be a 1-D uint32 or uint64 array")


def _check_start(start: int) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise UsageError(f"start must be a non-negative int, got {start!r}")


def _encryptor_at(key: bytes, byte_offset: int) -> CipherContext:
    """A CTR encryptor positioned ``byte_offset`` bytes into the keystream."""
    block, skip = divmod(byte_offset, _BLOCK_BYTES)
    if block >= 1 << 128:
        raise UsageError("keystream offset beyond the 2^128-block counter")
    counter = block.to_bytes(_BLOCK_BYTES, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    if skip:
        encryptor.update(_ZEROS[:skip])
    return encryptor


def expand_into(key: bytes, out: WordArray, start: int = 0) -> None:
    """Fill ``out`` with keystream words ``start, start+1, ...`` at ``out``'s width."""
    _check_key(key)
    _check_words(out, "out")
    _check_start(start)
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise UsageError("out must be C-contiguous and writeable")
    encryptor = _encryptor_at(key, start * out.itemsize)
    view = out.data.cast("B")
    for lo in range(0, len(view), CHUNK_BYTES):
        hi = min(lo + CHUNK_BYTES, len(view))
        encryptor.update_into(_ZEROS[: hi - lo], view[lo:hi])
    if _BIG_ENDIAN_HOST:
        out.byteswap(inplace=True)


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
    _check_key(key)
    _check_words(acc, "acc")
    _check_start(start)
    if not acc.flags.writeable:
        raise UsageError("acc must be writeable")
    width = acc.itemsize
    if scratch is None:
        scratch = np.empty(CHUNK_BYTES // width, dtype=acc.dtype)
    else:
        _check_words(scratch, "scratch")
        if scratch.dtype != acc.dtype or not scratch.flags.c_contiguous or len(scratch) == 0:
            raise UsageError("scratch must be a non-empty C-contiguous array of acc's dtype")
    chunk = min(len(scratch), CHUNK_BYTES // width)
    scratch_bytes = scratch.data.cast("B")
    op = np.subtract if subtract else np.add
    encryptor = _encryptor_at(key, start * width)
    n = len(acc)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        nbytes = (hi - lo) * width
        encryptor.update_into(_ZEROS[:nbytes], scratch_bytes[:nbytes])
        words = scratch[: hi - lo]
        if _BIG_ENDIAN_HOST:
            words.byteswap(inplace=True)
        part = acc[lo:hi]
        op(part, words, out=part)


Mask = tuple[bytes, bool]  # (mask key, subtract)


def apply_masks(acc: WordArray, masks: Sequence[Mask], *, start: int = 0) -> None:
    """Add (or subtract) every mask's keystream words [start, start + len(acc)) into
    ``acc``, reusing one scratch buffer."""
    scratch = np.empty(max(1, min(len(acc), CHUNK_BYTES // acc.itemsize)), dtype=acc.dtype)
    for key, subtract in masks:
        add_mask(acc, key, start=start, subtract=subtract, scratch=scratch)

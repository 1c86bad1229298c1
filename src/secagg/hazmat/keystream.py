"""The one AES-CTR keystream: seekable, and written into buffers the caller owns.

Masks (:mod:`~secagg.hazmat.prg`), the seeded DRBG and the system randomness
(:mod:`~secagg.hazmat.randomness`, and through it stochastic rounding and DP noise) and the
SecAgg+ graph shuffle (:mod:`secagg.schemes.masking.graph`) all read this stream, so its definition
lives in one place:

- the stream under a 16-byte (AES-128) or 32-byte (AES-256) key is the CTR-mode encryption of
  zeros with initial counter block 0, the counter being the whole 128-bit block, big-endian,
  as OpenSSL increments it (it wraps from 2^128 - 1 to 0);
- byte ``i`` of the stream is byte ``i mod 16`` of ``AES_key(i // 16)``; it can be started at
  any byte offset, by starting the counter at the right block;
- word ``j`` of width ``w`` (4 bytes for uint32, 8 for uint64) is stream bytes
  ``[j*w, (j+1)*w)`` read little-endian, whatever the host's byte order.

Speed is the point of writing into preallocated buffers: AES-CTR through ``update_into``
runs at several GB/s per core, while a call that allocates its output is ~15x slower. Large
requests are produced in :data:`CHUNK_BYTES` steps from one shared block of zeros;
:meth:`Keystream.add_into` fuses expansion with the addition into an accumulator, so the
keystream is consumed while it is still in cache and never materialised whole.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from numpy.typing import NDArray

from secagg.errors import UsageError

__all__ = ["BLOCK_BYTES", "CHUNK_BYTES", "KEY_SIZES", "WORD_DTYPES", "Keystream", "WordArray"]

BLOCK_BYTES: Final = 16
KEY_SIZES: Final = (16, 32)  # AES-128 and AES-256
# 128 KiB of keystream per step: fits in L2 together with the matching slice of an
# accumulator; measured fastest among 32-256 KiB.
CHUNK_BYTES: Final = 1 << 17
# The counter has 128 bits, so the stream repeats after 2^128 blocks.
_PERIOD_BYTES: Final = BLOCK_BYTES << 128
# The keystream is the encryption of zeros; one shared, immutable block of them is enough. A
# memoryview, so that slicing it does not copy.
_ZEROS: Final = memoryview(bytes(CHUNK_BYTES))
_BIG_ENDIAN_HOST: Final = sys.byteorder == "big"
WORD_DTYPES: Final = (np.dtype(np.uint32), np.dtype(np.uint64))

WordArray = NDArray[np.unsignedinteger[Any]]
"""A 1-D uint32 or uint64 array: the word widths the stream is read at."""


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"count must be a non-negative int, got {n!r}")


def _check_words(a: WordArray, name: str) -> None:
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype not in WORD_DTYPES:
        raise UsageError(f"{name} must be a 1-D uint32 or uint64 array")


def _writable_bytes(out: bytearray | memoryview | NDArray[Any]) -> memoryview:
    """``out`` as a flat, writable byte view; refuses anything it could not fill in place."""
    if isinstance(out, np.ndarray):
        if out.dtype.hasobject:  # filling it would overwrite pointers
            raise UsageError("out must not hold Python objects")
        view = out.data
    elif isinstance(out, bytearray | memoryview):
        view = memoryview(out)
    else:
        raise UsageError(f"out must be a bytearray, memoryview or array, not {type(out).__name__}")
    if view.readonly or not view.c_contiguous or "O" in view.format:
        raise UsageError("out must be a writable, C-contiguous buffer of plain data")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class Keystream:
    """The AES-CTR keystream under one key, read from a position that :meth:`seek` sets.

    Each read continues where the previous one stopped; :attr:`offset` is the byte position
    of the next read. The key is secret and never shown (``repr`` gives only its size and the
    offset).
    """

    __slots__ = ("_encryptor", "_key", "_offset")

    _encryptor: CipherContext
    _key: bytes
    _offset: int

    def __init__(self, key: bytes, offset: int = 0) -> None:
        if not isinstance(key, bytes) or len(key) not in KEY_SIZES:
            raise UsageError(f"keystream key must be 16 or 32 bytes, got {_describe(key)}")
        self._key = key
        self.seek(offset)

    @property
    def offset(self) -> int:
        """Byte position of the next read, in ``[0, 16 * 2^128)``."""
        return self._offset

    def seek(self, offset: int) -> None:
        """Position the stream at byte ``offset`` (block ``offset // 16`` for a block offset)."""
        # One comparison chain, no helper call: masking seeks once per mask, so this is on
        # the per-mask path (type() also refuses bools, which are ints by accident).
        if type(offset) is not int or not 0 <= offset < _PERIOD_BYTES:
            if type(offset) is int and offset >= _PERIOD_BYTES:
                raise UsageError("keystream offset beyond the 2^128-block counter")
            raise UsageError(f"keystream offset must be a non-negative int, got {offset!r}")
        block, skip = divmod(offset, BLOCK_BYTES)
        counter = block.to_bytes(BLOCK_BYTES, "big")
        self._encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        if skip:
            self._encryptor.update(_ZEROS[:skip])
        self._offset = offset

    def fill(self, out: bytearray | memoryview | NDArray[Any]) -> None:
        """Write the next ``nbytes(out)`` bytes of the stream into ``out``, in memory order.

        ``out`` is any writable C-contiguous buffer (bytearray, memoryview, numpy array); an
        array's elements get the raw stream bytes, in the host's byte order (use
        :meth:`words_into` for words that mean the same on every host).
        """
        self._fill(_writable_bytes(out))

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        _check_count(n)
        if n <= CHUNK_BYTES:
            # One allocation, made by the cipher: the fastest way to get a small bytes.
            data = self._encryptor.update(_ZEROS[:n])
            self._advance(n)
            return data
        out = np.empty(n, dtype=np.uint8)
        self._fill(out.data)
        return out.tobytes()

    def words(self, n: int) -> NDArray[np.uint32]:
        """The next ``n`` words of the stream, as a new uint32 array."""
        _check_count(n)
        out = np.empty(n, dtype=np.uint32)
        self._fill(out.data.cast("B"))
        if _BIG_ENDIAN_HOST:
            out.byteswap(inplace=True)
        return out

    def words_into(self, out: WordArray) -> None:
        """Fill ``out`` with the next ``len(out)`` words at its width (uint32 or uint64)."""
        _check_words(out, "out")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise UsageError("out must be C-contiguous and writeable")
        self._fill(out.data.cast("B"))
        if _BIG_ENDIAN_HOST:
            out.byteswap(inplace=True)

    def add_into(
        self, acc: WordArray, *, subtract: bool = False, scratch: WordArray | None = None
    ) -> None:
        """``acc (+|-)= the next len(acc) words``, wrapping in ``acc``'s dtype (uint32/64).

        The words go through ``scratch`` (same dtype, C-contiguous, any nonzero length; one
        of at most :data:`CHUNK_BYTES` is allocated when None) chunk by chunk, each added
        while it is still in cache. ``acc`` may be strided.
        """
        _check_words(acc, "acc")
        if not acc.flags.writeable:
            raise UsageError("acc must be writeable")
        width = acc.itemsize
        if scratch is None:
            scratch = np.empty(min(len(acc), CHUNK_BYTES // width) or 1, dtype=acc.dtype)
        else:
            _check_words(scratch, "scratch")
            if scratch.dtype != acc.dtype or not scratch.flags.c_contiguous or len(scratch) == 0:
                raise UsageError("scratch must be a non-empty C-contiguous array of acc's dtype")
            if not scratch.flags.writeable:
                raise UsageError("scratch must be writeable")
        chunk = min(len(scratch), CHUNK_BYTES // width)
        scratch_bytes = scratch.data.cast("B")
        op = np.subtract if subtract else np.add
        # The hot loop of masking: the cipher is called directly, nothing else per chunk.
        update_into = self._encryptor.update_into
        n = len(acc)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            nbytes = (hi - lo) * width
            update_into(_ZEROS[:nbytes], scratch_bytes[:nbytes])
            words = scratch[: hi - lo]
            if _BIG_ENDIAN_HOST:
                words.byteswap(inplace=True)
            part = acc[lo:hi]
            op(part, words, out=part)
        self._offset = (self._offset + n * width) % _PERIOD_BYTES  # as _advance, inlined

    def _fill(self, view: memoryview) -> None:
        """Write the next ``len(view)`` bytes into a flat, writable byte view."""
        n = len(view)
        update_into = self._encryptor.update_into
        for lo in range(0, n, CHUNK_BYTES):
            hi = min(lo + CHUNK_BYTES, n)
            update_into(_ZEROS[: hi - lo], view[lo:hi])
        self._advance(n)

    def _advance(self, n: int) -> None:
        # The counter wraps, and so does the position: offset always seeks to what comes next.
        self._offset = (self._offset + n) % _PERIOD_BYTES

    def __repr__(self) -> str:
        return f"Keystream(AES-{8 * len(self._key)}, key=<redacted>, offset={self._offset})"


def _describe(key: object) -> str:
    # Never the key's value: it is secret even when malformed.
    if isinstance(key, bytes | bytearray | memoryview):
        return f"{len(key)} bytes"
    return type(key).__name__

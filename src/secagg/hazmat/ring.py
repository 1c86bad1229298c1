"""The ring Z_{2^b}: in-place vector arithmetic and bit packing at exactly b bits per value.

Values live in numpy uint32 (b <= 32) or uint64 (b <= 62) arrays. Because 2^b divides the
dtype's modulus, arithmetic may wrap freely in the dtype and be reduced once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, DecodeError, UsageError

__all__ = ["MAX_BITS", "MIN_BITS", "Ring", "RingArray"]

MIN_BITS = 2
MAX_BITS = 62

RingArray = NDArray[np.unsignedinteger[Any]]

# Extra zero bytes after a packing buffer, so that every 8-byte window (and the 9th byte of
# a value straddling 9 bytes) stays inside it.
_SLACK = 16

# Widths whose packing is a plain little-endian integer array.
_NATIVE_WIDTHS = {8: "<u1", 16: "<u2", 32: "<u4"}


def _window(
    buf: NDArray[np.uint8],
    offset: int,
    count: int,
    stride: int,
    dtype: type[np.unsignedinteger[Any]] | str = "<u8",
) -> NDArray[Any]:
    """``count`` integers of ``dtype`` read from ``buf`` at byte ``offset``, ``stride`` apart.

    A view, neither aligned nor contiguous: numpy reads and writes it with unaligned loops.
    """
    return np.ndarray((count,), dtype=dtype, buffer=buf, offset=offset, strides=(stride,))


@dataclass(frozen=True)
class Ring:
    """Z_{2^bits}, 2 <= bits <= 62."""

    bits: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigurationError("ring bits must be an int")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigurationError(
                f"ring bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        return np.uint32 if self.bits <= 32 else np.uint64

    def zeros(self, n: int) -> RingArray:
        return np.zeros(n, dtype=self.dtype)

    def reduce(self, a: RingArray) -> RingArray:
        """Reduce ``a`` modulo 2^bits in place and return it."""
        np.bitwise_and(a, a.dtype.type(self.mask), out=a)
        return a

    def add_into(self, acc: RingArray, x: RingArray) -> None:
        """``acc = (acc + x) mod 2^bits`` in place."""
        self._check_same_dtype(acc, x)
        np.add(acc, x, out=acc)
        self.reduce(acc)

    def sub_into(self, acc: RingArray, x: RingArray) -> None:
        """``acc = (acc - x) mod 2^bits`` in place."""
        self._check_same_dtype(acc, x)
        np.subtract(acc, x, out=acc)
        self.reduce(acc)

    def _check_same_dtype(self, acc: RingArray, x: RingArray) -> None:
        if acc.dtype != self.dtype or x.dtype != self.dtype:
            raise UsageError(
                f"ring arrays must have dtype {np.dtype(self.dtype)}, got {acc.dtype} and {x.dtype}"
            )

    def packed_size(self, n: int) -> int:
        """Bytes needed for ``n`` values at ``bits`` bits each."""
        return (n * self.bits + 7) // 8

    def _group(self) -> tuple[int, int]:
        """(values, bytes) per smallest run of values that ends on a byte boundary."""
        values = 8 // gcd(self.bits, 8)
        return values, values * self.bits // 8

    def pack(self, values: NDArray[np.integer[Any]]) -> bytes:
        """Values as a little-endian bit stream, value i at bits [i*b, (i+1)*b), LSB first.

        The stream is padded with zero bits to a whole byte. Raises UsageError if a value is
        outside [0, 2^bits).
        """
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype.kind not in "ui":
            raise UsageError("pack expects a 1-D integer array")
        n = len(values)
        if n == 0:
            return b""
        if values.dtype.kind == "i" and int(values.min()) < 0:
            raise UsageError("ring values must be non-negative")
        if int(values.max()) > self.mask:
            raise UsageError(f"ring values must be below 2^{self.bits}")
        native = _NATIVE_WIDTHS.get(self.bits)
        if native is not None:
            return values.astype(native, copy=False).tobytes()

        # Value j of every group of g values starts at bit j*b of its group, i.e. at byte
        # off_j = j*b // 8 plus shift s_j = j*b % 8, and groups are G bytes apart. So all the
        # values at position j go in with one vectorised OR into the 64-bit little-endian
        # windows at off_j, off_j + G, ... (unaligned, strided). Windows of one OR must not
        # overlap, so when G < 8 every ceil(8/G)-th group goes in the same pass.
        bits = self.bits
        g, group_bytes = self._group()
        m = -(-n // g)
        words = values.astype(np.uint64)
        out = np.zeros(m * group_bytes + _SLACK, dtype=np.uint8)
        passes = -(-8 // group_bytes)
        for j in range(g):
            offset, shift = divmod(j * bits, 8)
            column = words[j::g]
            low = column << np.uint64(shift)
            for p in range(passes):
                part = low[p::passes]
                window = _window(out, offset + p * group_bytes, len(part), passes * group_bytes)
                window |= part
            if shift + bits > 64:
                # The top bits of a value that straddles 9 bytes.
                spill = _window(out, offset + 8, len(column), group_bytes, np.uint8)
                spill |= (column >> np.uint64(64 - shift)).astype(np.uint8)
        return out[: self.packed_size(n)].tobytes()

    def unpack(self, data: bytes, n: int) -> RingArray:
        """Inverse of :meth:`pack`. Raises DecodeError on a wrong length or nonzero padding."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"value count must be a non-negative int, got {n!r}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("packed ring vector must be bytes")
        size = self.packed_size(n)
        if len(data) != size:
            raise DecodeError(f"packed ring vector must be {size} bytes, got {len(data)}")
        if n == 0:
            return self.zeros(0)
        raw = np.frombuffer(data, dtype=np.uint8)
        tail_bits = (n * self.bits) % 8
        if tail_bits and int(raw[-1]) >> tail_bits:
            raise DecodeError("nonzero padding bits after the last value")
        native = _NATIVE_WIDTHS.get(self.bits)
        if native is not None:
            return np.frombuffer(data, dtype=native).astype(self.dtype)

        # The mirror image of pack: one strided, unaligned 64-bit read per position j.
        bits = self.bits
        g, group_bytes = self._group()
        m = -(-n // g)
        padded = np.zeros(m * group_bytes + _SLACK, dtype=np.uint8)
        padded[:size] = raw
        values = np.empty(m * g, dtype=self.dtype)
        mask = np.uint64(self.mask)
        for j in range(g):
            offset, shift = divmod(j * bits, 8)
            column = _window(padded, offset, m, group_bytes) >> np.uint64(shift)
            if shift + bits > 64:
                spill = _window(padded, offset + 8, m, group_bytes, np.uint8)
                column |= spill.astype(np.uint64) << np.uint64(64 - shift)
            # Bits past the value belong to the next one.
            column &= mask
            values[j::g] = column
        return values[:n]

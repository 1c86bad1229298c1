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

# Widths whose packing is a plain little-endian integer array.
_NATIVE_WIDTHS = {8: "<u1", 16: "<u2", 32: "<u4"}


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

        # Work on groups of g values that fill G whole bytes: output byte c of a group gathers
        # the (at most few) values overlapping its 8 bits. This is ~G+g column operations in
        # total, whatever n is.
        g, group_bytes = self._group()
        m = -(-n // g)
        padded = np.zeros(m * g, dtype=np.uint64)
        padded[:n] = values
        grid = padded.reshape(m, g)
        out = np.empty((m, group_bytes), dtype=np.uint8)
        for c in range(group_bytes):
            lo = 8 * c
            acc: NDArray[np.uint64] | None = None
            for j in range(lo // self.bits, min(g, (lo + 8 + self.bits - 1) // self.bits)):
                offset = j * self.bits - lo
                column = grid[:, j]
                term = column << np.uint64(offset) if offset >= 0 else column >> np.uint64(-offset)
                acc = term if acc is None else acc | term
            assert acc is not None
            # Casting to uint8 keeps the low 8 bits, which is exactly this byte.
            out[:, c] = acc
        return out.reshape(-1)[: self.packed_size(n)].tobytes()

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

        g, group_bytes = self._group()
        m = -(-n // g)
        padded = np.zeros(m * group_bytes, dtype=np.uint8)
        padded[:size] = raw
        grid = padded.reshape(m, group_bytes)
        values = np.empty((m, g), dtype=np.uint64)
        mask = np.uint64(self.mask)
        for j in range(g):
            start = j * self.bits
            acc: NDArray[np.uint64] | None = None
            for c in range(start // 8, (start + self.bits - 1) // 8 + 1):
                offset = 8 * c - start
                column = grid[:, c].astype(np.uint64)
                term = column << np.uint64(offset) if offset >= 0 else column >> np.uint64(-offset)
                acc = term if acc is None else acc | term
            assert acc is not None
            # Bits shifted past the top belong to the next value: mask them off.
            values[:, j] = acc & mask
        return values.reshape(-1)[:n].astype(self.dtype)

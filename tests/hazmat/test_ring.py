from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigurationError, DecodeError, UsageError
from secagg.hazmat import ring as ring_module
from secagg.hazmat.ring import Ring


def reference_pack(values: list[int], bits: int) -> bytes:
    """The specified bit stream, built as one big Python integer."""
    stream = sum(v << (i * bits) for i, v in enumerate(values))
    return stream.to_bytes((len(values) * bits + 7) // 8, "little")


@st.composite
def ring_vectors(draw: st.DrawFn) -> tuple[Ring, list[int]]:
    ring = Ring(draw(st.integers(2, 62)))
    values = draw(st.lists(st.integers(0, ring.mask), max_size=40))
    return ring, values


@pytest.mark.parametrize("bits", [-1, 0, 1, 63, 64])
def test_bits_outside_2_to_62_are_rejected(bits: int) -> None:
    with pytest.raises(ConfigurationError):
        Ring(bits)


def test_non_int_bits_are_rejected() -> None:
    with pytest.raises(ConfigurationError):
        Ring(True)
    with pytest.raises(ConfigurationError):
        Ring(20.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bits", "dtype"), [(2, np.uint32), (32, np.uint32), (33, np.uint64), (62, np.uint64)]
)
def test_modulus_mask_and_dtype(bits: int, dtype: type) -> None:
    ring = Ring(bits)
    assert ring.modulus == 2**bits
    assert ring.mask == 2**bits - 1
    assert ring.dtype is dtype
    zeros = ring.zeros(5)
    assert zeros.dtype == dtype
    assert not zeros.any()


def test_ring_is_frozen() -> None:
    ring = Ring(20)
    with pytest.raises(AttributeError):
        ring.bits = 21  # type: ignore[misc]


@pytest.mark.parametrize("bits", [5, 32, 40, 62])
def test_add_and_sub_wrap_modulo_2_to_the_bits(bits: int) -> None:
    ring = Ring(bits)
    a = np.array([ring.mask, ring.mask, 0, 3], dtype=ring.dtype)
    b = np.array([1, ring.mask, 1, 2], dtype=ring.dtype)
    acc = a.copy()
    ring.add_into(acc, b)
    assert acc.tolist() == [(int(x) + int(y)) % ring.modulus for x, y in zip(a, b, strict=True)]
    ring.sub_into(acc, b)
    assert acc.tolist() == a.tolist()
    ring.sub_into(acc, a)
    ring.sub_into(acc, b)
    assert acc.tolist() == [(-int(y)) % ring.modulus for y in b]


def test_add_into_rejects_mismatched_dtypes() -> None:
    ring = Ring(20)
    with pytest.raises(UsageError):
        ring.add_into(ring.zeros(3), np.zeros(3, dtype=np.uint64))
    with pytest.raises(UsageError):
        ring.sub_into(np.zeros(3, dtype=np.int64), ring.zeros(3))


def test_reduce_works_in_place_and_returns_its_argument() -> None:
    ring = Ring(4)
    a = np.array([15, 16, 17, 2**32 - 1], dtype=np.uint32)
    assert ring.reduce(a) is a
    assert a.tolist() == [15, 0, 1, 15]


@pytest.mark.parametrize(("bits", "n", "size"), [(20, 0, 0), (20, 1, 3), (20, 2, 5), (3, 3, 2)])
def test_packed_size_rounds_bits_up_to_bytes(bits: int, n: int, size: int) -> None:
    assert Ring(bits).packed_size(n) == size


def test_pack_known_answer_three_bit_values() -> None:
    # 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 = 0x58d1, little-endian, one zero padding bit.
    assert Ring(3).pack(np.array([1, 2, 3, 4, 5], dtype=np.uint32)) == b"\xd1\x58"


@given(ring_vectors())
@settings(max_examples=300, deadline=None)
def test_pack_lays_values_out_lsb_first_in_a_little_endian_bit_stream(
    case: tuple[Ring, list[int]],
) -> None:
    ring, values = case
    packed = ring.pack(np.array(values, dtype=ring.dtype))
    assert packed == reference_pack(values, ring.bits)
    assert len(packed) == ring.packed_size(len(values))


@given(ring_vectors())
@settings(max_examples=300, deadline=None)
def test_unpack_inverts_pack(case: tuple[Ring, list[int]]) -> None:
    ring, values = case
    array = np.array(values, dtype=ring.dtype)
    unpacked = ring.unpack(ring.pack(array), len(values))
    assert unpacked.dtype == ring.dtype
    np.testing.assert_array_equal(unpacked, array)


@pytest.mark.parametrize("bits", [2, 7, 8, 16, 20, 31, 32, 33, 48, 61, 62])
def test_round_trip_of_long_random_vectors(bits: int) -> None:
    ring = Ring(bits)
    rng = np.random.default_rng(bits)  # test data only, nothing secret
    values = rng.integers(0, ring.modulus, size=10_007, dtype=np.uint64).astype(ring.dtype)
    packed = ring.pack(values)
    assert packed == reference_pack([int(v) for v in values], bits)
    np.testing.assert_array_equal(ring.unpack(packed, len(values)), values)


def test_pack_accepts_other_integer_dtypes() -> None:
    ring = Ring(12)
    assert ring.pack(np.array([1, 4095], dtype=np.int64)) == reference_pack([1, 4095], 12)


@pytest.mark.parametrize("bits", [8, 20, 32, 62])
def test_pack_rejects_values_at_or_above_the_modulus(bits: int) -> None:
    ring = Ring(bits)
    with pytest.raises(UsageError):
        ring.pack(np.array([0, ring.modulus], dtype=np.uint64))


def test_pack_rejects_negative_values_and_non_integer_arrays() -> None:
    ring = Ring(20)
    with pytest.raises(UsageError):
        ring.pack(np.array([1, -1], dtype=np.int64))
    with pytest.raises(UsageError):
        ring.pack(np.array([1.0]))
    with pytest.raises(UsageError):
        ring.pack(np.zeros((2, 2), dtype=np.uint32))


@pytest.mark.parametrize("bits", [8, 20])
def test_unpack_rejects_wrong_length(bits: int) -> None:
    ring = Ring(bits)
    packed = ring.pack(np.arange(10, dtype=ring.dtype))
    with pytest.raises(DecodeError):
        ring.unpack(packed[:-1], 10)
    with pytest.raises(DecodeError):
        ring.unpack(packed + b"\x00", 10)
    with pytest.raises(DecodeError):
        ring.unpack(b"", 1)


def test_unpack_rejects_nonzero_padding_bits() -> None:
    ring = Ring(20)  # 3 values = 60 bits: the last byte has 4 padding bits
    packed = bytearray(ring.pack(np.array([1, 2, 3], dtype=np.uint32)))
    for bit in range(4, 8):
        tampered = bytearray(packed)
        tampered[-1] |= 1 << bit
        with pytest.raises(DecodeError):
            ring.unpack(bytes(tampered), 3)
    tampered = bytearray(packed)
    tampered[-1] |= 1 << 3  # a value bit, not padding
    assert ring.unpack(bytes(tampered), 3)[2] == 3 + (1 << 19)


def test_unpack_of_zero_values() -> None:
    assert Ring(20).unpack(b"", 0).shape == (0,)
    assert Ring(20).pack(np.zeros(0, dtype=np.uint32)) == b""


def test_unpack_rejects_negative_count() -> None:
    with pytest.raises(UsageError):
        Ring(20).unpack(b"", -1)


def test_unpacked_array_is_writeable() -> None:
    for bits in (16, 20):
        out = Ring(bits).unpack(bytes(Ring(bits).packed_size(4)), 4)
        out += 1  # would raise on a read-only view of the input bytes


@pytest.mark.parametrize("n", [2, 1_000, 100_000])
def test_pack_and_unpack_are_vectorised(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    # Counted rather than timed: 20-bit values come in groups of 2 (5 bytes), so pack ORs each
    # of the 2 positions in 2 passes of non-overlapping 8-byte windows and unpack reads each
    # position once: 4 and 2 whole-array operations whatever the length, where a loop over
    # the values would make n of them.
    windows = 0
    original = ring_module._window

    def counted(*args: Any) -> Any:
        nonlocal windows
        windows += 1
        return original(*args)

    monkeypatch.setattr(ring_module, "_window", counted)
    ring = Ring(20)
    values = np.random.default_rng(0).integers(0, ring.modulus, n).astype(np.uint32)
    packed = ring.pack(values)
    assert windows == 4
    np.testing.assert_array_equal(ring.unpack(packed, n), values)
    assert windows == 4 + 2

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from secagg.errors import UsageError
from secagg.hazmat.prg import CHUNK_BYTES, MASK_KEY_BYTES, add_mask, expand_into

from ._vectors import load_vectors

KEY = bytes(range(16))
Words = NDArray[np.unsignedinteger[Any]]
WordType = type[np.unsignedinteger[Any]]
WIDTHS: dict[WordType, str] = {np.uint32: "<u4", np.uint64: "<u8"}


def ecb_keystream(key: bytes, first_block: int, blocks: int) -> bytes:
    """AES_K(counter) for successive 128-bit big-endian counters: CTR mode from first principles."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join(((first_block + i) % 2**128).to_bytes(16, "big") for i in range(blocks))
    return encryptor.update(counters)


def words_of(stream: bytes, dtype: WordType) -> Words:
    return np.frombuffer(stream, dtype=WIDTHS[dtype]).astype(dtype)


def test_mask_key_is_16_bytes() -> None:
    assert MASK_KEY_BYTES == 16


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_expand_matches_nist_sp800_38a_f51_ctr_keystream(dtype: WordType) -> None:
    vector = load_vectors("sp800_38a_ctr.json")
    key = bytes.fromhex(vector["key"])
    counter = int(vector["initial_counter"], 16)
    expected = bytes.fromhex("".join(vector["output_blocks"]))
    out: Words = np.empty(len(expected) // np.dtype(dtype).itemsize, dtype=dtype)
    # Word start*width lands on counter block `counter`; the vector's counter then carries
    # from byte 15 into byte 14 (..feff -> ..ff00).
    expand_into(key, out, start=counter * 16 // np.dtype(dtype).itemsize)
    assert out.astype(WIDTHS[dtype]).tobytes() == expected


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("first_block", [0, 5, 2**64 - 2, 2**128 - 2])
def test_expand_is_aes_of_a_128_bit_big_endian_counter_from_zero(
    dtype: WordType, first_block: int
) -> None:
    width = np.dtype(dtype).itemsize
    out: Words = np.empty(4 * 16 // width, dtype=dtype)
    expand_into(KEY, out, start=first_block * 16 // width)
    np.testing.assert_array_equal(out, words_of(ecb_keystream(KEY, first_block, 4), dtype))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_expand_matches_a_plain_ctr_encryption_of_zeros(dtype: WordType) -> None:
    n = 3 * CHUNK_BYTES // 4 + 3  # crosses chunk boundaries, ends mid-chunk
    out: Words = np.empty(n, dtype=dtype)
    expand_into(KEY, out)
    width = np.dtype(dtype).itemsize
    stream = Cipher(algorithms.AES(KEY), modes.CTR(bytes(16))).encryptor().update(bytes(n * width))
    np.testing.assert_array_equal(out, words_of(stream, dtype))


@given(
    dtype=st.sampled_from([np.uint32, np.uint64]),
    start=st.integers(0, 3000),
    length=st.integers(0, 2000),
)
@settings(max_examples=200, deadline=None)
def test_expand_is_seekable(dtype: WordType, start: int, length: int) -> None:
    full: Words = np.empty(start + length, dtype=dtype)
    expand_into(KEY, full)
    part: Words = np.empty(length, dtype=dtype)
    expand_into(KEY, part, start=start)
    np.testing.assert_array_equal(part, full[start:])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_mask_adds_the_keystream_with_wraparound(dtype: WordType) -> None:
    n = 70_001
    acc: Words = np.full(n, np.iinfo(dtype).max, dtype=dtype)
    mask: Words = np.empty(n, dtype=dtype)
    expand_into(KEY, mask, start=11)
    add_mask(acc, KEY, start=11)
    expected = [
        (int(m) + 2 ** (8 * acc.itemsize) - 1) % 2 ** (8 * acc.itemsize) for m in mask[:500]
    ]
    assert acc[:500].tolist() == expected
    np.testing.assert_array_equal(acc, mask - dtype(1))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_then_subtract_restores_the_accumulator(dtype: WordType) -> None:
    original = np.arange(100_003, dtype=dtype) * dtype(2654435761)
    acc = original.copy()
    add_mask(acc, KEY, start=7)
    assert not np.array_equal(acc, original)
    add_mask(acc, KEY, start=7, subtract=True)
    np.testing.assert_array_equal(acc, original)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_subtracting_the_mask_of_the_peer_cancels_pairwise_masks(dtype: WordType) -> None:
    a: Words = np.zeros(1000, dtype=dtype)
    b: Words = np.zeros(1000, dtype=dtype)
    add_mask(a, KEY)
    add_mask(b, KEY, subtract=True)
    np.testing.assert_array_equal(a + b, np.zeros(1000, dtype=dtype))


@given(
    dtype=st.sampled_from([np.uint32, np.uint64]),
    cuts=st.lists(st.integers(0, 5000), max_size=4),
    scratch_len=st.integers(1, 700),
)
@settings(max_examples=100, deadline=None)
def test_add_mask_by_slices_with_any_scratch_equals_whole(
    dtype: WordType, cuts: list[int], scratch_len: int
) -> None:
    n = 5000
    whole: Words = np.zeros(n, dtype=dtype)
    add_mask(whole, KEY)
    pieces: Words = np.zeros(n, dtype=dtype)
    scratch: Words = np.empty(scratch_len, dtype=dtype)
    bounds = [0, *sorted(cuts), n]
    for lo, hi in itertools.pairwise(bounds):
        add_mask(pieces[lo:hi], KEY, start=lo, scratch=scratch)
    np.testing.assert_array_equal(pieces, whole)


def test_different_keys_give_different_masks() -> None:
    a: Words = np.empty(64, dtype=np.uint32)
    b: Words = np.empty(64, dtype=np.uint32)
    expand_into(KEY, a)
    expand_into(os.urandom(16), b)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("key", [b"", bytes(15), bytes(17), bytes(32)])
def test_keys_that_are_not_16_bytes_are_rejected(key: bytes) -> None:
    with pytest.raises(UsageError):
        expand_into(key, np.empty(4, dtype=np.uint32))
    with pytest.raises(UsageError):
        add_mask(np.zeros(4, dtype=np.uint32), key)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint8, np.float64])
def test_arrays_of_other_dtypes_are_rejected(dtype: WordType) -> None:
    with pytest.raises(UsageError):
        expand_into(KEY, np.zeros(4, dtype=dtype))
    with pytest.raises(UsageError):
        add_mask(np.zeros(4, dtype=dtype), KEY)


def test_bad_layouts_and_arguments_are_rejected() -> None:
    with pytest.raises(UsageError):
        expand_into(KEY, np.zeros(8, dtype=np.uint32)[::2])
    with pytest.raises(UsageError):
        expand_into(KEY, np.zeros((2, 2), dtype=np.uint32))
    with pytest.raises(UsageError):
        expand_into(KEY, np.zeros(4, dtype=np.uint32), start=-1)
    with pytest.raises(UsageError):
        add_mask(np.zeros(4, dtype=np.uint32), KEY, scratch=np.empty(4, dtype=np.uint64))
    with pytest.raises(UsageError):
        add_mask(np.zeros(4, dtype=np.uint32), KEY, scratch=np.empty(0, dtype=np.uint32))
    read_only = np.zeros(4, dtype=np.uint32)
    read_only.flags.writeable = False
    with pytest.raises(UsageError):
        add_mask(read_only, KEY)
    with pytest.raises(UsageError):
        expand_into(KEY, read_only)


def test_add_mask_works_on_strided_accumulators() -> None:
    base = np.zeros(200, dtype=np.uint32)
    add_mask(base[::2], KEY)
    expected = np.empty(100, dtype=np.uint32)
    expand_into(KEY, expected)
    np.testing.assert_array_equal(base[::2], expected)
    assert not base[1::2].any()

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from secagg.errors import UsageError
from secagg.hazmat.keystream import BLOCK_BYTES, CHUNK_BYTES, KEY_SIZES, Keystream

from ._vectors import load_vectors

KEY_128 = bytes(range(16))
KEY_256 = bytes(range(32))
PERIOD = BLOCK_BYTES << 128
# NIST SP 800-38A, Appendix F.5.5 (CTR-AES256.Encrypt): key, initial counter block and the
# four output (keystream) blocks.
SP800_38A_F55 = {
    "key": "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
    "initial_counter": "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "output_blocks": [
        "0bdf7df1591716335e9a8b15c860c502",
        "5a6e699d536119065433863c8f657b94",
        "1bc12c9c01610d5d0d8bd6a3378eca62",
        "2956e1c8693536b1bee99c73a31576b6",
    ],
}


def ecb_keystream(key: bytes, first_block: int, blocks: int) -> bytes:
    """AES_K(counter) for successive 128-bit big-endian counters: CTR mode from first principles."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join(((first_block + i) % 2**128).to_bytes(16, "big") for i in range(blocks))
    return encryptor.update(counters)


def plain_ctr(key: bytes, n: int) -> bytes:
    """The first n bytes of the stream, from a CTR encryption of zeros in one call."""
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n))


# --- The definition --------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [load_vectors("sp800_38a_ctr.json"), SP800_38A_F55],
    ids=["F.5.1-aes128", "F.5.5-aes256"],
)
def test_stream_matches_nist_sp800_38a_ctr_from_its_initial_counter_block(
    vector: dict[str, Any],
) -> None:
    stream = Keystream(
        bytes.fromhex(vector["key"]), int(vector["initial_counter"], 16) * BLOCK_BYTES
    )
    # The counter carries from byte 15 into byte 14 (..feff -> ..ff00): a 128-bit counter.
    assert stream.read(64) == bytes.fromhex("".join(vector["output_blocks"]))


@pytest.mark.parametrize("key", [KEY_128, KEY_256], ids=["aes128", "aes256"])
@pytest.mark.parametrize("first_block", [0, 5, 2**64 - 1, 2**128 - 2])
def test_stream_is_aes_of_a_128_bit_big_endian_counter_that_starts_at_zero(
    key: bytes, first_block: int
) -> None:
    stream = Keystream(key, first_block * BLOCK_BYTES)
    assert stream.read(4 * BLOCK_BYTES) == ecb_keystream(key, first_block, 4)
    assert Keystream(key).read(BLOCK_BYTES) == ecb_keystream(key, 0, 1)


def test_the_counter_wraps_to_block_zero_and_the_offset_with_it() -> None:
    stream = Keystream(KEY_128, PERIOD - 3)
    tail = stream.read(3 + 5)
    assert tail == ecb_keystream(KEY_128, 2**128 - 1, 1)[-3:] + ecb_keystream(KEY_128, 0, 1)[:5]
    assert stream.offset == 5
    assert stream.read(11) == Keystream(KEY_128, 5).read(11)


def test_words_are_the_stream_read_as_little_endian_uint32s_on_any_host() -> None:
    words = Keystream(KEY_256).words(1000)
    assert words.dtype == np.uint32
    assert words.tolist() == np.frombuffer(plain_ctr(KEY_256, 4000), dtype="<u4").tolist()


def test_words_into_reads_words_at_the_arrays_width() -> None:
    wide: NDArray[np.uint64] = np.empty(500, dtype=np.uint64)
    Keystream(KEY_128).words_into(wide)
    expected = np.frombuffer(plain_ctr(KEY_128, 4000), dtype="<u8")
    assert wide.tolist() == expected.tolist()
    narrow: NDArray[np.uint32] = np.empty(1000, dtype=np.uint32)
    Keystream(KEY_128).words_into(narrow)
    np.testing.assert_array_equal(narrow, Keystream(KEY_128).words(1000))


@pytest.mark.parametrize("key", [KEY_128, KEY_256], ids=["aes128", "aes256"])
def test_reads_longer_than_a_chunk_equal_one_plain_ctr_encryption(key: bytes) -> None:
    n = 2 * CHUNK_BYTES + 12_345  # several internal chunks, ending mid-chunk and mid-block
    expected = plain_ctr(key, 3 * n)
    stream = Keystream(key)
    assert stream.read(n) == expected[:n]
    assert stream.words(n // 4).astype("<u4").tobytes() == expected[n : n + 4 * (n // 4)]
    buffer = bytearray(n)
    stream.seek(2 * n)
    stream.fill(buffer)
    assert bytes(buffer) == expected[2 * n :]


# --- One stream, read in any pieces, from any position --------------------------------

piece = st.tuples(
    st.sampled_from(["read", "words", "fill", "words_into", "add"]), st.integers(0, 99)
)


@given(start=st.integers(0, 5000), pieces=st.lists(piece, max_size=8))
@settings(max_examples=150, deadline=None)
def test_reads_of_every_kind_continue_one_stream_from_any_byte_offset(
    start: int, pieces: list[tuple[str, int]]
) -> None:
    total = sum(n if kind in ("read", "fill") else 4 * n for kind, n in pieces)
    expected = plain_ctr(KEY_128, start + total)[start:]
    stream = Keystream(KEY_128, start)
    got = b""
    for kind, n in pieces:
        if kind == "read":
            got += stream.read(n)
        elif kind == "fill":
            buffer = bytearray(n)
            stream.fill(buffer)
            got += bytes(buffer)
        elif kind == "words":
            got += stream.words(n).astype("<u4").tobytes()
        elif kind == "words_into":
            out: NDArray[np.uint32] = np.empty(n, dtype=np.uint32)
            stream.words_into(out)
            got += out.astype("<u4").tobytes()
        else:  # adding into zeros leaves the words themselves
            acc: NDArray[np.uint32] = np.zeros(n, dtype=np.uint32)
            stream.add_into(acc)
            got += acc.astype("<u4").tobytes()
        assert stream.offset == (start + len(got)) % PERIOD
    assert got == expected


@given(first=st.integers(0, 3000), second=st.integers(0, 3000))
@settings(max_examples=100, deadline=None)
def test_seeking_back_and_forth_repeats_the_stream_exactly(first: int, second: int) -> None:
    stream = Keystream(KEY_256)
    whole = stream.read(4000)
    stream.seek(first)
    assert stream.offset == first
    assert stream.read(1000) == whole[first : first + 1000]
    stream.seek(second)
    assert stream.read(1000) == whole[second : second + 1000]


def test_fill_writes_into_bytearrays_memoryviews_and_arrays_in_place() -> None:
    expected = plain_ctr(KEY_128, 3 * 64)
    stream = Keystream(KEY_128)
    raw = bytearray(64)
    stream.fill(raw)
    backing = bytearray(80)
    stream.fill(memoryview(backing)[8:72])
    table: NDArray[np.uint16] = np.zeros((4, 8), dtype=np.uint16)  # 64 bytes, 2-D
    stream.fill(table)
    assert bytes(raw) == expected[:64]
    assert backing[:8] == bytes(8) and backing[72:] == bytes(8)
    assert bytes(backing[8:72]) == expected[64:128]
    assert table.tobytes() == expected[128:]
    stream.fill(bytearray())
    assert stream.offset == 3 * 64


# --- Adding words into an accumulator ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_into_adds_or_subtracts_the_next_words_with_wraparound(
    dtype: type[np.unsignedinteger[Any]],
) -> None:
    n = 70_001  # more than one chunk at either width
    words: NDArray[Any] = np.empty(n, dtype=dtype)
    Keystream(KEY_128, 24).words_into(words)
    top = np.iinfo(dtype).max
    acc: NDArray[Any] = np.full(n, top, dtype=dtype)
    stream = Keystream(KEY_128, 24)
    stream.add_into(acc)
    assert stream.offset == 24 + n * acc.itemsize
    modulus = 2 ** (8 * acc.itemsize)
    assert acc[:300].tolist() == [(int(w) + top) % modulus for w in words[:300]]
    np.testing.assert_array_equal(acc, words - dtype(1))
    Keystream(KEY_128, 24).add_into(acc, subtract=True)
    np.testing.assert_array_equal(acc, np.full(n, top, dtype=dtype))


@given(scratch_len=st.integers(1, 700), stride=st.integers(1, 3))
@settings(max_examples=50, deadline=None)
def test_add_into_gives_the_same_sum_with_any_scratch_and_strided_accumulators(
    scratch_len: int, stride: int
) -> None:
    base: NDArray[np.uint32] = np.zeros(3000 * stride, dtype=np.uint32)
    scratch: NDArray[np.uint32] = np.empty(scratch_len, dtype=np.uint32)
    Keystream(KEY_256).add_into(base[::stride], scratch=scratch)
    np.testing.assert_array_equal(base[::stride], Keystream(KEY_256).words(3000))
    if stride > 1:
        assert not base[1::stride].any()


# --- Refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", bytes(15), bytes(24), bytes(31), bytes(33), "k" * 16])
def test_keys_other_than_16_or_32_bytes_are_refused(key: Any) -> None:
    assert KEY_SIZES == (16, 32)
    with pytest.raises(UsageError):
        Keystream(key)


def test_a_malformed_key_is_never_shown_in_the_error() -> None:
    key = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3")
    with pytest.raises(UsageError) as error:
        Keystream(key)
    assert key.hex()[:8] not in str(error.value)
    assert "19 bytes" in str(error.value)


def test_repr_shows_the_cipher_and_offset_but_never_the_key() -> None:
    key = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
    stream = Keystream(key, 48)
    text = repr(stream) + str(stream)
    assert "AES-128" in text and "offset=48" in text and "redacted" in text
    assert all(key.hex()[i : i + 8] not in text for i in range(0, 25, 2))


@pytest.mark.parametrize("offset", [-1, True, 1.0, "0", PERIOD])
def test_offsets_outside_the_stream_are_refused(offset: Any) -> None:
    with pytest.raises(UsageError):
        Keystream(KEY_128, offset)
    with pytest.raises(UsageError):
        Keystream(KEY_128).seek(offset)


@pytest.mark.parametrize("count", [-1, True, 2.0])
def test_counts_that_are_not_natural_numbers_are_refused(count: Any) -> None:
    with pytest.raises(UsageError):
        Keystream(KEY_128).read(count)
    with pytest.raises(UsageError):
        Keystream(KEY_128).words(count)


def read_only_array() -> NDArray[np.uint32]:
    array: NDArray[np.uint32] = np.zeros(4, dtype=np.uint32)
    array.flags.writeable = False
    return array


@pytest.mark.parametrize(
    "out",
    [
        bytes(8),  # immutable
        memoryview(bytes(8)),
        [0] * 8,
        np.zeros(8, dtype=np.uint32)[::2],  # not contiguous
        np.zeros(4, dtype=object),  # would overwrite pointers
        read_only_array(),
    ],
    ids=["bytes", "read-only-view", "list", "strided", "objects", "read-only-array"],
)
def test_fill_refuses_buffers_it_cannot_write_in_place(out: Any) -> None:
    stream = Keystream(KEY_128)
    with pytest.raises(UsageError):
        stream.fill(out)
    assert stream.offset == 0


@pytest.mark.parametrize(
    "out",
    [
        np.zeros(4, dtype=np.int32),
        np.zeros(4, dtype=np.uint16),
        np.zeros(4, dtype=np.float64),
        np.zeros((2, 2), dtype=np.uint32),
        np.zeros(8, dtype=np.uint32)[::2],
        read_only_array(),
        bytearray(16),
    ],
    ids=["int32", "uint16", "float64", "2-D", "strided", "read-only", "bytearray"],
)
def test_words_into_takes_only_writable_contiguous_uint32_or_uint64_vectors(out: Any) -> None:
    with pytest.raises(UsageError):
        Keystream(KEY_128).words_into(out)


def test_add_into_refuses_bad_accumulators_and_scratch_buffers() -> None:
    stream = Keystream(KEY_128)
    acc: NDArray[np.uint32] = np.zeros(4, dtype=np.uint32)
    with pytest.raises(UsageError):
        stream.add_into(read_only_array())
    with pytest.raises(UsageError):
        stream.add_into(np.zeros(4, dtype=np.int64))
    for scratch in (
        np.empty(4, dtype=np.uint64),  # another width
        np.empty(0, dtype=np.uint32),
        np.empty(8, dtype=np.uint32)[::2],
        read_only_array(),
    ):
        with pytest.raises(UsageError):
            stream.add_into(acc, scratch=scratch)
    assert not acc.any()
    assert stream.offset == 0

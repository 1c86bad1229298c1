from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import DeterministicRandomness, Randomness, SystemRandomness

SEED = bytes(range(32))


def reference_stream(seed: bytes, n: int) -> bytes:
    """The specified DRBG output, computed straight from the primitives."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"secagg/v1/drbg").derive(seed)
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n))


def test_deterministic_stream_is_aes256_ctr_under_hkdf_of_seed() -> None:
    rng = DeterministicRandomness(SEED)
    out = rng.bytes(10) + rng.words(5).astype("<u4").tobytes() + rng.bytes(70)
    assert out == reference_stream(SEED, 100)


def test_words_and_bytes_consume_one_stream_across_chunk_boundaries() -> None:
    n = 100_000  # 400 kB: several internal chunks
    words = DeterministicRandomness(SEED).words(n)
    assert words.dtype == np.uint32
    assert words.astype("<u4").tobytes() == DeterministicRandomness(SEED).bytes(4 * n)


def test_same_seed_gives_same_stream_and_different_seeds_differ() -> None:
    assert DeterministicRandomness(SEED).bytes(64) == DeterministicRandomness(SEED).bytes(64)
    assert DeterministicRandomness(SEED).bytes(64) != DeterministicRandomness(SEED[::-1]).bytes(64)


def test_fork_does_not_depend_on_parent_consumption_or_order() -> None:
    a = DeterministicRandomness(SEED)
    b = DeterministicRandomness(SEED)
    b.bytes(1000)
    b_child2 = b.fork("client-2").bytes(32)
    b_child1 = b.fork("client-1").bytes(32)
    assert a.fork("client-1").bytes(32) == b_child1
    assert a.fork("client-2").bytes(32) == b_child2


def test_forks_with_distinct_labels_are_distinct_and_differ_from_parent() -> None:
    rng = DeterministicRandomness(SEED)
    streams = {rng.fork(f"client-{i}").bytes(32) for i in range(100)}
    assert len(streams) == 100
    assert DeterministicRandomness(SEED).bytes(32) not in streams
    assert rng.fork("a").fork("b").bytes(32) != rng.fork("b").fork("a").bytes(32)


def test_fork_accepts_str_labels_as_utf8() -> None:
    rng = DeterministicRandomness(SEED)
    assert rng.fork("ü").bytes(16) == rng.fork("ü".encode()).bytes(16)


def test_seed_shorter_than_16_bytes_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        DeterministicRandomness(bytes(15))
    DeterministicRandomness(bytes(16))


def test_repr_never_shows_the_seed() -> None:
    seed = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
    text = repr(DeterministicRandomness(seed)) + str(DeterministicRandomness(seed))
    assert seed.hex() not in text
    assert seed.hex()[:8] not in text
    assert "redacted" in text


@pytest.mark.parametrize("rng", [SystemRandomness(), DeterministicRandomness(SEED)])
def test_outputs_have_requested_sizes(rng: Randomness) -> None:
    assert rng.bytes(0) == b""
    assert len(rng.bytes(33)) == 33
    words = rng.words(1000)
    assert words.dtype == np.uint32
    assert words.shape == (1000,)
    assert rng.words(0).shape == (0,)


@pytest.mark.parametrize("rng", [SystemRandomness(), DeterministicRandomness(SEED)])
def test_negative_counts_are_rejected(rng: Randomness) -> None:
    with pytest.raises(UsageError):
        rng.bytes(-1)
    with pytest.raises(UsageError):
        rng.words(-1)


def test_system_randomness_never_repeats() -> None:
    rng = SystemRandomness()
    assert rng.bytes(32) != rng.bytes(32)
    assert not np.array_equal(rng.words(64), rng.words(64))


@pytest.mark.parametrize("rng", [SystemRandomness(), DeterministicRandomness(SEED)])
def test_words_look_uniform(rng: Randomness) -> None:
    n = 1 << 16
    words = rng.words(n)
    # Every bit position is set about half the time (6 sigma = 0.012 at this n).
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.012)

from __future__ import annotations

from typing import Any

import pytest

from secagg.errors import AuthenticationError, UsageError
from secagg.hazmat.aead import NONCE_BYTES, OVERHEAD, TAG_BYTES, open_sealed, seal
from secagg.hazmat.randomness import DeterministicRandomness

from ._vectors import FixedRandomness, load_vectors

KEY = bytes(range(32))
AD = b"session|from=1|to=2|round=share-keys"


def rng() -> DeterministicRandomness:
    return DeterministicRandomness(b"aead test randomness")


def test_sizes() -> None:
    assert (NONCE_BYTES, TAG_BYTES, OVERHEAD) == (12, 16, 28)


@pytest.mark.parametrize(
    "vector", load_vectors("gcm_aes256.json")["vectors"], ids=lambda v: v["name"]
)
def test_seal_matches_gcm_spec_vectors(vector: dict[str, Any]) -> None:
    key, iv = bytes.fromhex(vector["key"]), bytes.fromhex(vector["iv"])
    plaintext, aad = bytes.fromhex(vector["plaintext"]), bytes.fromhex(vector["aad"])
    sealed = seal(key, plaintext, aad, FixedRandomness(iv))
    assert sealed == iv + bytes.fromhex(vector["ciphertext"]) + bytes.fromhex(vector["tag"])
    assert open_sealed(key, sealed, aad) == plaintext


@pytest.mark.parametrize("size", [0, 1, 33, 1000])
def test_open_inverts_seal(size: int) -> None:
    plaintext = bytes(range(256)) * 4
    plaintext = plaintext[:size]
    sealed = seal(KEY, plaintext, AD, rng())
    assert len(sealed) == size + OVERHEAD
    assert open_sealed(KEY, sealed, AD) == plaintext


def test_nonce_is_drawn_from_the_given_randomness() -> None:
    sealed = seal(KEY, b"share", AD, rng())
    assert sealed[:NONCE_BYTES] == rng().bytes(NONCE_BYTES)
    source = rng()
    assert seal(KEY, b"share", AD, source)[:NONCE_BYTES] != seal(KEY, b"share", AD, source)[:12]


def test_every_tampered_byte_is_detected() -> None:
    sealed = seal(KEY, b"a 33-byte share value, say.......", AD, rng())
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(AuthenticationError):
            open_sealed(KEY, bytes(tampered), AD)


def test_wrong_associated_data_or_key_is_detected() -> None:
    sealed = seal(KEY, b"share", AD, rng())
    with pytest.raises(AuthenticationError):
        open_sealed(KEY, sealed, AD + b"x")
    with pytest.raises(AuthenticationError):
        open_sealed(KEY, sealed, b"")
    with pytest.raises(AuthenticationError):
        open_sealed(bytes(32), sealed, AD)


@pytest.mark.parametrize("length", [0, 1, NONCE_BYTES, OVERHEAD - 1])
def test_too_short_sealed_messages_are_rejected(length: int) -> None:
    with pytest.raises(AuthenticationError):
        open_sealed(KEY, bytes(length), AD)


def test_truncated_and_extended_messages_are_rejected() -> None:
    sealed = seal(KEY, b"share", AD, rng())
    with pytest.raises(AuthenticationError):
        open_sealed(KEY, sealed[:-1], AD)
    with pytest.raises(AuthenticationError):
        open_sealed(KEY, sealed + b"\x00", AD)


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33)])
def test_keys_that_are_not_32_bytes_are_a_usage_error(key: bytes) -> None:
    with pytest.raises(UsageError):
        seal(key, b"x", AD, rng())
    with pytest.raises(UsageError):
        open_sealed(key, bytes(OVERHEAD), AD)


def test_failures_reveal_neither_key_nor_plaintext() -> None:
    plaintext = b"SECRET-PLAINTEXT"
    sealed = seal(KEY, plaintext, AD, rng())
    with pytest.raises(AuthenticationError) as info:
        open_sealed(KEY, sealed[:-1] + bytes([sealed[-1] ^ 1]), AD)
    text = str(info.value) + repr(info.value)
    assert KEY.hex()[:16] not in text
    assert "SECRET" not in text
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__

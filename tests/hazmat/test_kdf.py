"""Key derivation: HKDF-SHA256 (RFC 5869), the injective field encoding, purpose-bound keys."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import UsageError
from secagg.hazmat.kdf import derive_key, encode_fields, hkdf

from ._vectors import load_vectors

RFC5869 = load_vectors("rfc5869.json")["vectors"]

fields = st.lists(
    st.one_of(st.binary(max_size=12), st.text(max_size=6), st.integers(0, 2**64 - 1)),
    max_size=5,
)


# --- HKDF ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", RFC5869, ids=lambda v: v["name"][:3])
def test_hkdf_matches_rfc5869(vector: dict[str, Any]) -> None:
    okm = hkdf(
        bytes.fromhex(vector["ikm"]),
        info=bytes.fromhex(vector["info"]),
        length=vector["length"],
        salt=bytes.fromhex(vector["salt"]),
    )
    assert okm == bytes.fromhex(vector["okm"])


def test_hkdf_without_salt_uses_the_zero_salt_of_rfc5869() -> None:
    vector = RFC5869[2]  # A.3: salt not provided
    okm = hkdf(bytes.fromhex(vector["ikm"]), info=b"", length=vector["length"])
    assert okm == bytes.fromhex(vector["okm"])


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_rejects_impossible_lengths(length: int) -> None:
    with pytest.raises(UsageError):
        hkdf(b"k", info=b"", length=length)


def test_hkdf_default_length_is_32() -> None:
    assert len(hkdf(b"k", info=b"")) == 32


# --- encode_fields and derive_key ----------------------------------------------------


def test_encode_fields_layout_is_tag_length_payload() -> None:
    assert encode_fields(b"\x01\x02", 258, "é") == (
        b"B"
        + (2).to_bytes(8, "big")
        + b"\x01\x02"
        + b"I"
        + (8).to_bytes(8, "big")
        + (258).to_bytes(8, "big")
        + b"S"
        + (2).to_bytes(8, "big")
        + "é".encode()
    )
    assert encode_fields() == b""


def test_encode_fields_distinguishes_types_and_boundaries() -> None:
    encodings = {
        encode_fields(b"1"),
        encode_fields("1"),
        encode_fields(1),
        encode_fields("ab", "c"),
        encode_fields("a", "bc"),
        encode_fields("abc"),
        encode_fields("abc", ""),
        encode_fields("", "abc"),
    }
    assert len(encodings) == 8


@given(fields, fields)
def test_encode_fields_is_injective(a: list[bytes | int | str], b: list[bytes | int | str]) -> None:
    typed_a = [(type(x), x) for x in a]
    typed_b = [(type(x), x) for x in b]
    assert (encode_fields(*a) == encode_fields(*b)) == (typed_a == typed_b)


@pytest.mark.parametrize("value", [-1, 2**64, True, 1.0, None, ["x"]])
def test_encode_fields_rejects_values_it_cannot_encode_canonically(value: Any) -> None:
    with pytest.raises(UsageError):
        encode_fields(value)


def test_derive_key_is_hkdf_with_purpose_and_context_as_info() -> None:
    secret = bytes(range(32))
    expected = hkdf(secret, info=encode_fields("secagg/v1/mask", b"sid", 3, 4))
    assert derive_key(secret, "mask", b"sid", 3, 4) == expected
    assert len(derive_key(secret, "mask", length=16)) == 16


def test_derive_key_separates_purposes_and_contexts() -> None:
    secret = bytes(32)
    keys = {
        derive_key(secret, "mask", b"sid", 1, 2),
        derive_key(secret, "mask", b"sid", 2, 1),
        derive_key(secret, "aead", b"sid", 1, 2),
        derive_key(secret, "mask", b"other", 1, 2),
        derive_key(secret, "mask", b"sid", 1),
    }
    assert len(keys) == 5

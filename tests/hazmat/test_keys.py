from __future__ import annotations

import pytest

from secagg.errors import AuthenticationError, CryptoError, DecodeError
from secagg.hazmat.keys import (
    Ed25519SigningKey,
    X25519KeyPair,
    ed25519_verify,
    x25519_public_from_private,
)
from secagg.hazmat.randomness import DeterministicRandomness

from ._vectors import load_vectors

RFC7748 = load_vectors("rfc7748.json")
RFC8032 = load_vectors("rfc8032.json")["vectors"]

# Points of small order on Curve25519 (u = 0, u = 1, and a point of order 8): the X25519
# result with them is all zeros.
SMALL_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def rng() -> DeterministicRandomness:
    return DeterministicRandomness(b"keys test randomness")


# --- X25519 --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", RFC7748["scalar_mult"])
def test_x25519_matches_rfc7748_section_5_2(vector: dict[str, str]) -> None:
    pair = X25519KeyPair.from_private_bytes(bytes.fromhex(vector["scalar"]))
    assert pair.exchange(bytes.fromhex(vector["u"])) == bytes.fromhex(vector["output"])


def test_x25519_matches_rfc7748_section_6_1_diffie_hellman() -> None:
    dh = {k: bytes.fromhex(v) for k, v in RFC7748["diffie_hellman"].items()}
    alice = X25519KeyPair.from_private_bytes(dh["alice_private"])
    bob = X25519KeyPair.from_private_bytes(dh["bob_private"])
    assert alice.public == dh["alice_public"]
    assert bob.public == dh["bob_public"]
    assert x25519_public_from_private(dh["alice_private"]) == dh["alice_public"]
    assert alice.exchange(bob.public) == dh["shared"]
    assert bob.exchange(alice.public) == dh["shared"]


def test_x25519_generate_takes_the_private_key_from_the_randomness() -> None:
    pair = X25519KeyPair.generate(rng())
    assert pair.private_bytes() == rng().bytes(32)
    assert X25519KeyPair.generate(rng()).public == pair.public
    assert X25519KeyPair.from_private_bytes(pair.private_bytes()).public == pair.public
    assert len(pair.public) == 32


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_x25519_exchange_rejects_peer_keys_of_wrong_length(length: int) -> None:
    with pytest.raises(CryptoError):
        X25519KeyPair.generate(rng()).exchange(bytes(length))


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS)
def test_x25519_exchange_rejects_small_order_points(point: bytes) -> None:
    with pytest.raises(CryptoError):
        X25519KeyPair.generate(rng()).exchange(point)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_x25519_private_keys_must_be_32_bytes(length: int) -> None:
    with pytest.raises(DecodeError):
        X25519KeyPair.from_private_bytes(bytes(length))
    with pytest.raises(DecodeError):
        x25519_public_from_private(bytes(length))


def test_x25519_repr_shows_a_public_fingerprint_and_no_private_bytes() -> None:
    pair = X25519KeyPair.generate(rng())
    text = repr(pair) + str(pair)
    assert pair.public.hex()[:12] in text
    private = pair.private_bytes().hex()
    assert all(private[i : i + 8] not in text for i in range(0, 57, 2))


def test_x25519_key_pair_is_frozen() -> None:
    pair = X25519KeyPair.generate(rng())
    with pytest.raises(AttributeError):
        pair.public = bytes(32)  # type: ignore[misc]


# --- Ed25519 -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", RFC8032, ids=lambda v: v["name"])
def test_ed25519_matches_rfc8032_section_7_1(vector: dict[str, str]) -> None:
    key = Ed25519SigningKey.from_private_bytes(bytes.fromhex(vector["secret_key"]))
    message = bytes.fromhex(vector["message"])
    signature = bytes.fromhex(vector["signature"])
    assert key.public == bytes.fromhex(vector["public_key"])
    assert key.sign(message) == signature
    ed25519_verify(key.public, message, signature)


def test_ed25519_generate_is_reproducible_from_the_randomness() -> None:
    key = Ed25519SigningKey.generate(rng())
    assert key.public == Ed25519SigningKey.from_private_bytes(rng().bytes(32)).public
    signature = key.sign(b"transcript")
    assert len(signature) == 64
    ed25519_verify(key.public, b"transcript", signature)


def test_ed25519_verify_rejects_tampering() -> None:
    key = Ed25519SigningKey.generate(rng())
    signature = key.sign(b"transcript")
    with pytest.raises(AuthenticationError):
        ed25519_verify(key.public, b"transcripT", signature)
    with pytest.raises(AuthenticationError):
        ed25519_verify(key.public, b"transcript", bytes([signature[0] ^ 1]) + signature[1:])
    other = Ed25519SigningKey.from_private_bytes(bytes(32))
    with pytest.raises(AuthenticationError):
        ed25519_verify(other.public, b"transcript", signature)


@pytest.mark.parametrize(
    ("public_length", "signature_length"), [(31, 64), (33, 64), (32, 63), (32, 65), (0, 0)]
)
def test_ed25519_verify_rejects_wrong_lengths(public_length: int, signature_length: int) -> None:
    with pytest.raises(AuthenticationError):
        ed25519_verify(bytes(public_length), b"m", bytes(signature_length))


def test_ed25519_verify_rejects_a_public_key_that_is_not_a_point() -> None:
    with pytest.raises(AuthenticationError):
        ed25519_verify(b"\xff" * 32, b"m", bytes(64))


def test_ed25519_repr_hides_the_private_key() -> None:
    seed = rng().bytes(32)
    key = Ed25519SigningKey.from_private_bytes(seed)
    text = repr(key) + str(key)
    assert key.public.hex()[:12] in text
    assert all(seed.hex()[i : i + 8] not in text for i in range(0, 57, 2))

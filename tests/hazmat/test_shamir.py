from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import DecodeError, InconsistentSharesError, UsageError
from secagg.hazmat import shamir
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.shamir import (
    PRIME,
    SHARE_VALUE_BYTES,
    Share,
    combine,
    lagrange_coefficients_at_zero,
    split,
)

from ._vectors import VECTORS, FixedRandomness, load_vectors

SECRET = bytes(range(100, 132))
SMALL_PRIMES = [p for p in range(2, 320) if all(p % d for d in range(2, p))]  # 66 primes


def probably_prime(n: int) -> bool:
    """Miller-Rabin with the first 66 primes as bases: error below 4^-66 for composites."""
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in SMALL_PRIMES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def rng(label: str = "shamir") -> DeterministicRandomness:
    return DeterministicRandomness(b"shamir test randomness").fork(label)


def interpolate(points: list[tuple[int, int]], x: int) -> int:
    """Textbook Lagrange interpolation, one inversion per term: an independent reference."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total += yi * num * pow(den, -1, PRIME)
    return total % PRIME


# --- the field -----------------------------------------------------------------------


def test_prime_is_2_to_the_256_plus_297() -> None:
    assert PRIME == 2**256 + 297
    assert SHARE_VALUE_BYTES == 33 == (PRIME.bit_length() + 7) // 8


def test_prime_passes_miller_rabin_with_66_bases() -> None:
    assert probably_prime(PRIME)
    assert not probably_prime(PRIME - 2)  # the test does reject composites
    assert probably_prime(2**127 - 1)


def test_prime_is_the_smallest_prime_above_2_to_the_256() -> None:
    # Miller-Rabin never calls a prime composite, so this proves every candidate composite.
    assert not any(probably_prime(n) for n in range(2**256 + 1, PRIME))


# --- Share ---------------------------------------------------------------------------


def test_share_value_bytes_round_trip() -> None:
    share = Share(7, PRIME - 1)
    data = share.value_bytes()
    assert len(data) == 33
    assert Share.from_value_bytes(7, data) == share


@pytest.mark.parametrize("data", [bytes(32), bytes(34), PRIME.to_bytes(33, "big"), b"\xff" * 33])
def test_share_value_must_be_33_bytes_below_p(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Share.from_value_bytes(1, data)


@pytest.mark.parametrize("x", [0, -1, 2**32 + 1, True])
def test_share_x_must_be_in_1_to_2_to_the_32(x: int) -> None:
    with pytest.raises(DecodeError):
        Share.from_value_bytes(x, bytes(33))
    with pytest.raises(UsageError):
        Share(x, 0)


def test_share_constructor_rejects_y_outside_the_field() -> None:
    with pytest.raises(UsageError):
        Share(1, PRIME)
    with pytest.raises(UsageError):
        Share(1, -1)


def test_share_repr_hides_y() -> None:
    y = 0x1234567890ABCDEF1234567890ABCDEF
    text = repr(Share(3, y))
    assert "3" in text
    assert str(y) not in text
    assert hex(y)[2:12] not in text.lower()


# --- split / combine -----------------------------------------------------------------


@given(
    secret=st.binary(min_size=32, max_size=32),
    threshold=st.integers(1, 8),
    extra=st.integers(0, 5),
    data=st.data(),
)
@settings(max_examples=100, deadline=None)
def test_combine_inverts_split(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    xs = data.draw(
        st.lists(
            st.integers(1, 2**32),
            min_size=threshold + extra,
            max_size=threshold + extra,
            unique=True,
        )
    )
    shares = split(secret, xs, threshold, rng())
    assert [s.x for s in shares] == xs
    assert combine(shares, threshold) == secret
    assert combine(shares[extra:], threshold) == secret
    assert combine(list(reversed(shares)), threshold) == secret


def test_shares_lie_on_one_polynomial_of_degree_below_threshold() -> None:
    shares = split(SECRET, range(1, 8), 4, rng())
    points = [(s.x, s.y) for s in shares[:4]]
    assert interpolate(points, 0) == int.from_bytes(SECRET, "big")
    for s in shares[4:]:
        assert interpolate(points, s.x) == s.y


def test_every_threshold_subset_reconstructs() -> None:
    shares = split(SECRET, [3, 5, 8, 13, 21, 34], 3, rng())
    for subset in itertools.permutations(shares, 3):
        assert combine(subset, 3) == SECRET


def test_fewer_than_threshold_shares_are_rejected_without_revealing_values() -> None:
    shares = split(SECRET, range(1, 6), 3, rng())
    with pytest.raises(InconsistentSharesError) as info:
        combine(shares[:2], 3)
    message = str(info.value)
    assert "2" in message
    assert "3" in message
    assert all(str(s.y) not in message and hex(s.y)[2:12] not in message for s in shares)
    with pytest.raises(InconsistentSharesError):
        combine([], 1)


def test_threshold_minus_one_shares_are_consistent_with_any_secret() -> None:
    threshold = 4
    known = split(SECRET, [1, 2, 3, 4, 5], threshold, rng())[:3]  # what t-1 parties hold
    for candidate in (SECRET, bytes(32), b"\xff" * 32, bytes(range(32))):
        # A polynomial of degree t-1 through (0, candidate) and the known shares exists:
        # fix it by those t points and read off a t-th share at x = 9.
        points = [(0, int.from_bytes(candidate, "big"))] + [(s.x, s.y) for s in known]
        completing = Share(9, interpolate(points, 9))
        assert combine([*known, completing], threshold) == candidate


def test_a_tampered_extra_share_is_detected() -> None:
    shares = split(SECRET, range(1, 8), 3, rng())
    for i in range(len(shares)):
        tampered = list(shares)
        tampered[i] = Share(shares[i].x, (shares[i].y + 1) % PRIME)
        with pytest.raises(InconsistentSharesError):
            combine(tampered, 3)


def test_repeated_x_coordinates_are_rejected() -> None:
    shares = split(SECRET, range(1, 5), 2, rng())
    with pytest.raises(InconsistentSharesError):
        combine([shares[0], shares[0], shares[1]], 2)
    with pytest.raises(InconsistentSharesError):
        combine([shares[0], shares[0]], 2)


def test_a_value_that_is_not_a_32_byte_secret_is_rejected() -> None:
    # f(x) = 2^256 + 5x: its "secret" f(0) is a field element but not 32 bytes.
    shares = [Share(x, (2**256 + 5 * x) % PRIME) for x in (1, 2, 3)]
    with pytest.raises(InconsistentSharesError):
        combine(shares, 2)


def test_combine_uses_a_single_modular_inversion(monkeypatch: pytest.MonkeyPatch) -> None:
    shares = split(SECRET, range(1, 41), 34, rng())
    calls: list[tuple[int, ...]] = []

    def counting_pow(*args: int) -> int:
        calls.append(args)
        return pow(*args)

    shamir._lagrange_at_cached.cache_clear()
    monkeypatch.setattr(shamir, "pow", counting_pow, raising=False)
    assert combine(shares, 34) == SECRET
    assert len(calls) == 1


def test_combine_without_the_coefficient_cache_gives_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shamir, "_CACHE_MAX_COEFFICIENTS", 0)
    shares = split(SECRET, range(1, 9), 5, rng())
    assert combine(shares, 5) == SECRET
    tampered = [*shares[:-1], Share(shares[-1].x, (shares[-1].y + 1) % PRIME)]
    with pytest.raises(InconsistentSharesError):
        combine(tampered, 5)


@pytest.mark.parametrize("secret", [b"", bytes(31), bytes(33)])
def test_split_requires_a_32_byte_secret(secret: bytes) -> None:
    with pytest.raises(UsageError):
        split(secret, [1, 2], 1, rng())


@pytest.mark.parametrize(
    ("xs", "threshold"),
    [
        ([1, 2, 3], 0),
        ([1, 2, 3], 4),
        ([], 1),
        ([1, 2, 2], 2),
        ([0, 1, 2], 2),
        ([1, 2, 2**32 + 1], 2),
        ([1, 2, -3], 2),
    ],
)
def test_split_rejects_bad_thresholds_and_xs(xs: list[int], threshold: int) -> None:
    with pytest.raises(UsageError):
        split(SECRET, xs, threshold, rng())


def test_split_draws_coefficients_by_rejection_from_257_bit_masked_draws() -> None:
    rejected = b"\xff" * 33  # masks to 2^257 - 1 >= p: drawn again
    accepted = b"\xfe" + b"\x11" * 32  # the bits above 257 are masked off
    coefficient = int.from_bytes(b"\x11" * 32, "big")
    shares = split(SECRET, [1, 2, 3], 2, FixedRandomness(rejected + accepted))
    s = int.from_bytes(SECRET, "big")
    assert [sh.y for sh in shares] == [(s + coefficient * x) % PRIME for x in (1, 2, 3)]


def test_lagrange_coefficients_at_zero_known_answer() -> None:
    assert lagrange_coefficients_at_zero([1, 2, 3]) == [3, PRIME - 3, 1]
    assert lagrange_coefficients_at_zero([5]) == [1]


@given(st.lists(st.integers(1, 2**32), min_size=1, max_size=12, unique=True))
@settings(max_examples=50, deadline=None)
def test_lagrange_coefficients_interpolate_constants_and_monomials(xs: list[int]) -> None:
    coefficients = lagrange_coefficients_at_zero(xs)
    assert sum(coefficients) % PRIME == 1  # f = 1
    for degree in range(1, len(xs)):  # f = x^k vanishes at 0
        assert (
            sum(c * pow(x, degree, PRIME) for c, x in zip(coefficients, xs, strict=True)) % (PRIME)
            == 0
        )


def test_lagrange_coefficients_reject_bad_xs() -> None:
    with pytest.raises(UsageError):
        lagrange_coefficients_at_zero([1, 1])
    with pytest.raises(UsageError):
        lagrange_coefficients_at_zero([0, 1])


# --- known-answer vector -------------------------------------------------------------


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_shamir", Path(VECTORS) / "generate_shamir.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_known_answer_vectors_are_reproduced() -> None:
    assert load_generator().generate() == load_vectors("shamir.json")


@pytest.mark.parametrize("case", load_vectors("shamir.json")["cases"], ids=lambda c: c["name"])
def test_known_answer_shares_combine_to_their_secret(case: dict[str, Any]) -> None:
    shares = [Share.from_value_bytes(s["x"], bytes.fromhex(s["y"])) for s in case["shares"]]
    secret = bytes.fromhex(case["secret"])
    assert combine(shares, case["threshold"]) == secret
    assert combine(shares[::-1], case["threshold"]) == secret


# --- cost ---------------------------------------------------------------------------


def test_at_100_holders_threshold_34_combine_costs_one_inversion_per_set_of_responders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Counted rather than timed. A modular inversion (pow(a, -1, p), 256-bit) is the costly
    # step: Montgomery's trick inverts every Lagrange denominator at once, the coefficients
    # are cached by the responders' x's, and checking further shares needs no inversion of
    # its own. Splitting inverts nothing.
    inversions = 0

    def counted(base: int, exponent: int, modulus: int | None = None) -> int:
        nonlocal inversions
        inversions += exponent == -1
        return pow(base, exponent, modulus)

    monkeypatch.setattr(shamir, "pow", counted, raising=False)
    shamir._lagrange_at_cached.cache_clear()
    shares = split(SECRET, list(range(1, 101)), 34, rng())
    assert inversions == 0
    assert combine(shares[:34], 34) == SECRET
    assert inversions == 1
    assert combine(shares[:34], 34) == SECRET  # the same responders: cached
    assert inversions == 1
    assert combine(shares, 34) == SECRET  # 66 more shares checked, one more inversion
    assert inversions == 2
    shamir._lagrange_at_cached.cache_clear()

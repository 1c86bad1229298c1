"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^256 + 297.

p is the smallest prime above 2^256, so every 32-byte secret is a field element and a share
value fits in 33 bytes. A share is the point (x, f(x)) of a random polynomial f of degree
t-1 with f(0) = secret; any t shares determine f(0), and t-1 shares are consistent with every
secret.

Reconstruction interpolates at 0 from the first t shares, with all Lagrange coefficients
obtained from a single modular inversion (Montgomery's batch-inversion trick), and checks
every further share against the same polynomial. Coefficients depend only on the x's (party
ids, which are public), so they are cached: a server reconstructing many secrets from the
same responders pays for them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from secagg.errors import DecodeError, InconsistentSharesError, UsageError

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness

__all__ = [
    "MAX_X",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_VALUE_BYTES",
    "Share",
    "combine",
    "lagrange_coefficients_at_zero",
    "split",
]

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_VALUE_BYTES = 33
MAX_X = 1 << 32
# Coefficients are drawn as 33 random bytes cut to 257 bits, then rejected if >= p: p is just
# above 2^256, so about half the draws are kept, and the kept ones are exactly uniform.
_DRAW_MASK = (1 << 257) - 1


def _valid_x(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_X


@dataclass(frozen=True)
class Share:
    """The point (x, y) of a sharing polynomial; ``y`` is secret and never shown."""

    x: int
    y: int = field(repr=False)

    def __post_init__(self) -> None:
        if not _valid_x(self.x):
            raise UsageError(f"share x must be an int in [1, 2^32], got {self.x!r}")
        if isinstance(self.y, bool) or not isinstance(self.y, int) or not 0 <= self.y < PRIME:
            raise UsageError("share y must be an int in [0, p)")

    def value_bytes(self) -> bytes:
        """``y`` as 33 big-endian bytes."""
        return self.y.to_bytes(SHARE_VALUE_BYTES, "big")

    @classmethod
    def from_value_bytes(cls, x: int, data: bytes) -> Share:
        """Parse a share value; DecodeError unless 33 bytes encoding y < p and x is valid."""
        if not _valid_x(x):
            raise DecodeError("share x must be an int in [1, 2^32]")
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) != SHARE_VALUE_BYTES:
            raise DecodeError(f"share value must be {SHARE_VALUE_BYTES} bytes")
        y = int.from_bytes(data, "big")
        if y >= PRIME:
            raise DecodeError("share value is not a field element")
        return cls(x, y)


def _check_xs(xs: Sequence[int]) -> None:
    for x in xs:
        if not _valid_x(x):
            raise UsageError(f"share x must be an int in [1, 2^32], got {x!r}")
    if len(set(xs)) != len(xs):
        raise UsageError("share x coordinates must be distinct")


def _random_coefficient(rng: Randomness) -> int:
    while True:
        candidate = int.from_bytes(rng.bytes(SHARE_VALUE_BYTES), "big") & _DRAW_MASK
        if candidate < PRIME:
            return candidate


def split(secret: bytes, xs: Sequence[int], threshold: int, rng: Randomness) -> list[Share]:
    """Share ``secret`` (32 bytes) to the parties at ``xs``; any ``threshold`` recover it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise UsageError(f"secret must be {SECRET_BYTES} bytes")
    xs = list(xs)
    _check_xs(xs)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise UsageError("threshold must be an int")
    if not 1 <= threshold <= len(xs):
        raise UsageError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    # Highest degree first, for Horner's rule; the constant term is the secret.
    coefficients = [_random_coefficient(rng) for _ in range(threshold - 1)]
    coefficients.append(int.from_bytes(secret, "big"))
    shares = []
    for x in xs:
        y = 0
        for c in coefficients:
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses of nonzero field elements with one modular exponentiation (Montgomery)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inverse = pow(prefix[-1], -1, PRIME)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return result


# Cache entries hold len(base) * len(targets) integers of ~64 bytes: cache only those of up to
# ~1 MB, so that the cache stays below ~32 MB whatever the callers do.
_CACHE_ENTRIES = 32
_CACHE_MAX_COEFFICIENTS = 1 << 14


def _lagrange_at(base: tuple[int, ...], targets: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    if len(base) * len(targets) <= _CACHE_MAX_COEFFICIENTS:
        return _lagrange_at_cached(base, targets)
    return _compute_lagrange_at(base, targets)


def _compute_lagrange_at(
    base: tuple[int, ...], targets: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """For each target z, the coefficients L_i(z) with f(z) = sum_i L_i(z) * f(base[i]).

    L_i(z) = prod_{j != i} (z - x_j) / prod_{j != i} (x_i - x_j). The denominators depend
    only on ``base``; all of them are inverted together. Targets must not be in ``base``.
    """
    denominators = []
    for i, xi in enumerate(base):
        d = 1
        for j, xj in enumerate(base):
            if j != i:
                d = d * (xi - xj) % PRIME
        denominators.append(d)
    weights = _batch_inverse(denominators)
    rows = []
    k = len(base)
    for z in targets:
        # prod_{j != i} (z - x_j) from prefix and suffix products, without division.
        diffs = [(z - x) % PRIME for x in base]
        suffix = [1] * (k + 1)
        for i in range(k - 1, -1, -1):
            suffix[i] = suffix[i + 1] * diffs[i] % PRIME
        row = []
        prefix = 1
        for i in range(k):
            row.append(prefix * suffix[i + 1] % PRIME * weights[i] % PRIME)
            prefix = prefix * diffs[i] % PRIME
        rows.append(tuple(row))
    return tuple(rows)


_lagrange_at_cached = lru_cache(maxsize=_CACHE_ENTRIES)(_compute_lagrange_at)


def lagrange_coefficients_at_zero(xs: Sequence[int]) -> list[int]:
    """The λ_i with f(0) = sum_i λ_i f(xs[i]) for every polynomial of degree < len(xs)."""
    xs = tuple(xs)
    _check_xs(xs)
    return list(_lagrange_at(xs, (0,))[0])


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares.

    Raises InconsistentSharesError if there are too few shares, repeated x's, a share beyond
    the first ``threshold`` off their polynomial, or a result that is not a 32-byte secret.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise UsageError(f"threshold must be a positive int, got {threshold!r}")
    shares = list(shares)
    if not all(isinstance(s, Share) for s in shares):
        raise UsageError("combine expects Share objects")
    if len(shares) < threshold:
        raise InconsistentSharesError(f"{len(shares)} shares given, at least {threshold} needed")
    xs = tuple(s.x for s in shares)
    if len(set(xs)) != len(xs):
        raise InconsistentSharesError(
            f"shares must have distinct x coordinates: {len(set(xs))} distinct among "
            f"{len(xs)} given, {threshold} needed"
        )
    base, extras = xs[:threshold], xs[threshold:]
    rows = _lagrange_at(base, (0, *extras))
    ys = [s.y for s in shares[:threshold]]
    # Sum the full products and reduce once: cheaper than reducing every term.
    secret = sum(c * y for c, y in zip(rows[0], ys, strict=True)) % PRIME
    for row, extra in zip(rows[1:], shares[threshold:], strict=True):
        if sum(c * y for c, y in zip(row, ys, strict=True)) % PRIME != extra.y:
            raise InconsistentSharesError(
                f"share at x={extra.x} does not lie on the polynomial of the first "
                f"{threshold} shares"
            )
    if secret >= 1 << (8 * SECRET_BYTES):
        raise InconsistentSharesError("reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")

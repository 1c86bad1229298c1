"""Discrete noise for distributed DP, drawn only from a :class:`Randomness`'s uint32 words.

Two mechanisms (``secagg.dp.mechanism.Mechanism``):

- **Skellam** ``Sk(mu)``: the difference of two independent Poisson(mu/2), so mean 0 and
  variance ``mu``. Sums of independent Skellams are Skellam with the summed parameter, which is
  why it is the default: n clients adding ``Sk(mu)`` give exactly ``Sk(n*mu)``.
- **Discrete Gaussian** ``N_Z(0, sigma^2)``: P(x) proportional to exp(-x^2 / (2 sigma^2)) on the
  integers (variance below sigma^2, by a relative 2e-7 at sigma = 1 and far less above). A sum
  of discrete Gaussians is not one; the accounting pays for that (``accounting.ddg_tau``).

Never numpy's generators: every uniform comes from ``rng.words`` (AES-CTR), two words per
53-bit double. All samplers are vectorised rejection loops that redraw only for the samples
still rejected, so 100,000 samples cost 5-20 milliseconds at any parameter in range.

What floating point costs. Uniforms live on a 2^-53 grid and logs/exps round, so each outcome's
probability is off by a relative ~1e-15 where it is not tiny, and outcomes whose probability is
below ~2^-50 are not represented faithfully (the far tail is cut off at about 37 scale lengths).
Both are far below the accounting's delta for the sizes we use, but they are not included in
it; an exact sampler (Canonne-Kamath-Steinke's rational-arithmetic version) would remove them
at a large cost in speed. The outputs are integers, so the float-gap attacks on the continuous
Laplace/Gaussian (Mironov 2012) do not apply.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from secagg.dp.mechanism import Mechanism
from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import Randomness

__all__ = [
    "MAX_LOCAL_VARIANCE",
    "discrete_gaussian",
    "poisson",
    "sample",
    "skellam",
]

# Samples are computed in float64, whose integers are exact below 2^53; a variance of at most
# 2^50 keeps every sample (about 37 standard deviations of headroom) well inside that.
MAX_LOCAL_VARIANCE = float(2**50)

_TWO_POW_MINUS_53 = 2.0**-53

# Below this mean the Poisson sampler inverts a precomputed CDF table; at and above it, it uses
# Hormann's PTRS, whose constants are fitted for means of 10 and more.
_PTRS_MIN_MEAN = 10.0
# The inversion table reaches this index; P(Poisson(10) > 60) is about 1e-22.
_TABLE_LENGTH = 61

_LOG_FACTORIALS = np.array([math.lgamma(k + 1.0) for k in range(_TABLE_LENGTH)])


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"sample count must be a non-negative int, got {n!r}")


def _check_parameter(name: str, value: float, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ConfigurationError(f"{name} must be a number")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= limit):
        raise ConfigurationError(f"{name} must be finite and in [0, {limit:g}], got {value!r}")
    return value


def _uniform(rng: Randomness, n: int) -> NDArray[np.float64]:
    """``n`` uniforms in the open interval (0, 1): (k + 1/2) 2^-53 for a 53-bit integer k.

    Open at both ends, so logs are finite and 1 - u is never 0.
    """
    words = rng.words(2 * n).astype(np.uint64)
    k = (words[0::2] >> np.uint64(5)) << np.uint64(26)
    k |= words[1::2] >> np.uint64(6)
    u = k.astype(np.float64)
    u += 0.5
    u *= _TWO_POW_MINUS_53
    return u


def poisson(lam: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """``n`` independent Poisson(``lam``) samples (int64), 0 <= lam <= 2^49."""
    lam = _check_parameter("the Poisson mean", lam, MAX_LOCAL_VARIANCE / 2)
    _check_count(n)
    if lam == 0.0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if lam < _PTRS_MIN_MEAN:
        return _poisson_by_inversion(lam, n, rng)
    return _poisson_ptrs(lam, n, rng)


def _poisson_by_inversion(lam: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """Inversion of the CDF: the smallest k with CDF(k) > u, by binary search in a table."""
    k = np.arange(_TABLE_LENGTH, dtype=np.float64)
    log_pmf = -lam + k * math.log(lam) - _LOG_FACTORIALS
    cdf = np.cumsum(np.exp(log_pmf))
    # The table's last entry may round a hair below 1; a u above it (probability < 1e-16)
    # takes the last index, a far-tail value of negligible mass.
    index = np.searchsorted(cdf, _uniform(rng, n), side="right")
    np.minimum(index, _TABLE_LENGTH - 1, out=index)
    return index.astype(np.int64)


def _poisson_ptrs(lam: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """Hormann's PTRS ("The transformed rejection method for generating Poisson random
    variables", 1993): a transformed-rejection sampler whose acceptance rate is about 90% for
    every mean of 10 or more. Each pass draws two uniforms for every sample still pending; a
    cheap squeeze accepts most, the exact log-density test decides the rest."""
    sqrt_lam = math.sqrt(lam)
    b = 0.931 + 2.53 * sqrt_lam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    v_r = 0.9277 - 3.6224 / (b - 2.0)

    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while len(pending):
        m = len(pending)
        u = _uniform(rng, m)
        u -= 0.5
        v = _uniform(rng, m)
        us = 0.5 - np.abs(u)
        k = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        accept = (us >= 0.07) & (v <= v_r)
        # The rest need the exact test, unless they are outside the support or in the region
        # the squeeze rejects outright.
        undecided = ~accept & (k >= 0.0) & ~((us < 0.013) & (v > us))
        idx = np.flatnonzero(undecided)
        if len(idx):
            usi = us[idx]
            lhs = np.log(v[idx]) + log_inv_alpha - np.log(a / (usi * usi) + b)
            accept[idx] = lhs <= _log_poisson_pmf(k[idx], lam)
        out[pending[accept]] = k[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def _log_poisson_pmf(k: NDArray[np.float64], lam: float) -> NDArray[np.float64]:
    """log P(Poisson(lam) = k) for integer-valued k >= 0, accurate for huge lam too.

    The textbook -lam + k log(lam) - lgamma(k + 1) subtracts numbers near lam log(lam): at
    lam = 2^40 that is ~3e13, whose rounding (~0.01) would decide PTRS's acceptance test.
    Loader's saddle-point form ("Fast and accurate computation of binomial probabilities",
    2000) keeps every term small: log p = -bd0(k, lam) - log(2 pi k)/2 - stirlerr(k), with
    bd0(k, lam) = k log(k/lam) + lam - k and stirlerr(k) = log k! - log(sqrt(2 pi k) (k/e)^k).
    """
    out = np.full(k.shape, -lam)  # k = 0
    positive = k > 0
    kp = k[positive]
    out[positive] = -_bd0(kp, lam) - 0.5 * np.log(2.0 * math.pi * kp) - _stirlerr(kp)
    return out


def _bd0(k: NDArray[np.float64], lam: float) -> NDArray[np.float64]:
    """k log(k/lam) + lam - k, without cancellation when k is close to lam."""
    out = k * np.log(k / lam) + lam - k
    near = np.abs(k - lam) < 0.1 * (k + lam)
    if np.any(near):
        # With v = (k - lam)/(k + lam), bd0 = (k - lam) v + 2k sum_{j>=1} v^(2j+1)/(2j+1);
        # |v| < 0.1, so 9 terms reach 1e-18 relative.
        kn = k[near]
        v = (kn - lam) / (kn + lam)
        v2 = v * v
        total = (kn - lam) * v
        term = 2.0 * kn * v
        for j in range(1, 10):
            term *= v2
            total += term / (2 * j + 1)
        out[near] = total
    return out


# stirlerr(k) for k = 0..30 from lgamma directly (small numbers, no cancellation to speak of).
_STIRLERR_SMALL = np.array(
    [0.0]
    + [
        math.lgamma(j + 1.0) - (j + 0.5) * math.log(j) + j - 0.5 * math.log(2.0 * math.pi)
        for j in range(1, 31)
    ]
)


def _stirlerr(k: NDArray[np.float64]) -> NDArray[np.float64]:
    """log k! - log(sqrt(2 pi k) (k/e)^k) for integer-valued k >= 1."""
    out = np.empty_like(k)
    small = k <= 30.0
    out[small] = _STIRLERR_SMALL[k[small].astype(np.int64)]
    large = ~small
    if np.any(large):
        # The Stirling series; at k > 30 the first omitted term, 1/(1188 k^9), is below 1e-16.
        inv = 1.0 / k[large]
        inv2 = inv * inv
        out[large] = inv * (
            1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0))
        )
    return out


def skellam(mu: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """``n`` independent Skellam samples with variance ``mu``: Poisson(mu/2) - Poisson(mu/2)."""
    mu = _check_parameter("the Skellam parameter mu", mu, MAX_LOCAL_VARIANCE)
    _check_count(n)
    plus = poisson(mu / 2.0, n, rng)
    plus -= poisson(mu / 2.0, n, rng)
    return plus


def discrete_gaussian(sigma: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """``n`` independent discrete Gaussian samples N_Z(0, sigma^2).

    Canonne, Kamath and Steinke ("The Discrete Gaussian for Differential Privacy", 2020,
    Algorithm 3): draw Y from the discrete Laplace with scale t = floor(sigma) + 1 and keep it
    with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)); the kept values are exactly
    N_Z(0, sigma^2), and fewer than two draws are needed on average. Y is the difference of two
    geometrics, each floor(-t ln U) for a uniform U (P(floor(-t ln U) >= k) = e^(-k/t)).
    """
    sigma = _check_parameter("the discrete Gaussian sigma", sigma, math.sqrt(MAX_LOCAL_VARIANCE))
    _check_count(n)
    if sigma == 0.0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    t = math.floor(sigma) + 1.0
    variance = sigma * sigma
    shift = variance / t
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while len(pending):
        m = len(pending)
        y = np.floor(-t * np.log(_uniform(rng, m)))
        y -= np.floor(-t * np.log(_uniform(rng, m)))
        gap = np.abs(y) - shift
        accept = _uniform(rng, m) < np.exp(-(gap * gap) / (2.0 * variance))
        out[pending[accept]] = y[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def sample(mechanism: Mechanism, parameter: float, n: int, rng: Randomness) -> NDArray[np.int64]:
    """``n`` samples of one client's noise: Skellam with variance ``parameter``, or the
    discrete Gaussian with sigma ``parameter``."""
    mechanism = Mechanism(mechanism)
    if mechanism is Mechanism.SKELLAM:
        return skellam(parameter, n, rng)
    return discrete_gaussian(parameter, n, rng)

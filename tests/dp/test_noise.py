from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.dp.mechanism import Mechanism
from secagg.dp.noise import (
    MAX_LOCAL_VARIANCE,
    _log_poisson_pmf,
    discrete_gaussian,
    poisson,
    sample,
    skellam,
)
from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import DeterministicRandomness
from tests.dp._counting import CountingRandomness
from tests.dp._stats import (
    Z_999,
    chi_square_fits,
    discrete_gaussian_pmf,
    poisson_pmf,
    rng,
    skellam_pmf,
)

N = 200_000


class WordsOnly:
    """A Randomness that serves words from a deterministic stream and refuses bytes: the
    samplers must draw every uniform from words."""

    def __init__(self, label: str) -> None:
        self.inner = rng(label)
        self.words_drawn = 0

    def bytes(self, n: int) -> bytes:
        raise AssertionError("noise must come from words(), not bytes()")

    def words(self, n: int) -> np.ndarray:
        self.words_drawn += n
        return self.inner.words(n)


def assert_mean_and_variance(samples: np.ndarray, variance: float) -> None:
    # Mean within Z_999 standard errors of 0; variance within Z_999 standard errors of its
    # target, with the variance's standard error sqrt((m4 - var^2) / n) estimated from the data.
    n = len(samples)
    x = samples.astype(np.float64)
    assert abs(x.mean()) <= Z_999 * math.sqrt(variance / n)
    centred = x - x.mean()
    m4 = float((centred**4).mean())
    se_var = math.sqrt(max(m4 - variance**2, 0.0) / n)
    assert abs(x.var() - variance) <= Z_999 * se_var + 1e-12


@pytest.mark.parametrize("lam", [0.7, 3.0, 9.99, 10.0, 57.3, 10_000.0])
def test_poisson_samples_follow_the_poisson_distribution(lam: float) -> None:
    samples = poisson(lam, N, rng(f"poisson {lam}"))
    assert samples.dtype == np.int64
    top = int(lam + 12 * math.sqrt(lam) + 30)
    statistic, critical = chi_square_fits(samples, np.arange(top + 1), poisson_pmf(lam, top))
    assert statistic < critical
    # Poisson: mean = variance = lam.
    assert_mean_and_variance(samples.astype(np.float64) - lam, lam)


def test_poisson_with_a_huge_mean_has_the_right_mean_and_variance() -> None:
    lam = 2.0**40
    x = poisson(lam, N, rng("huge poisson")).astype(np.float64) - lam
    assert abs(x.mean()) <= Z_999 * math.sqrt(lam / N)
    # Var of the sample variance of a near-Gaussian: 2 lam^2 / n.
    assert abs(x.var() / lam - 1.0) <= Z_999 * math.sqrt(2.0 / N)


def test_the_stable_poisson_log_pmf_matches_the_textbook_formula_where_both_are_accurate() -> None:
    for lam in (10.0, 37.5, 1000.0):
        k = np.arange(0, int(3 * lam) + 30, dtype=np.float64)
        direct = np.array([-lam + j * math.log(lam) - math.lgamma(j + 1) for j in k])
        # The textbook form is accurate to ~1e-13 at these means (its own rounding).
        np.testing.assert_allclose(_log_poisson_pmf(k, lam), direct, rtol=1e-12, atol=1e-11)


def test_the_sum_of_many_clients_skellam_noise_is_skellam_with_the_summed_parameter() -> None:
    clients, mu = 40, 3.7
    source = rng("skellam clients")
    total = np.zeros(N, dtype=np.int64)
    for _ in range(clients):
        total += skellam(mu, N, source)
    central = clients * mu
    assert_mean_and_variance(total, central)
    support, pmf = skellam_pmf(central)
    statistic, critical = chi_square_fits(total, support, pmf)
    assert statistic < critical


@pytest.mark.parametrize("mu", [0.4, 5.0, 25.0, 5000.0])
def test_skellam_samples_follow_the_skellam_distribution(mu: float) -> None:
    samples = skellam(mu, N, rng(f"skellam {mu}"))
    assert_mean_and_variance(samples, mu)
    support, pmf = skellam_pmf(mu)
    statistic, critical = chi_square_fits(samples, support, pmf)
    assert statistic < critical


def test_the_chi_square_check_rejects_a_wrong_distribution() -> None:
    # The check has teeth: Skellam(25) samples fail against the Skellam(27) distribution.
    samples = skellam(25.0, N, rng("skellam 25 again"))
    support, pmf = skellam_pmf(27.0)
    statistic, critical = chi_square_fits(samples, support, pmf)
    assert statistic > critical


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 40.0, 3000.0])
def test_discrete_gaussian_samples_follow_the_discrete_gaussian(sigma: float) -> None:
    samples = discrete_gaussian(sigma, N, rng(f"dgauss {sigma}"))
    assert samples.dtype == np.int64
    support, pmf = discrete_gaussian_pmf(sigma)
    exact_variance = float((pmf * support.astype(np.float64) ** 2).sum())
    assert_mean_and_variance(samples, exact_variance)
    if sigma >= 1.0:
        # The discrete Gaussian's variance is below sigma^2 by a relative ~4 pi^2
        # e^(-2 pi^2 sigma^2): 2e-7 at sigma = 1, nothing measurable above.
        assert sigma**2 * (1 - 3e-7) < exact_variance <= sigma**2
    if sigma <= 40.0:
        statistic, critical = chi_square_fits(samples, support, pmf)
        assert statistic < critical


# Counted rather than timed: each sampler is a rejection loop over whole vectors, so 100,000
# samples take a few dozen vector draws (a pass redraws only the pending samples, fewer every
# time), at most 4 per bit of n where a loop over the samples would make 100,000. The
# randomness is seeded, so the draws are exact; so is the number of words (about 4 to 11 per
# sample: two per uniform, and each attempt needs two to three uniforms).
@pytest.mark.parametrize(
    ("mechanism", "parameter", "draws", "words"),
    [
        (Mechanism.SKELLAM, 1.0, 2, 400_000),  # Poisson(1/2) by inversion: one pass each
        (Mechanism.SKELLAM, 1e6, 22, 898_392),  # Poisson(5e5) by PTRS
        (Mechanism.DISCRETE_GAUSSIAN, 1.0, 48, 1_109_694),
        (Mechanism.DISCRETE_GAUSSIAN, 1e3, 24, 788_586),  # sigma^2 = 1e6
    ],
)
def test_100k_samples_take_a_few_vector_draws(
    mechanism: Mechanism, parameter: float, draws: int, words: int
) -> None:
    n = 100_000
    source = CountingRandomness(rng("timing"))
    samples = sample(mechanism, parameter, n, source)
    assert len(samples) == n
    assert len(source.draws) == draws <= 4 * n.bit_length()
    assert sum(source.draws) == words


def test_noise_is_drawn_from_words_only_and_is_reproducible() -> None:
    spy = WordsOnly("words only")
    a = skellam(1234.5, 5000, spy)
    b = discrete_gaussian(17.0, 5000, spy)
    assert spy.words_drawn > 0
    again = WordsOnly("words only")
    np.testing.assert_array_equal(skellam(1234.5, 5000, again), a)
    np.testing.assert_array_equal(discrete_gaussian(17.0, 5000, again), b)
    other = skellam(1234.5, 5000, rng("another stream"))
    assert not np.array_equal(a, other)


def test_zero_noise_and_zero_samples_are_allowed() -> None:
    source = rng("zeros")
    np.testing.assert_array_equal(skellam(0.0, 10, source), np.zeros(10, dtype=np.int64))
    np.testing.assert_array_equal(discrete_gaussian(0.0, 10, source), np.zeros(10, np.int64))
    assert len(skellam(5.0, 0, source)) == 0
    assert len(poisson(5.0, 0, source)) == 0


@pytest.mark.parametrize(
    "bad", [-1.0, float("nan"), float("inf"), MAX_LOCAL_VARIANCE * 2, True, "3"]
)
def test_bad_noise_parameters_are_refused(bad: object) -> None:
    source = DeterministicRandomness(bytes(32))
    with pytest.raises(ConfigurationError):
        skellam(bad, 10, source)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        discrete_gaussian(bad, 10, source)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_sample_counts_are_refused(bad: object) -> None:
    with pytest.raises(UsageError):
        skellam(1.0, bad, DeterministicRandomness(bytes(32)))  # type: ignore[arg-type]

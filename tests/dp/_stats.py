"""Exact reference distributions and a goodness-of-fit check for the DP tests.

The reference probabilities are computed from their definitions (log-factorials, sums of
exponentials), independently of the samplers under test.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.randomness import DeterministicRandomness

# The upper 0.1% point of the standard normal: with a fixed seed a correct sampler passes a
# check at this level with probability 0.999, after which the seed keeps it passing forever.
Z_999 = 3.0902


def rng(label: str) -> DeterministicRandomness:
    return DeterministicRandomness(b"secagg dp test randomness").fork(label)


def poisson_pmf(lam: float, top: int) -> NDArray[np.float64]:
    """P(Poisson(lam) = k) for k = 0..top."""
    k = np.arange(top + 1)
    log_fact = np.array([math.lgamma(j + 1.0) for j in k])
    pmf: NDArray[np.float64] = np.exp(-lam + k * math.log(lam) - log_fact)
    return pmf


def skellam_pmf(mu: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(support, P(X = k)) of Poisson(mu/2) - Poisson(mu/2), by convolving the two pmfs."""
    top = int(mu / 2 + 12 * math.sqrt(mu / 2 + 1) + 20)
    p = poisson_pmf(mu / 2, top)
    pmf = np.convolve(p, p[::-1])  # index i <-> value i - top
    return np.arange(-top, top + 1), pmf


def discrete_gaussian_pmf(sigma: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(support, P(X = k)) of N_Z(0, sigma^2), normalised over +-(40 sigma + 10)."""
    top = int(40 * sigma + 10)
    k = np.arange(-top, top + 1)
    weights = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma * sigma))
    return k, weights / weights.sum()


def chi_square_fits(
    samples: NDArray[np.int64], support: NDArray[np.int64], pmf: NDArray[np.float64]
) -> tuple[float, float]:
    """(statistic, 0.999 critical value) of Pearson's chi-square test of ``samples`` against
    ``pmf``, with neighbouring values merged until every bin expects at least 5 samples.

    The critical value uses the Wilson-Hilferty approximation of the chi-square quantile,
    accurate to well under 1% for the bin counts used here.
    """
    n = len(samples)
    lo = int(support[0])
    counts = np.bincount(samples - lo, minlength=len(support))
    if len(counts) > len(support):
        raise AssertionError("a sample lies outside the reference support")
    expected = pmf * n
    # Merge bins greedily from the left until each expects >= 5; the remainder joins the last.
    edges = []
    acc = 0.0
    for i, e in enumerate(expected):
        acc += e
        if acc >= 5.0:
            edges.append(i + 1)
            acc = 0.0
    if edges[-1] != len(expected):
        edges[-1] = len(expected)
    starts = [0, *edges[:-1]]
    obs = np.array([counts[a:b].sum() for a, b in zip(starts, edges, strict=True)])
    exp = np.array([expected[a:b].sum() for a, b in zip(starts, edges, strict=True)])
    statistic = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    critical = dof * (1 - 2 / (9 * dof) + Z_999 * math.sqrt(2 / (9 * dof))) ** 3
    return statistic, critical

"""The central-DP baseline's noisy mean: the clipped sum rounded to a fine grid, plus the
project's discrete Gaussian drawn from a Randomness, whose std over the clip is the multiplier
the plan's accountant charged for (widened by the grid, and saying by how much)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.dp.central import CentralPlan
from secagg.dp.central_noise import (
    GRID_STD,
    MAX_GRID_INFLATION,
    central_grid,
    clip_to_l2,
    noisy_mean,
)
from secagg.dp.encoding import DpEncoding
from secagg.errors import ConfigurationError, UsageError
from tests.dp._counting import CountingRandomness
from tests.dp._stats import Z_999, rng

# No accountant here: the mechanism is tested on a plan stated outright.
PLAN = CentralPlan(
    l2_clip=2.0,
    noise_multiplier=3.0,
    delta=1e-5,
    rounds=1,
    sampling_rate=1.0,
    epsilon_per_round=1.0,
    epsilon_total=1.0,
)
DIM = 50_000


class WordsOnly:
    """A Randomness that refuses bytes: the noise comes from words, as every sampler's."""

    def __init__(self, label: str) -> None:
        self.inner = rng(label)

    def bytes(self, n: int) -> bytes:
        raise AssertionError("noise must come from words(), not bytes()")

    def words(self, n: int) -> np.ndarray:
        return self.inner.words(n)


def test_the_grids_noise_covers_the_rounded_sums_sensitivity_exactly() -> None:
    grid = central_grid(PLAN, DIM)
    # Rounding moves each coordinate by at most half a step, so neighbouring rounded sums
    # differ by at most clip + step sqrt(dim); the noise's std is z times that.
    sensitivity = PLAN.l2_clip + grid.step * math.sqrt(DIM)
    assert grid.noise_std == pytest.approx(PLAN.noise_multiplier * sensitivity, rel=1e-12)
    assert grid.noise_multiplier == pytest.approx(grid.noise_std / PLAN.l2_clip, rel=1e-12)
    # Carried a little above the plan's z, by at most the stated inflation.
    assert PLAN.noise_multiplier < grid.noise_multiplier
    assert grid.noise_multiplier <= PLAN.noise_multiplier * MAX_GRID_INFLATION
    assert grid.noise_multiplier == pytest.approx(PLAN.noise_multiplier, rel=1e-4)


def test_a_grid_that_would_widen_the_noise_past_its_bound_is_refused() -> None:
    huge = CentralPlan(**{**PLAN.__dict__, "noise_multiplier": 1000.0})
    with pytest.raises(ConfigurationError, match="widen the noise"):
        central_grid(huge, 10**6)
    with pytest.raises(UsageError):
        central_grid(PLAN, 0)


def test_the_released_mean_is_the_clipped_mean_plus_noise_of_the_grids_std() -> None:
    included = 7
    total = np.linspace(-3.0, 3.0, DIM)
    released = noisy_mean(PLAN, total, included, WordsOnly("central"))
    grid = central_grid(PLAN, DIM)
    error = released * included - total  # the noise on the sum, and the rounding
    sd = grid.noise_std
    assert abs(float(error.mean())) <= Z_999 * sd / math.sqrt(DIM)
    # The sample variance's standard error is about var sqrt(2 / n) for a Gaussian.
    assert abs(float(error.var()) / sd**2 - 1) <= Z_999 * math.sqrt(2 / DIM)
    assert float(np.max(np.abs(released - total / included))) <= grid.error_bound(included)


def test_the_released_values_lie_on_the_grid_and_depend_only_on_the_randomness() -> None:
    total = np.full(1000, 0.123456789)
    grid = central_grid(PLAN, 1000)
    released = noisy_mean(PLAN, total, 3, rng("grid"))
    steps = released * 3 / grid.step
    # Integers times the step over the count: no floating-point gap to read the sum from.
    assert np.all(np.abs(steps - np.rint(steps)) < 1e-6)
    assert np.array_equal(released, noisy_mean(PLAN, total, 3, rng("grid")))
    assert not np.array_equal(released, noisy_mean(PLAN, total, 3, rng("other")))


def test_the_noise_is_drawn_in_whole_vectors() -> None:
    counting = CountingRandomness(rng("count"))
    noisy_mean(PLAN, np.zeros(DIM), 5, counting)
    # The discrete Gaussian's rejection loop: a few passes over what is still pending.
    assert sum(counting.draws) >= 6 * DIM and len(counting.draws) <= 3 * 40


def test_clipping_is_distributed_dps_own() -> None:
    values = np.arange(1.0, 11.0)
    reference = DpEncoding(_Plan(2.0)).reference  # type: ignore[arg-type]
    assert np.array_equal(clip_to_l2(values, 2.0), reference(values))
    assert float(np.linalg.norm(clip_to_l2(values, 2.0))) == pytest.approx(2.0)
    short = np.array([0.1, -0.2])
    assert np.array_equal(clip_to_l2(short, 2.0), short)


class _Plan:
    """What DpEncoding.reference reads of a plan: the L2 clip."""

    def __init__(self, clip: float) -> None:
        self.config = type("Config", (), {"l2_clip": clip})()


def test_unusable_sums_and_counts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="NaN"):
        noisy_mean(PLAN, np.array([1.0, math.nan]), 2, rng("bad"))
    with pytest.raises(ConfigurationError, match="NaN"):
        clip_to_l2(np.array([math.inf]), 1.0)
    for included in (0, -1, True, 2.0):
        with pytest.raises(UsageError):
            noisy_mean(PLAN, np.zeros(4), included, rng("bad"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="too long"):
        noisy_mean(PLAN, np.full(4, 1e12), 2, rng("bad"))
    assert GRID_STD**2 <= 2.0**50  # within the sampler's variance cap

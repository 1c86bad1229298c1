"""Removable noise layers (docs/XNOISE.md X1-X3): what comes off at each certified count, and
the noise each client keeps."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.dp.layers import LAYER_PRECISION, NoiseLayers, layer_noise
from secagg.errors import ConfigurationError, UsageError

MU_TOTAL = 1.0e6


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[int, int]:
    honest_min = draw(st.integers(1, 20_000))
    honest_max = draw(st.integers(honest_min + 1, 3 * honest_min + 50))
    return honest_min, honest_max


@pytest.mark.parametrize(
    ("honest_min", "honest_max", "bits"),
    [(80, 100, 6), (670, 1_000, 7), (9_000, 10_000, 5), (1, 2, 8)],
)
def test_the_fewest_layers_whose_unit_is_within_the_precision(
    honest_min: int, honest_max: int, bits: int
) -> None:
    layers = NoiseLayers.for_cohort(honest_min, honest_max)
    assert layers.bits == bits
    assert layers.count == bits + 1
    least = layers.base(MU_TOTAL)
    assert layers.unit(MU_TOTAL) <= float(LAYER_PRECISION) * least * (1 + 1e-12)
    assert layers.unit(MU_TOTAL) * 2 > float(LAYER_PRECISION) * least


@given(cohorts())
def test_base_and_every_layer_are_todays_noise_for_the_minimum_cohort(
    cohort: tuple[int, int],
) -> None:
    layers = NoiseLayers.for_cohort(*cohort)
    total_units = sum(layers.units(j) for j in range(layers.count))
    assert total_units == 1 << layers.bits
    everything = layers.base(MU_TOTAL) + total_units * layers.unit(MU_TOTAL)
    assert everything == pytest.approx(MU_TOTAL / layers.honest_min, rel=1e-12)


@given(cohorts(), st.data())
def test_each_client_keeps_at_least_the_target_and_less_than_one_unit_more(
    cohort: tuple[int, int], data: st.DataObject
) -> None:
    layers = NoiseLayers.for_cohort(*cohort)
    honest = data.draw(st.integers(layers.honest_min, layers.honest_max))
    kept = layers.kept(MU_TOTAL, honest)
    target = MU_TOTAL / honest
    # Exact in rationals: the removed units never take the client below mu_total / honest.
    w = layers.units_removed(honest)
    unit = Fraction(1, layers.honest_min) - Fraction(1, layers.honest_max)
    kept_exact = Fraction(1, layers.honest_min) - w * unit / (1 << layers.bits)
    assert kept_exact >= Fraction(1, honest)
    assert kept_exact - Fraction(1, honest) < unit / (1 << layers.bits)
    assert kept >= target * (1 - 1e-12)
    assert kept <= target * (1 + float(LAYER_PRECISION)) * (1 + 1e-12)


@given(cohorts(), st.data())
def test_the_layers_removed_hold_exactly_the_units_removed(
    cohort: tuple[int, int], data: st.DataObject
) -> None:
    layers = NoiseLayers.for_cohort(*cohort)
    honest = data.draw(st.integers(layers.honest_min, layers.honest_max))
    removed = layers.removed(honest)
    assert list(removed) == sorted(set(removed))
    assert sum(layers.units(j) for j in removed) == layers.units_removed(honest)


def test_nothing_comes_off_at_the_minimum_and_everything_at_the_full_cohort() -> None:
    layers = NoiseLayers.for_cohort(80, 100)
    assert layers.removed(80) == ()
    assert layers.removed(100) == tuple(range(layers.count))
    assert layers.kept(MU_TOTAL, 100) == pytest.approx(MU_TOTAL / 100)
    # One more honest input than the minimum already takes something off.
    assert layers.units_removed(81) == 64 * 1 * 100 // (81 * 20)


def test_more_honest_inputs_never_keep_more_noise() -> None:
    layers = NoiseLayers.for_cohort(670, 1_000)
    removed = [layers.units_removed(h) for h in range(670, 1_001)]
    assert removed == sorted(removed)


@pytest.mark.parametrize("honest", [79, 101, 0, -1, 95.0, True])
def test_a_count_outside_the_cohort_removes_nothing_it_is_refused(honest: object) -> None:
    layers = NoiseLayers.for_cohort(80, 100)
    with pytest.raises(UsageError):
        layers.removed(honest)  # type: ignore[arg-type]


@pytest.mark.parametrize(("honest_min", "honest_max"), [(80, 80), (0, 10), (10, 5), (1.5, 3)])
def test_a_cohort_no_larger_than_its_minimum_has_no_layers(
    honest_min: object, honest_max: object
) -> None:
    with pytest.raises(ConfigurationError):
        NoiseLayers.for_cohort(honest_min, honest_max)  # type: ignore[arg-type]


def test_a_cohort_that_would_need_too_many_layers_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="raise the minimum cohort"):
        NoiseLayers.for_cohort(1, 1_000)


# Pinned vectors: the server regenerates a layer bit for bit from its seed, so the sampler
# must give these exact integers on every machine CI runs on (docs/XNOISE.md, reproducibility).
# Parameters span the Poisson sampler's inversion table (below 10) and PTRS (10 and above).
PINNED = {
    0.195: "7b4d7769820ed003a4d0ff996dedd7de65ca30d02fcb4e54671dcd431d3c3884",
    37.5: "8da699f7dc3a91df984194a943aec4a6f27f35d0475b5bf54dad71e6ddcb9aac",
    4_000.0: "dd580ff045bc2145a0987da29cedd8c984b710158fd981c074c04282200ace9c",
}


@pytest.mark.parametrize("parameter", sorted(PINNED))
def test_a_layer_is_the_same_integers_from_the_same_seed_on_every_machine(
    parameter: float,
) -> None:
    layers = NoiseLayers(honest_min=1, honest_max=2, bits=1)
    # units(0) = 1 and unit(mu) = mu / 4 here, so mu_total = 4 x parameter draws `parameter`.
    vector = layer_noise(layers, 0, 4 * parameter, bytes(range(32)), 10_000)
    digest = hashlib.sha256(vector.astype("<i8").tobytes()).hexdigest()
    assert digest == PINNED[parameter]
    assert np.array_equal(vector, layer_noise(layers, 0, 4 * parameter, bytes(range(32)), 10_000))


def test_a_layer_needs_its_own_full_seed() -> None:
    layers = NoiseLayers.for_cohort(80, 100)
    with pytest.raises(UsageError):
        layer_noise(layers, 0, MU_TOTAL, bytes(16), 10)
    with pytest.raises(UsageError):
        layer_noise(layers, layers.count, MU_TOTAL, bytes(32), 10)

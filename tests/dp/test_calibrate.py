from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest

from secagg.dp.accounting import continuous_gaussian_epsilon
from secagg.dp.calibrate import (
    DpConfig,
    DpPlan,
    achieved_epsilon,
    calibrate,
    epsilon_spent,
    wrap_probability_bound,
)
from secagg.dp.mechanism import Mechanism
from secagg.errors import ConfigurationError, UsageError
from tests.dp._stats import skellam_pmf

pytest.importorskip("dp_accounting")

BASE: dict[str, Any] = dict(
    dim=10_000, l2_clip=1.0, bits=20, min_clients=50, max_clients=80, delta=1e-5
)


def config(**overrides: Any) -> DpConfig:
    fields = {**BASE, **overrides}
    if "noise_multiplier" not in fields and "target_epsilon" not in fields:
        fields["target_epsilon"] = 4.0
    return DpConfig(**fields)


@pytest.fixture(scope="module", params=list(Mechanism))
def target_plan(request: pytest.FixtureRequest) -> DpPlan:
    return calibrate(config(target_epsilon=4.0, rounds=20, mechanism=request.param))


def test_calibration_hits_the_target_epsilon_from_below(target_plan: DpPlan) -> None:
    # The noise search stops within 1e-6 (relative) of the least noise meeting the target.
    assert 4.0 * (1 - 1e-4) <= target_plan.epsilon_total <= 4.0
    assert target_plan.epsilon_per_round < target_plan.epsilon_total


def test_the_plan_states_bounds_within_the_configuration(target_plan: DpPlan) -> None:
    c = target_plan.config
    assert target_plan.padded_dim == 16_384
    assert target_plan.ring_bits == 20
    assert 0 < target_plan.wrap_probability_bound <= c.max_wrap_probability
    assert 1.0 < target_plan.rounding_inflation <= c.max_rounding_inflation
    assert target_plan.rounding_bias_bound == 0.0  # beta = 0: unbiased rounding
    assert target_plan.noise_multiplier == pytest.approx(target_plan.central_noise_std)
    assert target_plan.central_noise_std_for(c.min_clients) == pytest.approx(
        target_plan.central_noise_std, rel=1e-12
    )


def test_the_scale_is_the_largest_whose_wrap_bound_holds() -> None:
    plan = calibrate(config(noise_multiplier=1.3))
    c = plan.config
    # With a noise multiplier, each client's Skellam variance grows as the scale squared.
    wider = 1.01
    bound = wrap_probability_bound(
        Mechanism.SKELLAM,
        scaled_clip=plan.scaled_clip * wider,
        local_noise=plan.local_noise * wider**2,
        clients=c.max_clients,
        padded_dim=plan.padded_dim,
        bits=c.bits,
    )
    assert plan.wrap_probability_bound <= c.max_wrap_probability < bound


def test_the_wrap_bound_is_above_the_exact_tail_of_the_skellam_noise() -> None:
    # One client with a negligible clip: the coordinate is the rounding (exactly 0 for a zero
    # input) plus Sk(mu); the Chernoff bound must cover the exact two-sided tail.
    mu = 300.0
    support, pmf = skellam_pmf(mu)
    for bits in (7, 8, 9):
        limit = 2 ** (bits - 1)
        exact = float(pmf[(support >= limit) | (support < -limit)].sum())
        bound = wrap_probability_bound(
            Mechanism.SKELLAM,
            scaled_clip=1e-9,
            local_noise=mu,
            clients=1,
            padded_dim=1,
            bits=bits,
        )
        assert exact <= bound <= 1.0
        # Not vacuous: within two orders of magnitude of the truth.
        assert bound < 100 * max(exact, 1e-300) or bound < 1e-30


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_more_included_inputs_mean_more_noise_and_less_privacy_loss(
    mechanism: Mechanism,
) -> None:
    plan = calibrate(config(noise_multiplier=0.9, mechanism=mechanism))
    c = plan.config
    assert achieved_epsilon(plan, c.min_clients) == pytest.approx(plan.epsilon_per_round)
    eps = [achieved_epsilon(plan, n) for n in (50, 60, 70, 80)]
    assert all(a > b for a, b in itertools.pairwise(eps))
    # The plan's figure covers every sum the round may reveal.
    assert max(eps) <= plan.epsilon_per_round * (1 + 1e-12)


def test_a_sum_below_min_clients_gets_no_epsilon() -> None:
    plan = calibrate(config(noise_multiplier=0.9))
    with pytest.raises(UsageError, match="min_clients"):
        achieved_epsilon(plan, 49)


def test_epsilon_spent_composes_the_rounds_actually_run() -> None:
    plan = calibrate(config(target_epsilon=4.0, rounds=20))
    at_minimum = epsilon_spent(plan, [50] * 20)
    assert at_minimum == pytest.approx(plan.epsilon_total, rel=1e-9)
    # Rounds that included more inputs spent less.
    assert epsilon_spent(plan, [50] * 10 + [80] * 10) < at_minimum
    assert epsilon_spent(plan, [50] * 5) < at_minimum
    assert epsilon_spent(plan, []) == 0.0


def test_client_sampling_buys_privacy() -> None:
    unsampled = calibrate(config(target_epsilon=4.0, rounds=200))
    sampled = calibrate(config(target_epsilon=4.0, rounds=200, sampling_rate=0.05))
    assert sampled.epsilon_total <= 4.0
    assert sampled.noise_multiplier < 0.5 * unsampled.noise_multiplier


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_at_large_scale_the_reported_epsilon_approaches_the_continuous_gaussians(
    mechanism: Mechanism,
) -> None:
    # 1,000 clients, 1,024 coordinates, a 32-bit ring: rounding inflates the sensitivity by
    # ~1e-6 and every client's noise is broad, so the discrete mechanisms behave like the
    # Gaussian with the same noise multiplier (computed by dp-accounting directly).
    fine = dict(dim=1000, bits=32, min_clients=1000, max_clients=1000, mechanism=mechanism)
    plan = calibrate(config(noise_multiplier=1.0, rounds=50, **fine))
    gaussian = continuous_gaussian_epsilon(1.0, 1e-5, 50)
    assert gaussian <= plan.epsilon_total <= 1.02 * gaussian
    # With a target epsilon, the noise it picks is within 2% of the Gaussian's for it.
    plan = calibrate(config(target_epsilon=3.0, rounds=50, **fine))
    assert continuous_gaussian_epsilon(plan.noise_multiplier, 1e-5, 50) == pytest.approx(
        3.0, rel=0.02
    )
    # Coarse quantisation is visibly worse: the comparison can tell the difference.
    coarse = dict(fine, bits=14, max_rounding_inflation=4.0)
    plan = calibrate(config(noise_multiplier=1.0, rounds=50, **coarse))
    assert plan.epsilon_total > 1.2 * gaussian


def test_a_ring_too_narrow_is_refused_naming_bits() -> None:
    with pytest.raises(ConfigurationError, match="raise bits"):
        calibrate(config(bits=8))


def test_too_little_privacy_budget_for_the_ring_is_refused_naming_bits_and_epsilon() -> None:
    with pytest.raises(ConfigurationError, match=r"raise bits.*raise target_epsilon"):
        calibrate(config(target_epsilon=0.05, rounds=1000, bits=16))


def test_noise_beyond_what_the_samplers_support_is_refused_naming_epsilon() -> None:
    with pytest.raises(ConfigurationError, match="raise target_epsilon"):
        calibrate(config(target_epsilon=1e-4, rounds=10_000, bits=32, min_clients=1))


def test_biased_conditional_rounding_is_refused_naming_beta() -> None:
    with pytest.raises(ConfigurationError, match="lower beta"):
        calibrate(config(beta=0.5, bits=12, max_rounding_bias=0.001, max_rounding_inflation=8.0))


def test_conditional_rounding_within_its_bias_bound_is_accepted_and_tightens_rounding() -> None:
    plain = calibrate(config(noise_multiplier=1.0, bits=16))
    conditional = calibrate(config(noise_multiplier=1.0, bits=16, beta=0.01))
    assert 0 < conditional.rounding_bias_bound <= 0.01 * conditional.config.l2_clip
    assert conditional.rounding_inflation < plain.rounding_inflation
    assert conditional.epsilon_per_round < plain.epsilon_per_round


@pytest.mark.parametrize(
    ("overrides", "knob"),
    [
        (dict(target_epsilon=None), "target_epsilon and noise_multiplier"),
        (dict(target_epsilon=1.0, noise_multiplier=1.0), "target_epsilon and noise_multiplier"),
        (dict(target_epsilon=-1.0), "target_epsilon"),
        (dict(noise_multiplier=float("nan"), target_epsilon=None), "noise_multiplier"),
        (dict(delta=0.0), "delta"),
        (dict(delta=1.0), "delta"),
        (dict(bits=1), "bits"),
        (dict(bits=33), "bits"),
        (dict(dim=0), "dim"),
        (dict(l2_clip=0.0), "l2_clip"),
        (dict(l2_clip=float("inf")), "l2_clip"),
        (dict(min_clients=0), "min_clients"),
        (dict(max_clients=10), "max_clients"),
        (dict(rounds=0), "rounds"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(sampling_rate=1.5), "sampling_rate"),
        (dict(beta=1.0), "beta"),
        (dict(max_wrap_probability=0.0), "max_wrap_probability"),
        (dict(max_rounding_bias=-1.0), "max_rounding_bias"),
        (dict(max_rounding_inflation=1.0), "max_rounding_inflation"),
        (dict(mechanism="laplace"), "laplace"),
        (dict(dim=True), "dim"),
    ],
)
def test_an_invalid_configuration_is_refused_naming_the_knob(
    overrides: dict[str, Any], knob: str
) -> None:
    fields = {**BASE, "target_epsilon": 4.0, **overrides}
    with pytest.raises(ConfigurationError, match=knob):
        DpConfig(**fields)


def test_the_mechanism_may_be_given_by_name_and_is_stored_as_the_enum() -> None:
    c = config(mechanism="discrete-gaussian")
    assert c.mechanism is Mechanism.DISCRETE_GAUSSIAN


def test_a_plan_is_frozen_and_checks_its_own_consistency() -> None:
    plan = calibrate(config(noise_multiplier=1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.scale = 2.0  # type: ignore[misc]
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.init}
    with pytest.raises(UsageError):
        DpPlan(**{**fields, "padded_dim": 1024})
    with pytest.raises(UsageError):
        DpPlan(**{**fields, "ring_bits": 16})
    with pytest.raises(UsageError):
        DpPlan(**{**fields, "scale": -1.0})
    with pytest.raises(UsageError):
        DpPlan(**{**fields, "local_noise": float(2**51)})
    rebuilt = DpPlan(**fields)
    assert rebuilt == plan
    assert np.isclose(rebuilt.rounded_l2_bound, plan.scaled_clip + 128.0)

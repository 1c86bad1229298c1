"""The central-DP baseline's noise multiplier: found by the distributed calibration's own
accountant, it spends the target epsilon (within EPSILON_TOLERANCE, never above), falls as
epsilon rises, and refuses what no multiplier can meet."""

from __future__ import annotations

import math
from typing import Any

import pytest

from secagg.dp.accounting import continuous_gaussian_epsilon
from secagg.dp.calibrate import DpConfig, calibrate, carried_noise_multiplier
from secagg.dp.central import (
    EPSILON_TOLERANCE,
    CentralPlan,
    central_epsilon,
    central_noise_multiplier,
    central_plan,
)
from secagg.errors import ConfigurationError, UsageError

pytest.importorskip("dp_accounting")

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@pytest.mark.parametrize(
    ("epsilon", "rounds", "sampling_rate"),
    [(1.0, 1, 1.0), (4.0, 10, 1.0), (8.0, 100, 1.0), (4.0, 10, 0.1), (0.01, 1, 1.0)],
)
def test_the_multiplier_found_spends_the_target_from_below_within_the_tolerance(
    epsilon: float, rounds: int, sampling_rate: float
) -> None:
    z = central_noise_multiplier(epsilon, delta=1e-5, rounds=rounds, sampling_rate=sampling_rate)
    spent = central_epsilon(z, delta=1e-5, rounds=rounds, sampling_rate=sampling_rate)
    assert epsilon * (1 - EPSILON_TOLERANCE) <= spent <= epsilon
    # A hair less noise would spend more than the target: z is the least that meets it.
    less = central_epsilon(z * (1 - 1e-6), delta=1e-5, rounds=rounds, sampling_rate=sampling_rate)
    assert less > epsilon


def test_without_sampling_the_accountant_agrees_with_dp_accountings_gaussian_event() -> None:
    # The same curve a / (2 z^2) that dp-accounting's RdpAccountant composes for its
    # GaussianDpEvent, over the same orders and the same conversion.
    for z, rounds in ((0.8, 1), (2.0, 10), (12.0, 1000)):
        ours = central_epsilon(z, delta=1e-5, rounds=rounds)
        assert ours == pytest.approx(continuous_gaussian_epsilon(z, 1e-5, rounds), rel=1e-12)


def test_with_sampling_it_uses_the_distributed_calibrations_bound_not_a_tighter_one() -> None:
    # Zhu-Wang's Theorem 5, as for Skellam and the discrete Gaussian: never below what
    # dp-accounting's tighter analysis of the sampled Gaussian gives, so the baseline is not
    # flattered by an accountant the distributed run does not get.
    z = 1.0
    ours = central_epsilon(z, delta=1e-5, rounds=10, sampling_rate=0.1)
    assert ours >= continuous_gaussian_epsilon(z, 1e-5, 10, 0.1)
    assert ours < central_epsilon(z, delta=1e-5, rounds=10)  # sampling still amplifies


def test_more_epsilon_needs_less_noise_and_more_rounds_more() -> None:
    multipliers = [central_noise_multiplier(e, delta=1e-5, rounds=10) for e in EPSILONS]
    assert multipliers == sorted(multipliers, reverse=True)
    assert len(set(multipliers)) == len(multipliers)  # strictly
    assert central_noise_multiplier(4.0, delta=1e-5, rounds=20) > multipliers[3]
    assert central_noise_multiplier(4.0, delta=1e-6, rounds=10) > multipliers[3]
    assert (
        central_noise_multiplier(4.0, delta=1e-5, rounds=10, sampling_rate=0.5) < (multipliers[3])
    )


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon"),
        ({"target_epsilon": math.nan}, "target_epsilon"),
        ({"target_epsilon": True}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        # Below what the orders show: epsilon drops from about 0.0035 straight to 0.
        ({"target_epsilon": 0.003}, "raise target_epsilon"),
        ({"target_epsilon": 1e-9}, "raise target_epsilon"),
    ],
)
def test_impossible_terms_are_a_configuration_error(arguments: dict[str, Any], match: str) -> None:
    terms: dict[str, Any] = {"target_epsilon": 4.0, "delta": 1e-5, "rounds": 1}
    terms |= arguments
    target = terms.pop("target_epsilon")
    with pytest.raises(ConfigurationError, match=match):
        central_noise_multiplier(target, **terms)


def test_central_epsilon_refuses_a_multiplier_that_is_not_positive() -> None:
    for z in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigurationError, match="noise multiplier"):
            central_epsilon(z, delta=1e-5)


# ----------------------------------------------------------------- beside a distributed plan

DISTRIBUTED: dict[str, Any] = dict(
    dim=1000, l2_clip=1.5, bits=20, min_clients=80, max_clients=100, delta=1e-5, rounds=10
)


def test_the_baseline_takes_the_distributed_plans_clip_rounds_delta_and_target() -> None:
    plan = calibrate(DpConfig(**DISTRIBUTED, target_epsilon=4.0))
    central = central_plan(plan)
    assert (central.l2_clip, central.delta, central.rounds, central.sampling_rate) == (
        1.5,
        1e-5,
        10,
        1.0,
    )
    assert 4.0 * (1 - EPSILON_TOLERANCE) <= central.epsilon_total <= 4.0
    assert central.epsilon_per_round < central.epsilon_total
    assert central.noise_std == pytest.approx(central.noise_multiplier * 1.5)
    # The distributed plan pays for randomised rounding in its sensitivity: at its minimum
    # cohort it carries at least the curator's noise, and more inputs carry more.
    assert plan.noise_multiplier >= central.noise_multiplier
    carried = carried_noise_multiplier(plan, 95)
    assert carried == pytest.approx(plan.noise_multiplier * math.sqrt(95 / 80), rel=1e-12)


def test_a_distributed_plan_given_a_multiplier_is_matched_at_the_epsilon_it_spends() -> None:
    plan = calibrate(DpConfig(**DISTRIBUTED, noise_multiplier=2.0))
    central = central_plan(plan)
    assert central.epsilon_total == pytest.approx(plan.epsilon_total, rel=EPSILON_TOLERANCE)
    assert central.epsilon_total <= plan.epsilon_total


def test_epsilon_spent_composes_the_rounds_run() -> None:
    central = central_plan(calibrate(DpConfig(**DISTRIBUTED, target_epsilon=8.0)))
    spent = [central.epsilon_spent(r) for r in range(11)]
    assert spent[0] == 0.0
    assert spent[1] == pytest.approx(central.epsilon_per_round, rel=1e-12)
    assert spent == sorted(spent) and spent[-1] == pytest.approx(central.epsilon_total)
    assert spent[10] < 10 * spent[1]  # RDP composition: ten rounds cost less than ten times one


def test_the_carried_multiplier_counts_the_inputs_actually_summed() -> None:
    plan = calibrate(DpConfig(**DISTRIBUTED, target_epsilon=4.0))
    assert carried_noise_multiplier(plan, 80) == pytest.approx(plan.noise_multiplier)
    for bad in (0, -1, True, 80.0):
        with pytest.raises(UsageError):
            carried_noise_multiplier(plan, bad)  # type: ignore[arg-type]


def test_a_central_plan_checks_its_fields() -> None:
    good: dict[str, Any] = dict(
        l2_clip=1.0,
        noise_multiplier=2.0,
        delta=1e-5,
        rounds=3,
        sampling_rate=1.0,
        epsilon_per_round=1.0,
        epsilon_total=2.0,
    )
    CentralPlan(**good)
    for name, value in (
        ("l2_clip", 0.0),
        ("noise_multiplier", math.nan),
        ("delta", 0.0),
        ("rounds", 0),
        ("sampling_rate", 2.0),
        ("epsilon_total", -1.0),
    ):
        with pytest.raises(ConfigurationError, match=name):
            CentralPlan(**{**good, name: value})

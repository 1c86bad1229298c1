"""Removable noise in a one-shot masking round (docs/XNOISE.md): whatever the dropout, the
revealed sum carries the noise its honest inputs need, within the layers' precision.

Every round here runs the real clients and server through the simulator with a fixed seed
(``DeterministicRandomness`` underneath), so every figure is reproducible bit for bit: the
variance bounds are checked on one fixed draw of 16,384 coordinates, whose relative standard
error is 1.1%, against a 5% margin (a failure is a bug, never bad luck).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg.dp.calibrate import DpConfig
from secagg.dp.layers import NoiseLayers
from secagg.errors import ClientAbort, ConfigurationError
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params, Protocol
from secagg.schemes.masking.removal import NoiseRemoval
from secagg.simulate import DropSchedule, simulate_round

CLIENTS = 12
MIN_COHORT = 9
DIM = 1 << 14  # a power of two: the rotation pads nothing


def params(*, layers: bool, adversarial_rate: float = 0.0) -> Params:
    dp = DpConfig(
        dim=DIM,
        l2_clip=1.0,
        bits=24,
        min_clients=MIN_COHORT,
        max_clients=CLIENTS,
        delta=1e-5,
        target_epsilon=4.0,
        noise_layers=layers,
    )
    return Params(
        dim=DIM,
        max_clients=CLIENTS,
        protocol=Protocol.SECAGG,
        adversarial_rate=adversarial_rate,
        dropout_rate=0.25,
        min_cohort=MIN_COHORT,
        dp=dp,
    )


def zeros(client_id: int) -> np.ndarray:
    del client_id
    return np.zeros(DIM)


def noise_of_round(p: Params, survivors: int) -> tuple[np.ndarray, int, object]:
    """The centred noise of a round in which ``survivors`` of the cohort send masked inputs
    (the rest drop just before): every input is zero, so the sum is noise alone (a zero
    update rotates and rounds to exactly zero)."""
    dropped = ",".join(str(i) for i in range(CLIENTS - survivors))
    drops = DropSchedule.parse([f"masked-input={dropped}"] if dropped else [])
    result = simulate_round(p, CLIENTS, zeros, drops=drops, seed=7, workers=0, baseline=False)
    assert result.report.outcome == "completed", result.report.abort_reason
    assert result.ring_total is not None and p.dp_plan is not None
    total = result.ring_total.astype(np.int64)
    modulus = 1 << p.dp_plan.ring_bits
    centred = total[:-1] & (modulus - 1)
    centred[centred >= modulus // 2] -= modulus
    return centred, int(total[-1]), result.report


@pytest.mark.parametrize("survivors", range(MIN_COHORT, CLIENTS + 1))
def test_every_survivor_count_gets_the_target_noise_and_the_exact_sum(survivors: int) -> None:
    """At every count from the minimum cohort to the whole cohort (A = 0 here, so every
    count is certified honest), the sum holds exactly ``survivors`` inputs and noise whose
    variance is the sum's target ``mu_total``: what removal keeps is at most 0.5% above it."""
    p = params(layers=True)
    plan = p.dp_plan
    assert plan is not None
    noise, count, report = noise_of_round(p, survivors)
    assert count == survivors  # the exact sum: every input is zero, each counts one
    removal = NoiseRemoval(plan, corrupt=0)
    expected = survivors * removal.kept(survivors)
    assert plan.mu_total <= expected <= plan.mu_total * 1.005
    assert float(np.var(noise)) == pytest.approx(expected, rel=0.05)
    assert abs(float(np.mean(noise))) < 5 * np.sqrt(expected / DIM)
    taken = report.noise_taken_off  # type: ignore[attr-defined]
    assert taken is not None
    assert (taken.count, taken.corrupt, taken.layers_left) == (survivors, 0, 0)
    assert taken.units == removal.units(survivors)
    # Accounted at the noise kept: the round spends its target, never more.
    assert report.epsilon == pytest.approx(plan.epsilon_per_round, rel=0.01)  # type: ignore[attr-defined]
    assert report.epsilon <= plan.epsilon_per_round * (1 + 1e-6)  # type: ignore[attr-defined]


def test_without_layers_a_full_cohort_carries_the_excess_removal_takes_off() -> None:
    """Today's calibration: each client carries mu_total / m, so twelve inputs over a minimum
    of nine carry 12/9 of the target; the layered round of the same cohort carries 1.00."""
    p = params(layers=False)
    plan = p.dp_plan
    assert plan is not None
    noise, _, report = noise_of_round(p, CLIENTS)
    assert float(np.var(noise)) == pytest.approx(plan.mu_total * CLIENTS / MIN_COHORT, rel=0.05)
    assert report.noise_taken_off is None  # type: ignore[attr-defined]


def test_a_count_below_the_minimum_plus_a_removes_nothing() -> None:
    """With A = 1 (adversarial rate 1/12) a sum of nine certified inputs vouches for eight
    honest ones, below the minimum cohort: no layer comes off and the round keeps today's
    noise (X2), stated as w = 0."""
    p = params(layers=True, adversarial_rate=1 / CLIENTS)
    plan = p.dp_plan
    assert plan is not None
    noise, _, report = noise_of_round(p, MIN_COHORT)
    taken = report.noise_taken_off  # type: ignore[attr-defined]
    assert (taken.count, taken.corrupt, taken.units) == (MIN_COHORT, 1, 0)
    assert float(np.var(noise)) == pytest.approx(plan.mu_total, rel=0.05)


def test_layers_are_skellam_only_and_need_a_cohort_above_its_minimum() -> None:
    with pytest.raises(ConfigurationError, match="skellam"):
        DpConfig(
            dim=4,
            l2_clip=1.0,
            bits=20,
            min_clients=9,
            max_clients=12,
            delta=1e-5,
            target_epsilon=4.0,
            mechanism="discrete-gaussian",  # type: ignore[arg-type]
            noise_layers=True,
        )
    with pytest.raises(ConfigurationError, match="max_clients above min_clients"):
        DpConfig(
            dim=4,
            l2_clip=1.0,
            bits=20,
            min_clients=12,
            max_clients=12,
            delta=1e-5,
            target_epsilon=4.0,
            noise_layers=True,
        )


@pytest.mark.parametrize(
    "layers",
    [None, NoiseLayers(MIN_COHORT, CLIENTS, 3), NoiseLayers.for_cohort(MIN_COHORT - 3, CLIENTS)],
    ids=["none", "coarser", "smaller-base"],
)
def test_the_policy_refuses_a_round_whose_layers_are_not_the_deployments(
    layers: NoiseLayers | None,
) -> None:
    """The layer structure is part of the DP block the client compares with its own (X3): a
    server can neither drop the layers nor choose another structure (a smaller base, or a
    larger removable part)."""
    scheme = MaskingScheme(params(layers=True))
    config = scheme.round_config(range(CLIENTS), nonce=bytes(16))
    scheme.check(config, 0)
    assert config.dp is not None
    forged = dataclasses.replace(config, dp=dataclasses.replace(config.dp, layers=layers))
    assert forged.config_id != config.config_id
    with pytest.raises(ClientAbort):
        scheme.check(forged, 0)

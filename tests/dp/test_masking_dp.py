"""Distributed DP inside masking rounds: every client adds its noise before masking, the
server decodes the noisy mean of exactly the included clients, and the guarantee it reports
holds for the sum actually revealed, down to the minimum cohort."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("dp_accounting")

from secagg.dp.calibrate import DpConfig
from secagg.errors import AbortReason, ClientAbort, ConfigurationError
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.policy import ClientPolicy
from secagg.simulate import DropSchedule, random_inputs, simulate_round

N, DIM, MIN = 30, 200, 20


def _params(**dp_changes: object) -> Params:
    fields: dict[str, object] = {
        "dim": DIM,
        "l2_clip": 1.0,
        "bits": 20,
        "min_clients": MIN,
        "max_clients": N,
        "delta": 1e-5,
        "target_epsilon": 4.0,
    }
    fields.update(dp_changes)
    return Params(dim=DIM, max_clients=N, min_cohort=MIN, dp=DpConfig(**fields))  # type: ignore[arg-type]


def _inputs(i: int) -> np.ndarray:
    x = random_inputs(DIM, 7)(i).astype(np.float64)
    return (x / np.linalg.norm(x) * (2.0 if i % 3 == 0 else 0.5)).astype(np.float32)


def test_a_dp_round_reveals_the_noisy_mean_of_the_clipped_updates_within_its_bound() -> None:
    params = _params()
    report = simulate_round(params, N, _inputs, seed=4).report
    assert report.outcome == "completed", report.abort_reason
    assert report.max_abs_error is not None and report.max_abs_error <= report.error_bound
    # Every third update has norm 2 and is clipped to 1: counted per client.
    assert report.clipped_values == len([i for i in range(N) if i % 3 == 0])
    assert report.epsilon is not None and report.epsilon <= 4.0
    assert report.facts.dp is not None and report.facts.dp.mechanism == "skellam"


def test_the_noise_of_the_revealed_mean_has_the_planned_variance() -> None:
    """Identical zero updates: what is revealed is the noise alone."""
    params = _params(noise_multiplier=2.0, target_epsilon=None)
    plan = params.dp_plan
    assert plan is not None
    zeros = np.zeros(DIM, dtype=np.float32)
    samples = [
        simulate_round(params, N, lambda i: zeros, seed=s, baseline=False).aggregate
        for s in range(6)
    ]
    noise = np.concatenate([np.asarray(s) for s in samples])
    expected = plan.central_noise_std_for(N) / N
    # 1,200 samples: the sample std is within 10% of the true one with overwhelming odds
    # (its relative std is about 1/sqrt(2 x 1200) = 2%); rounding adds a little on top.
    assert 0.9 * expected < float(np.std(noise)) < 1.15 * expected


def test_clients_dropping_down_to_the_minimum_cohort_still_meet_the_target() -> None:
    params = _params()
    leaving = frozenset(range(N - MIN))  # ten clients drop, at different stages
    drops = DropSchedule(
        {
            "advertise": frozenset(c for c in leaving if c % 3 == 0),
            "share": frozenset(c for c in leaving if c % 3 == 1),
            "masked-input": frozenset(c for c in leaving if c % 3 == 2),
        }
    )
    report = simulate_round(params, N, _inputs, drops=drops, seed=2).report
    assert report.outcome == "completed", report.abort_reason
    assert len(report.included) == MIN
    assert report.epsilon is not None and report.epsilon <= 4.0 + 1e-9
    full = simulate_round(params, N, _inputs, seed=2).report
    assert full.epsilon is not None and full.epsilon < report.epsilon  # more noise, less epsilon


def test_no_sum_below_the_minimum_cohort_is_revealed() -> None:
    params = _params()
    drops = DropSchedule({"masked-input": frozenset(range(N - MIN + 1))})
    result = simulate_round(params, N, _inputs, drops=drops, seed=3)
    assert result.report.outcome == "aborted"
    assert result.aggregate is None


def test_active_mode_and_the_discrete_gaussian_work_the_same_way() -> None:
    base = _params(mechanism="discrete-gaussian")
    params = dataclasses.replace(
        base, server_model=ServerModel.SEMI_MALICIOUS, protocol=Protocol.SECAGG
    )
    report = simulate_round(params, N, _inputs, seed=5).report
    assert report.outcome == "completed", report.abort_reason
    assert report.max_abs_error is not None and report.max_abs_error <= report.error_bound
    assert report.facts.dp is not None and report.facts.dp.mechanism == "discrete-gaussian"


def test_a_client_refuses_less_noise_than_its_deployment_or_no_noise_at_all() -> None:
    params = _params()
    policy = ClientPolicy(params, frozenset(range(N)))
    config = params.round_config(range(N), nonce=bytes(16))
    policy.check(config, 0)
    assert config.dp is not None
    for weaker in (
        dataclasses.replace(
            config, dp=dataclasses.replace(config.dp, local_noise=config.dp.local_noise / 4)
        ),
        dataclasses.replace(config, dp=dataclasses.replace(config.dp, scale=config.dp.scale * 4)),
        # No noise at all (with a quantiser the 20-bit ring can hold, so the config is sound).
        dataclasses.replace(config, dp=None, value_bits=4),
    ):
        with pytest.raises(ClientAbort) as caught:
            policy.check(weaker, 0)
        assert caught.value.reason is AbortReason.DOWNGRADE
    # And a client without DP refuses a DP round (it was not set up for one).
    plain = Params(dim=DIM, max_clients=N, min_cohort=MIN)
    with pytest.raises(ClientAbort) as caught:
        ClientPolicy(plain, frozenset(range(N))).check(
            dataclasses.replace(config, ring_bits=plain.ring_bits), 0
        )
    assert caught.value.reason is AbortReason.PARAMETER_MISMATCH


def test_dp_parameters_must_agree_with_the_deployment_and_name_the_knob() -> None:
    with pytest.raises(ConfigurationError, match="min_cohort"):
        Params(
            dim=DIM,
            max_clients=N,
            min_cohort=5,
            dp=DpConfig(
                dim=DIM,
                l2_clip=1.0,
                bits=20,
                min_clients=MIN,
                max_clients=N,
                delta=1e-5,
                target_epsilon=4.0,
            ),
        )
    with pytest.raises(ConfigurationError, match="max_weight"):
        dataclasses.replace(_params(), max_weight=3)


def test_a_weight_other_than_one_is_refused_before_anything_is_masked() -> None:
    from secagg.errors import InputError
    from secagg.hazmat.randomness import SystemRandomness
    from secagg.schemes.masking import MaskingScheme

    params = _params()
    config = params.round_config(range(N), nonce=bytes(16))
    client = MaskingScheme(params).client(config, 0, SystemRandomness())
    with pytest.raises(InputError, match="weighs 1"):
        client.set_input(np.zeros(DIM), 0)  # in range, but DP counts every input once
    with pytest.raises(InputError):
        client.set_input(np.zeros(DIM), 2)  # max_weight is 1 under DP

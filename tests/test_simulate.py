"""The in-process simulator: exact results over the included clients, honest reports."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import secure_mean
from secagg.errors import ConfigurationError
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.schemes.masking.parameters import Params, Protocol
from secagg.simulate import (
    SEMI_HONEST_STAGES,
    DropSchedule,
    integer_weights,
    random_inputs,
    simulate_round,
)


def test_random_dropout_at_every_stage_still_gives_the_mean_of_the_included() -> None:
    params = Params(dim=50, max_clients=40)
    drops = DropSchedule(
        {
            "commit": frozenset({5}),
            "reveal": frozenset({6}),
            "advertise": frozenset({1}),
            "share": frozenset({2}),
            "masked-input": frozenset({3}),
            "unmask": frozenset({4}),
        }
    )
    inputs = random_inputs(50, seed=5)
    result = simulate_round(params, 40, inputs, drops=drops, seed=5)
    report = result.report
    assert report.outcome == "completed"
    assert set(report.included) == set(range(40)) - {1, 2, 3, 5, 6}
    assert {s: list(ids) for s, ids in report.dropped.items()} == {
        "commit": [5],
        "reveal": [6],
        "advertise": [1],
        "share": [2],
        "masked-input": [3],
        "unmask": [4],
    }
    # Client 6 committed but never revealed: everyone else committed a second time.
    assert report.session_attempts == 2
    assert report.max_abs_error is not None
    assert report.max_abs_error <= report.error_bound
    exact = np.mean([inputs(i).astype(np.float64) for i in report.included], axis=0)
    assert result.aggregate is not None
    np.testing.assert_allclose(result.aggregate, exact, atol=report.error_bound)


def test_same_seed_gives_the_same_round() -> None:
    params = Params(dim=20, max_clients=10)
    a = simulate_round(params, 10, random_inputs(20, 1), seed=9)
    b = simulate_round(params, 10, random_inputs(20, 1), seed=9)
    assert a.ring_total is not None and b.ring_total is not None
    np.testing.assert_array_equal(a.ring_total, b.ring_total)


def test_weighted_mean_with_integer_weights() -> None:
    rows = np.linspace(-0.9, 0.9, 5 * 8, dtype=np.float32).reshape(5, 8)
    weights = np.array([1, 2, 3, 4, 5], dtype=np.float64)
    result = secure_mean(rows, weights, seed=1)
    exact = weights @ rows.astype(np.float64) / weights.sum()
    assert result.aggregate is not None
    np.testing.assert_allclose(result.aggregate, exact, atol=result.report.error_bound)


def test_fractional_weights_are_rounded_and_the_bound_accounts_for_it() -> None:
    rows = np.linspace(-0.5, 0.5, 4 * 3, dtype=np.float32).reshape(4, 3)
    weights = np.array([0.1, 0.25, 1.7, 3.3])
    result = secure_mean(rows, weights, seed=2)
    exact = weights @ rows.astype(np.float64) / weights.sum()
    assert result.aggregate is not None
    assert np.max(np.abs(result.aggregate - exact)) <= result.report.error_bound


def test_clipped_values_are_counted() -> None:
    rows = np.array([[0.5, 3.0], [-2.0, 0.1], [0.0, 0.0]], dtype=np.float32)
    result = secure_mean(rows, seed=3)
    assert result.report.clipped_values == 2


def test_upload_is_below_plaintext_float32_at_sixteen_bits() -> None:
    params = Params(dim=20_000, max_clients=50)
    report = simulate_round(params, 50, random_inputs(20_000, 3), seed=3).report
    assert report.upload_bytes_per_client < report.plaintext_bytes_per_client
    assert report.plaintext_bytes_per_client == 80_000


def test_round_that_cannot_finish_reports_an_abort_and_no_aggregate() -> None:
    params = Params(dim=5, max_clients=6, protocol=Protocol.SECAGG, threshold=4)
    drops = DropSchedule({"masked-input": frozenset({0, 1, 2})})
    result = simulate_round(params, 6, random_inputs(5, 1), drops=drops, seed=1)
    assert result.report.outcome == "aborted"
    assert result.aggregate is None and result.ring_total is None
    assert result.report.max_abs_error is None
    assert "masked-input" in (result.report.abort_reason or "")


def test_drop_schedule_parses_stage_lists() -> None:
    schedule = DropSchedule.parse(["share=1,2", "unmask=3", "share=4"])
    assert schedule.at == {"share": frozenset({1, 2, 4}), "unmask": frozenset({3})}


@pytest.mark.parametrize("spec", ["nowhere=1", "share", "share=a"])
def test_drop_schedule_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        DropSchedule.parse([spec])


def test_drop_schedule_rejects_one_client_at_two_stages() -> None:
    with pytest.raises(ConfigurationError, match="two stages"):
        DropSchedule.parse(["share=1", "unmask=1"])


def test_random_drop_schedule_drops_the_requested_fraction_across_stages() -> None:
    schedule = DropSchedule.random(1000, 0.1, DeterministicRandomness(b"s" * 32))
    dropped = [i for ids in schedule.at.values() for i in ids]
    assert len(dropped) == len(set(dropped)) == 100
    assert set(schedule.at) == set(SEMI_HONEST_STAGES)


def test_integer_weights_keep_integers_and_scale_fractions() -> None:
    assert integer_weights(np.array([1.0, 5.0, 2.0]), 3) == ([1, 5, 2], 5)
    ints, top = integer_weights(np.array([0.5, 1.0, 0.25]), 3)
    assert top == 1024 and ints == [512, 1024, 256]
    with pytest.raises(ConfigurationError):
        integer_weights(np.array([0.0, 0.0, 0.0]), 3)
    with pytest.raises(ConfigurationError):
        integer_weights(np.array([1.0, -1.0, 1.0]), 3)


def test_worker_processes_change_nothing_the_round_computes() -> None:
    params = Params(dim=300, max_clients=12)
    drops = DropSchedule.parse(["share=3", "unmask=7"])
    one = simulate_round(params, 12, random_inputs(300, 4), drops=drops, seed=4, workers=1)
    two = simulate_round(params, 12, random_inputs(300, 4), drops=drops, seed=4, workers=2)
    assert one.ring_total is not None and two.ring_total is not None
    np.testing.assert_array_equal(one.ring_total, two.ring_total)
    assert one.report.included == two.report.included
    assert one.report.upload_bytes_per_client == two.report.upload_bytes_per_client


def test_a_bad_input_in_a_worker_process_surfaces_as_a_configuration_error() -> None:
    params = Params(dim=3, max_clients=6)
    with pytest.raises(ConfigurationError, match="shape"):
        simulate_round(params, 6, lambda i: np.zeros(4), seed=1, workers=2)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_unmasking_on_every_core_gives_the_same_sum_as_on_one(start_method: str) -> None:
    from secagg.hazmat import prg
    from secagg.parallel import MaskApplier

    keys = [(bytes([i]) * 16, i % 3 == 0) for i in range(21)]
    serial = np.arange(1_000_003, dtype=np.uint32)
    parallel = serial.copy()
    prg.apply_masks(serial, keys)
    MaskApplier(workers=2, start_method=start_method)(parallel, keys)
    np.testing.assert_array_equal(serial, parallel)

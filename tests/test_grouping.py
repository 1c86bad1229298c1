"""Grouped rounds: disjoint groups each aggregate securely; only their sums are combined."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigurationError
from secagg.grouping import assign_groups, simulate_grouped
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.schemes.masking.parameters import Params
from secagg.schemes.plaintext import PlaintextScheme
from secagg.simulate import DropSchedule, random_inputs, root_randomness

N = 60
DIM = 40


def exact_weighted_mean(
    included: tuple[int, ...], weights: np.ndarray, seed: int, dim: int = DIM
) -> np.ndarray:
    inputs = random_inputs(dim, seed)
    rows = np.array([inputs(i).astype(np.float64) for i in included])
    w = weights[list(included)]
    return np.asarray(w @ rows / w.sum())


def test_groups_are_disjoint_cover_the_cohort_differ_by_at_most_one_and_follow_the_seed() -> None:
    groups = assign_groups(103, 4, DeterministicRandomness(b"grouping test seed"))
    assert sorted(i for g in groups for i in g) == list(range(103))
    assert {len(g) for g in groups} <= {25, 26}
    assert all(list(g) == sorted(g) for g in groups)
    assert groups == assign_groups(103, 4, DeterministicRandomness(b"grouping test seed"))
    assert groups != assign_groups(103, 4, DeterministicRandomness(b"another test seed!"))
    assert groups[0] != tuple(range(26))  # random, not blocks of consecutive ids


def test_the_sum_of_the_group_sums_gives_the_weighted_mean_of_exactly_the_included() -> None:
    weights = np.arange(1, N + 1, dtype=np.float64) % 5 + 1
    params = Params(dim=DIM, max_clients=N, max_weight=5)
    drops = DropSchedule(
        {
            "commit": frozenset({3}),
            "advertise": frozenset({10, 11}),
            "masked-input": frozenset({20}),
            "unmask": frozenset({30}),
        }
    )
    result = simulate_grouped(
        params, N, random_inputs(DIM, 4), groups=3, weights=weights, drops=drops, seed=4
    )
    report = result.report
    assert report.outcome == "completed"
    assert len(report.groups) == 3
    # Who failed before masking is out; a client that failed at unmasking is in its group's sum.
    assert set(report.included) == set(range(N)) - {3, 10, 11, 20}
    assert result.aggregate is not None and result.weighted_sum is not None
    # The top level adds sums (not means) and divides once by the total weight.
    np.testing.assert_array_equal(
        result.weighted_sum, np.sum(list(result.group_sums.values()), axis=0)
    )
    total_weight = sum(g.total_weight for g in report.groups)
    assert total_weight == weights[list(report.included)].sum()
    exact = exact_weighted_mean(report.included, weights, 4)
    assert report.max_abs_error is not None
    assert report.max_abs_error <= report.error_bound
    np.testing.assert_allclose(result.aggregate, exact, rtol=0, atol=report.error_bound)
    # Each group's sum, divided by its weight, is its own included clients' mean.
    for group in report.groups:
        mean = result.group_sums[group.index] / group.total_weight
        np.testing.assert_allclose(
            mean, exact_weighted_mean(group.included, weights, 4), rtol=0, atol=report.error_bound
        )


def test_every_group_sum_is_over_at_least_the_minimum_cohort_and_a_group_below_it_aborts() -> None:
    params = Params(dim=DIM, max_clients=N, min_cohort=16)
    members = assign_groups(N, 3, root_randomness(8, "groups"))
    # Five of group 1's twenty clients fail before masking: 15 inputs, below the minimum 16.
    doomed = members[1][:5]
    drops = DropSchedule({"masked-input": frozenset(doomed)})
    result = simulate_grouped(params, N, random_inputs(DIM, 8), groups=3, drops=drops, seed=8)
    report = result.report
    assert report.outcome == "partial"
    assert [g.index for g in report.aborted_groups] == [1]
    assert report.groups[1].round.abort_reason is not None
    assert "16" in report.groups[1].round.abort_reason
    assert 1 not in result.group_sums  # an aborted group contributes nothing
    for group in report.completed_groups:
        assert len(group.included) >= params.min_cohort
    assert set(report.included) == set(members[0]) | set(members[2])
    assert (
        report.top_level_learns
        == "2 group sums (the smallest over 20 inputs) instead of one sum over 40"
    )
    assert result.aggregate is not None
    exact = exact_weighted_mean(report.included, np.ones(N), 8)
    np.testing.assert_allclose(result.aggregate, exact, rtol=0, atol=report.error_bound)
    assert report.to_json()["groups_aborted"] == [1]


def test_when_every_group_aborts_nothing_is_revealed() -> None:
    params = Params(dim=DIM, max_clients=30, min_cohort=14)
    drops = DropSchedule({"masked-input": frozenset(range(0, 30, 2))})  # half of everyone
    result = simulate_grouped(params, 30, random_inputs(DIM, 2), groups=2, drops=drops, seed=2)
    assert result.report.outcome == "aborted"
    assert result.aggregate is None and result.weighted_sum is None
    assert result.group_sums == {}
    assert result.report.top_level_learns == "nothing: every group aborted"


def test_more_groups_than_the_minimum_cohort_allows_are_refused_naming_the_limit() -> None:
    params = Params(dim=DIM, max_clients=N, min_cohort=25)
    with pytest.raises(ConfigurationError, match="use at most 2 groups"):
        simulate_grouped(params, N, random_inputs(DIM, 1), groups=3, seed=1)


def test_a_scheme_factory_runs_one_scheme_per_group_and_fractional_weights_are_bounded() -> None:
    weights = np.linspace(0.1, 3.0, N)
    result = simulate_grouped(
        lambda size: PlaintextScheme(dim=DIM, max_weight=1024),
        N,
        random_inputs(DIM, 6),
        groups=4,
        weights=weights,
        seed=6,
    )
    report = result.report
    assert report.outcome == "completed"
    assert [len(g.members) for g in report.groups] == [15, 15, 15, 15]
    assert all(g.round.scheme == "plaintext" for g in report.groups)
    assert report.max_abs_error is not None
    assert report.max_abs_error <= report.error_bound
    assert report.error_bound > 0  # the weights' rounding is in the bound


def test_the_same_seed_gives_the_same_grouped_round() -> None:
    params = Params(dim=DIM, max_clients=30)
    a = simulate_grouped(params, 30, random_inputs(DIM, 3), groups=2, seed=3)
    b = simulate_grouped(params, 30, random_inputs(DIM, 3), groups=2, seed=3)
    assert a.aggregate is not None and b.aggregate is not None
    assert a.aggregate.tobytes() == b.aggregate.tobytes()
    assert [g.members for g in a.report.groups] == [g.members for g in b.report.groups]
    json = a.report.to_json()
    assert json["groups"] == 2 and len(json["per_group"]) == 2
    assert json["parallel_seconds"] <= json["seconds"]


def test_without_a_seed_a_clients_input_reads_the_same_every_time() -> None:
    """The grouped round and the check of its aggregate read each input separately: without
    a seed they must still read the same values (they once read two different draws)."""
    source = random_inputs(50, None)
    assert all(np.array_equal(source(i), source(i)) for i in range(5))
    assert not np.array_equal(random_inputs(50, None)(0), source(0))  # fresh for each run


def test_simulate_with_groups_and_no_seed_checks_the_aggregate_it_computed() -> None:
    from typer.testing import CliRunner

    from secagg.cli import app

    result = CliRunner().invoke(
        app, ["simulate", "--clients", "120", "--dim", "50", "--dropout", "0.05", "--groups", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "4 groups of 30 clients (120 in all)" in " ".join(result.output.split())

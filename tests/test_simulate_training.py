"""Secure FedAvg over the simulator: a session over a fixed cohort, one-shot rounds over a
changing one, and every client training from the model the last round made."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.errors import ConfigurationError
from secagg.schemes.masking.parameters import Params
from secagg.simulate.rounds import RoundKind
from secagg.simulate.training import SecureRound, fixed_cohort, secure_fedavg
from secagg.updates import UpdateFn

DIM = 6
CLIENTS = 6


def clients(
    seen: dict[tuple[int, int], NDArray[np.float32]],
) -> tuple[dict[int, UpdateFn], dict[int, int]]:
    """Each client's update: a small step that depends on the model it is given (so a
    client that trained from a stale model would move the run elsewhere)."""

    def update_of(c: int) -> UpdateFn:
        def update(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
            seen[(step, c)] = model.copy()
            target = np.linspace(-0.5, 0.5, DIM) + 0.05 * c
            return (0.5 * (target - model)).astype(np.float32), c + 1

        return update

    return {c: update_of(c) for c in range(CLIENTS)}, {c: c + 1 for c in range(CLIENTS)}


def params() -> Params:
    return Params(dim=DIM, max_clients=CLIENTS, max_weight=CLIENTS, protocol="secagg")  # type: ignore[arg-type]


def check(
    training_rounds: tuple[SecureRound, ...],
    seen: dict[tuple[int, int], NDArray[np.float32]],
    start: NDArray[np.float32],
) -> None:
    """Every client of round r trained from the model round r - 1 made, and each round's
    mean is within its bound of the exact weighted mean of its included updates."""
    model = start
    for r in training_rounds:
        report = r.round.report
        for c in report.included:
            np.testing.assert_array_equal(seen[(r.round.number - 1, c)], model)
        assert report.max_abs_error is not None
        assert report.max_abs_error <= report.error_bound
        model = r.model


def test_a_fixed_cohort_trains_as_one_session() -> None:
    seen: dict[tuple[int, int], NDArray[np.float32]] = {}
    updates, weights = clients(seen)
    start = np.zeros(DIM, dtype=np.float32)
    heard: list[int] = []
    training = secure_fedavg(
        updates,
        weights,
        start,
        params(),
        rounds=4,
        seed=1,
        on_round=lambda r: heard.append(r.round.number),
    )
    assert training.kind == "session"
    assert heard == [1, 2, 3, 4]
    assert [r.round.kind for r in training.rounds] == [
        RoundKind.SETUP_AND_ROUND,
        *[RoundKind.SESSION] * 3,
    ]
    assert len(training.setups) == 1
    check(training.rounds, seen, start)
    # The model moved toward the clients' weighted target.
    assert np.linalg.norm(training.model - start) > 0.1


def test_a_changing_cohort_trains_with_one_shot_rounds() -> None:
    seen: dict[tuple[int, int], NDArray[np.float32]] = {}
    updates, weights = clients(seen)
    start = np.zeros(DIM, dtype=np.float32)

    def include(r: int, c: int) -> bool:
        return c != r  # client r sits round r out

    assert fixed_cohort(include, CLIENTS, 3) is None
    training = secure_fedavg(updates, weights, start, params(), rounds=3, include=include, seed=2)
    assert training.kind == "one-shot" and not training.setups
    for index, r in enumerate(training.rounds):
        assert r.round.kind is RoundKind.ONE_SHOT
        # The round's own cohort, renumbered: its members are every client but ``index``.
        assert len(r.round.report.included) == CLIENTS - 1
        assert (index, index) not in seen
    assert fixed_cohort(lambda r, c: c < 4, CLIENTS, 3) == (0, 1, 2, 3)


def test_a_fixed_subset_trains_as_a_session_over_just_that_subset() -> None:
    seen: dict[tuple[int, int], NDArray[np.float32]] = {}
    updates, weights = clients(seen)
    training = secure_fedavg(
        updates,
        weights,
        np.zeros(DIM, dtype=np.float32),
        params(),
        rounds=2,
        include=lambda r, c: c >= 2,
        seed=3,
    )
    assert training.kind == "session"
    assert {c for (_, c) in seen} == {2, 3, 4, 5}


def test_a_client_whose_weight_changes_is_refused() -> None:
    updates, weights = clients({})
    weights[0] = 7
    with pytest.raises(ConfigurationError, match="weight"):
        secure_fedavg(updates, weights, np.zeros(DIM, dtype=np.float32), params(), rounds=1)

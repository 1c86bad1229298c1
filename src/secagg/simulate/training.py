"""FedAvg with secure aggregation, in process: the training loop over the simulator.

Each round, every client that takes part trains from the global model (its ``UpdateFn``)
and the global model moves by the weighted mean a simulated secure round reveals
(``secagg.simulate.rounds``: every message encoded and decoded, each round's mean checked
against the exact mean of the clients it included). Which kind of round runs follows the
cohort: where the same clients take part every round, the rounds run as one session (set up
once, then two messages a round; a new set-up when the session cannot go on or a round
aborted); where the cohort changes from round to round, each round is a one-shot round over
that round's clients. An aborted round leaves the model as it is.

The clients run in this process: each computes its update only when its round's task reaches
it, from the model the previous round produced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError
from secagg.fl.fedavg import apply_update
from secagg.schemes.masking.parameters import Params
from secagg.simulate import integer_weights, simulate_round
from secagg.simulate.rounds import (
    SETUP_STAGES,
    DropPlan,
    RoundKind,
    RunRound,
    SetupReport,
    round_stages,
    simulate_rounds,
)
from secagg.updates import UpdateFn

__all__ = ["SecureRound", "SecureTraining", "fixed_cohort", "secure_fedavg"]


@dataclass(frozen=True)
class SecureRound:
    """One training round: the secure round that ran (its kind, report and, for a
    set-up+round, its set-up's) and the global model after it."""

    round: RunRound
    model: NDArray[np.float32] = field(repr=False)


@dataclass(frozen=True)
class SecureTraining:
    """A training run: ``kind`` is "session" (a fixed cohort) or "one-shot" (a changing
    one), ``rounds`` one per training round, ``setups`` every session set-up that ran."""

    kind: str
    rounds: tuple[SecureRound, ...]
    setups: tuple[SetupReport, ...]

    @property
    def model(self) -> NDArray[np.float32]:
        return self.rounds[-1].model


def fixed_cohort(
    include: Callable[[int, int], bool] | None, clients: int, rounds: int
) -> tuple[int, ...] | None:
    """The clients that take part in every round if that is the same set each round (None:
    it changes)."""
    if include is None:
        return tuple(range(clients))
    first = tuple(c for c in range(clients) if include(0, c))
    for r in range(1, rounds):
        if tuple(c for c in range(clients) if include(r, c)) != first:
            return None
    return first


def secure_fedavg(
    updates: Mapping[int, UpdateFn],
    weights: Mapping[int, int],
    model: NDArray[np.float32],
    params: Params,
    *,
    rounds: int,
    include: Callable[[int, int], bool] | None = None,
    drops: DropPlan | None = None,
    seed: int | None = None,
    on_round: Callable[[SecureRound], None] | None = None,
) -> SecureTraining:
    """``rounds`` rounds of FedAvg from ``model`` over clients 0..n-1 (``updates[c]`` trains
    client c; ``weights[c]`` is the weight it reports every round, e.g. its examples), each
    round's mean from a secure round under ``params``. ``include(r, c)`` says whether client
    c takes part in round r (default: all, every round): a fixed cohort runs as a session,
    a changing one as one-shot rounds. ``drops`` is who falls silent where (its ids are
    positions in the round's cohort); ``on_round`` hears each round as it ends."""
    n = len(updates)
    if sorted(updates) != list(range(n)) or sorted(weights) != list(range(n)):
        raise ConfigurationError("updates and weights are for clients 0..n-1")
    if rounds < 1:
        raise ConfigurationError("training needs at least one round")
    models: dict[int, NDArray[np.float32]] = {0: np.asarray(model, dtype=np.float32)}
    played: list[SecureRound] = []

    def trained(index: int, client: int) -> NDArray[np.floating]:
        values, weight = updates[client](models[index], index)
        if weight != weights[client]:
            raise ConfigurationError(
                f"client {client} reported weight {weight} in round {index + 1}; its weight "
                f"is {weights[client]} every round"
            )
        return values

    def advance(index: int, run_round: RunRound, mean: NDArray[np.float64] | None) -> None:
        current = models.pop(index)
        nxt = current if mean is None else apply_update(current, mean)
        models[index + 1] = nxt
        secure = SecureRound(run_round, nxt)
        played.append(secure)
        if on_round is not None:
            on_round(secure)

    cohort = fixed_cohort(include, n, rounds)
    if cohort is not None:
        ids = list(cohort)
        weight_vector = _weights([weights[c] for c in ids])

        def inputs(index: int, position: int) -> NDArray[np.floating]:
            return trained(index, ids[position])

        result = simulate_rounds(
            params,
            len(ids),
            inputs,
            rounds,
            weights=weight_vector,
            drops=drops,
            seed=seed,
            baseline=False,
            workers=1,  # the clients read the model the last round made, in this process
            on_round=lambda r, mean: advance(r.number - 1, r, mean),
        )
        return SecureTraining("session", tuple(played), result.report.setups)
    assert include is not None
    stages = (*SETUP_STAGES, *round_stages(params.active))
    plan = drops or DropPlan()
    for index in range(rounds):
        ids = [c for c in range(n) if include(index, c)]
        schedule = plan.schedule(index + 1, stages, len(ids))

        def source(position: int, index: int = index, ids: list[int] = ids) -> NDArray[np.floating]:
            return trained(index, ids[position])

        one = simulate_round(
            params,
            len(ids),
            source,
            weights=_weights([weights[c] for c in ids]),
            drops=schedule,
            seed=None if seed is None else seed + index,
            baseline=False,
            workers=1,
        )
        report = one.report
        stages_run = float(len(report.stage_seconds))
        run_round = RunRound(
            index + 1, RoundKind.ONE_SHOT, None, None, report, stages_run, stages_run
        )
        advance(index, run_round, one.aggregate)
    return SecureTraining("one-shot", tuple(played), ())


def _weights(values: list[int]) -> NDArray[np.floating] | None:
    """The weight vector the simulator takes (None: every client weighs 1)."""
    if all(w == 1 for w in values):
        return None
    integer_weights(np.asarray(values, dtype=np.float64), len(values))  # its checks
    return np.asarray(values, dtype=np.float64)

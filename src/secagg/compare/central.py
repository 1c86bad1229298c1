"""The comparison's ``central-dp`` row: what a trusted curator would release from the same
updates the ``secagg+-dp`` row summed.

The same clients (those the distributed round included), each update clipped to the same L2
clip, averaged exactly, with Gaussian noise added once to the sum (``secagg.dp.central``,
``secagg.dp.central_noise``): the noise multiplier spends the distributed plan's target epsilon
over its rounds, by the same accountant. What it costs is measured as what it is: a plaintext
round of those clipped updates to the curator (who sees every one of them), plus the noise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan
from secagg.dp.central import central_plan
from secagg.dp.central_noise import central_grid, clip_to_l2, noisy_mean
from secagg.errors import UsageError
from secagg.schemes.base import DpFacts, SchemeFacts
from secagg.schemes.plaintext import PlaintextScheme
from secagg.simulate import InputSource, RoundReport, root_randomness, simulate_round

__all__ = ["CENTRAL_DISCLOSURE", "CentralRound", "central_round"]

# What the row's columns say: the curator sees each clipped update; the guarantee is the
# released mean's, against everyone but the curator.
CENTRAL_DISCLOSURE = (
    "everything (a trusted curator adds the noise)",
    "the server alone",
    "any dropout",
)


@dataclass(frozen=True)
class CentralRound:
    """The row's round: its report (costs, error against the exact mean of the clipped
    updates, the round's epsilon), the noise multiplier the released sum carries and the
    curator's z before the grid widened it."""

    report: RoundReport
    noise_multiplier: float
    planned_noise_multiplier: float


def central_round(
    plan: DpPlan,
    inputs: InputSource,
    clients: int,
    included: Sequence[int],
    *,
    seed: int | None,
    workers: int | None,
) -> CentralRound:
    """The central baseline over the ``included`` of ``clients`` clients' updates
    (``inputs(i)``), beside the distributed ``plan``."""
    if not included:
        raise UsageError("the central baseline needs at least one update")
    central = central_plan(plan)
    clip = central.l2_clip
    dim = plan.config.dim
    ids = tuple(included)

    def clipped(i: int) -> NDArray[np.float64]:
        return clip_to_l2(inputs(ids[i]), clip)

    # The curator's cost: a plaintext round in which each client sends its clipped update.
    upload = simulate_round(
        PlaintextScheme(dim=dim, max_weight=1),
        len(ids),
        lambda i: clipped(i).astype(np.float32),
        seed=seed,
        workers=workers,
        baseline=False,
    ).report
    # The mechanism runs on the float64 clipped updates: the float32 upload's rounding could
    # lengthen one a hair past the clip the sensitivity counts on.
    total = np.zeros(dim, dtype=np.float64)
    was_clipped = 0
    for client in ids:
        update = np.asarray(inputs(client), dtype=np.float64)
        was_clipped += int(float(np.linalg.norm(update)) > clip)
        total += clip_to_l2(update, clip)
    started = time.perf_counter()
    grid = central_grid(central, dim)
    released = noisy_mean(central, total, len(ids), root_randomness(seed, "compare/central-dp"))
    noise_seconds = time.perf_counter() - started
    exact = total / len(ids)
    facts = SchemeFacts(
        protocol="central-dp",
        title="central DP: the Gaussian mechanism on the exact mean",
        clip=clip,
        min_cohort=plan.config.min_clients,
        dp=DpFacts(
            mechanism="gaussian (central)",
            epsilon_target=central.epsilon_total,
            delta=central.delta,
            l2_clip=clip,
            noise_multiplier=central.noise_multiplier,
            wrap_probability_bound=0.0,
        ),
    )
    report = dataclasses.replace(
        upload,
        clients=clients,
        included=ids,
        facts=facts,
        clipped_values=was_clipped,
        clip_rate=was_clipped / len(ids),
        server_seconds=upload.server_seconds + noise_seconds,
        max_abs_error=float(np.max(np.abs(released - exact))),
        error_bound=grid.error_bound(len(ids)),
        epsilon=central.epsilon_per_round,
    )
    return CentralRound(report, grid.noise_multiplier, central.noise_multiplier)

"""A cohort larger than one coordinator can hold, split into groups that each aggregate
securely, with only the groups' sums combined above them.

This is how production federated learning grows past one server (Bonawitz et al., "Towards
Federated Learning at Scale: System Design", SysML 2019): the cohort is partitioned into
groups; each group runs its own complete secure-aggregation round (in production, on its own
aggregator), which reveals only the weighted *sum* of that group's inputs; a top-level
aggregator adds those sums and divides by the total weight once, at the end.

The trade-off this makes measurable: each group is a round over n/G clients (cheaper per
client and per coordinator: the commit-reveal broadcast and the server's state shrink with
the group, and groups run side by side), but the top level learns G sums instead of one, each
over at least the minimum cohort and no more anonymous than that. A group that aborts (too many
of its clients dropped) contributes nothing, and the others complete without it.

The simulator runs the groups one after another through :func:`secagg.simulate.simulate_round`
(any backend); :class:`GroupedReport` gives each group's cost, and the time a deployment with
one aggregator per group would take (the slowest group).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.backends import Backend
from secagg.errors import ConfigurationError
from secagg.hazmat.randomness import Randomness
from secagg.protocol.runner import RoundOutcome
from secagg.schemes.base import Scheme, SchemeSettings
from secagg.schemes.masking.parameters import Params
from secagg.simulate import (
    WEIGHT_LEVELS,
    DropSchedule,
    InputSource,
    RoundReport,
    exact_mean,
    integer_weights,
    root_randomness,
    simulate_round,
)

__all__ = ["GroupReport", "GroupedReport", "GroupedResult", "assign_groups", "simulate_grouped"]

SchemeFactory = Callable[[int], Scheme]  # the scheme for a group of that many clients


@dataclass(frozen=True)
class GroupReport:
    """One group's round: who was in it, what it revealed and what it cost."""

    index: int
    members: tuple[int, ...]  # cohort-wide client ids, sorted
    round: RoundReport = field(repr=False)  # in the group's own ids 0..len(members)-1
    included: tuple[int, ...]  # cohort-wide ids of the inputs in the group's sum
    total_weight: float  # of the included inputs, in the weights the round used

    @property
    def completed(self) -> bool:
        return self.round.outcome is RoundOutcome.COMPLETED

    def to_json(self) -> dict[str, Any]:
        r = self.round
        return {
            "group": self.index,
            "clients": len(self.members),
            "outcome": r.outcome,
            "abort_reason": r.abort_reason,
            "inputs_in_sum": len(self.included),
            "total_weight": self.total_weight,
            "degree": r.degree,
            "threshold": r.threshold,
            "threshold_margin": r.threshold_margin,
            "epsilon": r.epsilon,  # distributed DP: each group's sum is noised on its own
            "dropped": sum(len(ids) for ids in r.dropped.values()),
            "seconds": r.seconds,
            "server_seconds": r.server_seconds,
            "client_seconds": r.client_seconds,
            "upload_bytes_per_client": r.upload_bytes_per_client,
            "download_bytes_per_client": r.download_bytes_per_client,
        }


@dataclass(frozen=True)
class GroupedReport:
    """A grouped round: every group's report, and what the top level learned."""

    clients: int
    dim: int
    groups: tuple[GroupReport, ...]
    min_cohort: int  # every revealed group sum is over at least this many inputs
    max_abs_error: float | None  # against the weighted mean of every included input
    error_bound: float

    @property
    def completed_groups(self) -> tuple[GroupReport, ...]:
        return tuple(g for g in self.groups if g.completed)

    @property
    def aborted_groups(self) -> tuple[GroupReport, ...]:
        return tuple(g for g in self.groups if not g.completed)

    @property
    def outcome(self) -> str:
        """ "completed" (every group), "partial" (some groups aborted) or "aborted" (all)."""
        done = len(self.completed_groups)
        if done == len(self.groups):
            return "completed"
        return "partial" if done else "aborted"

    @property
    def included(self) -> tuple[int, ...]:
        return tuple(sorted(i for g in self.completed_groups for i in g.included))

    @property
    def top_level_learns(self) -> str:
        sums = self.completed_groups
        if not sums:
            return "nothing: every group aborted"
        smallest = min(len(g.included) for g in sums)
        if len(sums) == 1:
            return f"one sum over {smallest} inputs"
        return (
            f"{len(sums)} group sums (the smallest over {smallest} inputs) instead of one sum "
            f"over {len(self.included)}"
        )

    @property
    def seconds(self) -> float:
        """Every group's round, one after another (as simulated here)."""
        return sum(g.round.seconds for g in self.groups)

    @property
    def parallel_seconds(self) -> float:
        """With one aggregator per group, side by side: the slowest group."""
        return max(g.round.seconds for g in self.groups)

    def to_json(self) -> dict[str, Any]:
        sums = self.completed_groups
        return {
            "outcome": self.outcome,
            "clients": self.clients,
            "dim": self.dim,
            "groups": len(self.groups),
            "groups_completed": len(sums),
            "groups_aborted": [g.index for g in self.aborted_groups],
            "inputs_in_sum": len(self.included),
            "min_cohort": self.min_cohort,
            "smallest_group_sum": min((len(g.included) for g in sums), default=None),
            "top_level_learns": self.top_level_learns,
            "seconds": self.seconds,
            "parallel_seconds": self.parallel_seconds,
            "max_abs_error": self.max_abs_error,
            "error_bound": self.error_bound,
            "per_group": [g.to_json() for g in self.groups],
        }


@dataclass(frozen=True)
class GroupedResult:
    report: GroupedReport
    aggregate: NDArray[np.float64] | None = field(repr=False)  # the weighted mean, if any
    weighted_sum: NDArray[np.float64] | None = field(repr=False)  # the sum of the group sums
    group_sums: Mapping[int, NDArray[np.float64]] = field(repr=False)  # what the top level saw


def assign_groups(n: int, groups: int, rng: Randomness) -> tuple[tuple[int, ...], ...]:
    """``groups`` disjoint groups covering clients 0..n-1, drawn at random from ``rng``:
    sizes differ by at most one; each group's ids are sorted."""
    if groups < 1:
        raise ConfigurationError(f"groups must be at least 1, got {groups}")
    if groups > n:
        raise ConfigurationError(f"{groups} groups for {n} clients: use at most {n} groups")
    # Sorting by 64-bit random keys is an unbiased shuffle up to negligible collisions.
    keys = rng.words(2 * n).view(np.uint64)
    order = np.argsort(keys, kind="stable")
    bounds = np.linspace(0, n, groups + 1).astype(int)
    return tuple(
        tuple(sorted(int(i) for i in order[lo:hi]))
        for lo, hi in itertools.pairwise(bounds.tolist())
    )


def simulate_grouped(
    scheme: SchemeFactory | Params,
    n: int,
    inputs: InputSource,
    *,
    groups: int,
    weights: NDArray[np.floating] | None = None,
    drops: DropSchedule | None = None,
    seed: int | None = None,
    workers: int | None = None,
    backend: Backend | str = Backend.PROCESS,
) -> GroupedResult:
    """Split ``n`` clients into ``groups`` random groups, run a secure round in each, and
    combine the groups' revealed weighted sums.

    ``scheme`` is masking ``Params`` (each group runs it with ``max_clients`` set to its
    largest group, as a deployment sizes its ring for the cohorts it serves) or a factory
    giving the scheme for a group of a given size. ``inputs``, ``weights`` and ``drops``
    are in cohort-wide ids. The groups, each group's seed and so the whole result follow
    from ``seed``. Each group's sum is over at least the minimum cohort (``Params.min_cohort``;
    a scheme's ``min_cohort``), which every group's server enforces: a group left with fewer
    inputs aborts and contributes nothing.
    """
    drops = drops or DropSchedule()
    drops.check_ids(n)
    members = assign_groups(n, groups, root_randomness(seed, "groups"))
    int_weights, max_weight = integer_weights(weights, n)
    schemes = [_group_scheme(scheme, len(ids), max_weight) for ids in members]
    min_cohort, dim = schemes[0].min_cohort, schemes[0].dim
    reference = _reference(schemes[0])
    smallest = min(len(ids) for ids in members)
    if smallest < max(3, min_cohort):
        raise ConfigurationError(
            f"{groups} groups of {n} clients leave groups of {smallest}, fewer than "
            f"{max(3, min_cohort)} (a round needs 3 clients and the minimum cohort is "
            f"{min_cohort}): use at most {n // max(3, min_cohort)} groups"
        )
    # One integer weight per client, fixed for the whole cohort (above), so every group's sum
    # is in the same units and the sums can be added (rounding fractional weights per group
    # would scale each group differently).
    exact_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    fractional = weights is not None and not np.all(exact_weights == np.round(exact_weights))
    reports: list[GroupReport] = []
    group_sums: dict[int, NDArray[np.float64]] = {}
    for index, (ids, chosen) in enumerate(zip(members, schemes, strict=True)):
        report, group_sum = _run_group(
            chosen, index, ids, inputs, int_weights, drops, seed, workers, backend
        )
        reports.append(report)
        if group_sum is not None:
            group_sums[index] = group_sum
    done = [r for r in reports if r.completed]
    weighted_sum: NDArray[np.float64] | None = None
    aggregate: NDArray[np.float64] | None = None
    if done:
        weighted_sum = np.sum([group_sums[r.index] for r in done], axis=0)
        aggregate = weighted_sum / sum(r.total_weight for r in done)
    # Every group's decoding errs by at most its bound per coordinate; the mean of sums
    # weighted by their total weights errs by at most the largest.
    bound = max((r.round.error_bound for r in done), default=0.0)
    error: float | None = None
    if aggregate is not None:
        included = [i for r in done for i in r.included]
        exact, largest_input = exact_mean(inputs, included, exact_weights, dim, reference)
        error = float(np.max(np.abs(aggregate - exact)))
        if fractional:
            # The rounding of the weights (once, cohort-wide) moves the mean too: as in
            # simulate_round, by at most 2 * (the largest value) / WEIGHT_LEVELS.
            bound += 2 * largest_input / WEIGHT_LEVELS
    grouped = GroupedReport(
        clients=n,
        dim=dim,
        groups=tuple(reports),
        min_cohort=min_cohort,
        max_abs_error=error,
        error_bound=bound,
    )
    return GroupedResult(grouped, aggregate, weighted_sum, group_sums)


def _run_group(
    chosen: Scheme | Params,
    index: int,
    ids: tuple[int, ...],
    inputs: InputSource,
    int_weights: Sequence[int],
    drops: DropSchedule,
    seed: int | None,
    workers: int | None,
    backend: Backend | str,
) -> tuple[GroupReport, NDArray[np.float64] | None]:
    """One group's round, in the group's own ids 0..m-1; its report and revealed sum."""
    m = len(ids)
    local_drops = DropSchedule(
        {
            stage: frozenset(j for j, i in enumerate(ids) if i in dropped)
            for stage, dropped in drops.at.items()
            if any(i in dropped for i in ids)
        }
    )
    group_weights = np.array([int_weights[i] for i in ids], dtype=np.float64)

    def group_input(j: int) -> NDArray[np.floating]:
        return inputs(ids[j])

    result = simulate_round(
        chosen,
        m,
        group_input,
        weights=group_weights,
        drops=local_drops,
        seed=_group_seed(seed, index),
        workers=workers,
        baseline=False,
        backend=backend,
    )
    included = tuple(ids[j] for j in result.report.included)
    total_weight = float(sum(int_weights[i] for i in included))
    report = GroupReport(index, ids, result.report, included, total_weight)
    if result.aggregate is None:
        return report, None
    # What the group's server revealed is the weighted sum (the ring total, whose last
    # coordinate is the total weight); the mean is that sum divided by the weight.
    return report, result.aggregate * total_weight


def _group_scheme(scheme: SchemeFactory | Params, size: int, max_weight: int) -> Scheme | Params:
    """A group's scheme: the factory's, or the params sized for a cohort of ``size``."""
    if callable(scheme):
        return scheme(size)
    if max_weight > scheme.max_weight:
        raise ConfigurationError(
            f"weights need max_weight >= {max_weight}; params allow {scheme.max_weight}"
        )
    return dataclasses.replace(scheme, max_clients=max(size, scheme.min_cohort, 3))


def _group_seed(seed: int | None, index: int) -> int | None:
    """Each group's own seed, from the cohort's (groups draw independent randomness)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"secagg/grouped/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _reference(scheme: Scheme | Params) -> Callable[[NDArray[np.floating]], NDArray[np.float64]]:
    """An update as the groups' scheme clips it: the aggregate is the mean of these."""
    if isinstance(scheme, SchemeSettings):
        # The scheme simulate_round builds from these settings (no clients: its encoding).
        return scheme.simulated((), root_randomness(None, "reference")).reference
    return scheme.reference

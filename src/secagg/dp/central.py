"""The central-DP baseline's accounting: the Gaussian mechanism's noise multiplier for a target
epsilon, found by the same accountant that calibrates distributed DP.

Distributed DP is measured against what a trusted curator would do with the same updates: take
the exact mean of the updates clipped to the same L2 clip and add Gaussian noise of std
``z x l2_clip`` to their sum once per round (``secagg.dp.central_noise`` adds it). This
module finds z so that the curator's run spends exactly the target epsilon, on the same terms
as the distributed calibration (``secagg.dp.calibrate``): the same neighbouring relation (one
client's update added or removed, so the sensitivity is the clip), the same integer RDP
orders (``accounting.ORDERS``), the same Poisson subsampling bound at the same rate (Zhu and
Wang's Theorem 5, ``accounting.poisson_subsampled_rdp``), composition over the same number of
rounds, and the same conversion to (epsilon, delta) at the same delta (dp-accounting's
``compute_epsilon``). Without sampling the curve, ``a / (2 z^2)``, is the one dp-accounting's
own ``GaussianDpEvent`` gives, so the figure agrees with ``RdpAccountant`` to rounding.

The comparison is then like for like: the distributed run is calibrated for its *minimum*
cohort and so spends less than its target whenever more inputs are summed, and it pays for
randomised rounding in its sensitivity; the curator spends exactly the target. The gap
between the two runs' accuracy is what distributing the trust costs.

Needs dp-accounting (the ``secagg[dp]`` extra), like every epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from secagg.checks import is_int, is_number
from secagg.dp import accounting
from secagg.dp.calibrate import DpPlan
from secagg.errors import ConfigurationError

__all__ = [
    "EPSILON_TOLERANCE",
    "CentralPlan",
    "central_epsilon",
    "central_noise_multiplier",
    "central_plan",
]

# The search stops when the bracket on z is this narrow (relative); epsilon then lands within
# EPSILON_TOLERANCE (relative) below the target, never above it.
_Z_TOLERANCE = 1e-8
EPSILON_TOLERANCE = 1e-6
# The largest multiplier searched: at 1e6 the curve a / (2 z^2) is below 1e-9 at every order,
# so a target it cannot meet is one the orders cannot show (see central_noise_multiplier).
_MAX_Z = 1e6


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def _check_terms(delta: float, rounds: int, sampling_rate: float) -> None:
    _require(is_number(delta) and 0.0 < delta < 1.0, "delta must be in (0, 1)")
    _require(is_int(rounds) and rounds >= 1, "rounds must be a positive integer")
    _require(
        is_number(sampling_rate) and 0.0 < sampling_rate <= 1.0,
        "sampling_rate must be in (0, 1]",
    )


def _round_rdp(noise_multiplier: float, sampling_rate: float) -> NDArray[np.float64]:
    """One round's RDP curve over ``accounting.ORDERS``."""

    def gaussian(alphas: NDArray[np.float64]) -> NDArray[np.float64]:
        curve: NDArray[np.float64] = alphas / (2.0 * noise_multiplier**2)
        return curve

    return accounting.poisson_subsampled_rdp(gaussian, sampling_rate)


def central_epsilon(
    noise_multiplier: float, *, delta: float, rounds: int = 1, sampling_rate: float = 1.0
) -> float:
    """Epsilon at ``delta`` of ``rounds`` rounds of the Gaussian mechanism with std
    ``noise_multiplier x clip`` on a sum whose add/remove sensitivity is the clip, each
    round Poisson-sampling clients at ``sampling_rate``."""
    _require(
        is_number(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier > 0,
        "the noise multiplier must be finite and positive",
    )
    _check_terms(delta, rounds, sampling_rate)
    return accounting.epsilon_from_rdp(_round_rdp(noise_multiplier, sampling_rate) * rounds, delta)


def central_noise_multiplier(
    target_epsilon: float, *, delta: float, rounds: int = 1, sampling_rate: float = 1.0
) -> float:
    """The least noise multiplier z (to a relative 1e-8) whose ``rounds`` rounds spend at
    most ``target_epsilon`` at ``delta``: epsilon then lies in
    ``[target x (1 - EPSILON_TOLERANCE), target]``.

    Epsilon falls as z grows, so this is a bisection. A ConfigurationError refuses a target
    that no z meets within that tolerance: one below what the accountant's orders can show
    (about 0.0035 at delta 1e-5: past it, epsilon drops straight to 0 once one order's RDP
    is below delta^2, where delta alone covers the run).
    """
    _require(
        is_number(target_epsilon) and math.isfinite(target_epsilon) and target_epsilon > 0,
        "target_epsilon must be finite and positive",
    )
    _check_terms(delta, rounds, sampling_rate)

    def too_little(z: float) -> bool:
        return central_epsilon(z, delta=delta, rounds=rounds, sampling_rate=sampling_rate) > (
            target_epsilon
        )

    def refuse(floor: float) -> ConfigurationError:
        return ConfigurationError(
            f"no noise multiplier spends epsilon {target_epsilon:g} at delta {delta:g} over "
            f"{rounds} round(s): the accountant's orders show no epsilon between 0 and "
            f"{floor:.2g}; raise target_epsilon"
        )

    if too_little(_MAX_Z):
        raise refuse(
            central_epsilon(_MAX_Z, delta=delta, rounds=rounds, sampling_rate=sampling_rate)
        )
    lo, hi = 1.0, 1.0
    while too_little(hi):
        lo, hi = hi, hi * 2.0
    while not too_little(lo):
        lo, hi = lo / 2.0, lo
    while hi / lo > 1.0 + _Z_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if too_little(mid):
            lo = mid
        else:
            hi = mid
    spent = central_epsilon(hi, delta=delta, rounds=rounds, sampling_rate=sampling_rate)
    if spent < target_epsilon * (1.0 - EPSILON_TOLERANCE):
        # Epsilon jumped past the target (to 0) instead of reaching it.
        raise refuse(central_epsilon(lo, delta=delta, rounds=rounds, sampling_rate=sampling_rate))
    return hi


@dataclass(frozen=True)
class CentralPlan:
    """The central-DP baseline beside a distributed plan: the same ``l2_clip``, ``delta``,
    ``rounds`` and ``sampling_rate``, and the noise multiplier ``noise_multiplier`` that
    spends ``epsilon_total`` (the distributed target, or the distributed plan's own epsilon
    when it was given a noise multiplier) over the rounds; ``epsilon_per_round`` is one
    round's. Every field is checked: a plan is only made by ``central_plan``, or restated
    from one."""

    l2_clip: float
    noise_multiplier: float
    delta: float
    rounds: int
    sampling_rate: float
    epsilon_per_round: float
    epsilon_total: float

    def __post_init__(self) -> None:
        for name in ("l2_clip", "noise_multiplier", "epsilon_per_round", "epsilon_total"):
            value = getattr(self, name)
            _require(
                is_number(value) and math.isfinite(value) and value > 0,
                f"{name} must be finite and positive, got {value!r}",
            )
        _check_terms(self.delta, self.rounds, self.sampling_rate)

    @property
    def noise_std(self) -> float:
        """The std of the noise on the revealed sum, in the updates' units (before any grid
        the noise is drawn on widens it: ``secagg.dp.central_noise``)."""
        return self.noise_multiplier * self.l2_clip

    def epsilon_spent(self, rounds: int) -> float:
        """Epsilon (at ``delta``) of the first ``rounds`` rounds run (0 for none)."""
        if rounds == 0:
            return 0.0
        return central_epsilon(
            self.noise_multiplier,
            delta=self.delta,
            rounds=rounds,
            sampling_rate=self.sampling_rate,
        )


def central_plan(plan: DpPlan) -> CentralPlan:
    """The central-DP baseline for a distributed ``plan``: its clip, delta, rounds and
    sampling rate, and the noise multiplier that spends its target epsilon exactly (where the
    plan was given a noise multiplier instead, the epsilon it is calibrated to spend)."""
    c = plan.config
    target = plan.epsilon_total if c.target_epsilon is None else c.target_epsilon
    z = central_noise_multiplier(
        target, delta=c.delta, rounds=c.rounds, sampling_rate=c.sampling_rate
    )
    return CentralPlan(
        l2_clip=c.l2_clip,
        noise_multiplier=z,
        delta=c.delta,
        rounds=c.rounds,
        sampling_rate=c.sampling_rate,
        epsilon_per_round=central_epsilon(
            z, delta=c.delta, rounds=1, sampling_rate=c.sampling_rate
        ),
        epsilon_total=central_epsilon(
            z, delta=c.delta, rounds=c.rounds, sampling_rate=c.sampling_rate
        ),
    )

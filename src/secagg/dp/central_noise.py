"""The central-DP baseline's mechanism: a trusted curator's noisy mean of the clipped updates,
its Gaussian noise drawn from cryptographic randomness.

The curator clips each update to the L2 clip (:func:`clip_to_l2`, as distributed DP's
``encode`` does, before its rotation, which keeps the norm), sums them exactly, and releases
the sum plus noise of std ``z x clip`` (``secagg.dp.central.CentralPlan``), divided by the
number of updates (:func:`noisy_mean`).

**Why not numpy's Gaussian.** Anything secret comes from a :class:`Randomness` (AES-CTR), and
DP noise is secret: whoever can predict it subtracts it. So the noise is the project's
discrete Gaussian (``secagg.dp.noise.discrete_gaussian``, exact up to the floating-point
caveat its module states) on a fine grid of step ``g``: the sum is rounded to the grid, then
an integer N_Z(0, S^2) with ``S = GRID_STD`` grid steps is added to each coordinate.

**Why the sum is rounded first.** Lattice noise added to a value off the lattice would reveal
that value's position between grid points, exactly; so is a continuous Gaussian in floating
point (Mironov, 2012). Rounding the sum to the grid (round to nearest) moves each coordinate by
at most g/2, so two neighbouring sums, rounded, differ by at most ``clip + g sqrt(d)`` in L2.
The discrete Gaussian has the continuous one's RDP for integer queries (Canonne, Kamath and
Steinke, 2020: ``a Delta^2 / (2 sigma^2)``), so noise of std ``z (clip + g sqrt(d))`` spends
exactly what the accountant charged for z; the grid is chosen so that ``S g`` is that std,
which makes the carried multiplier ``z S / (S - z sqrt(d))``, within ``MAX_GRID_INFLATION``
of z (0.1% at d = 100,000 and z = 50). The released value is an integer times g: no
floating-point gap is left to read.

**What floating point still costs.** The clipping and the sum are computed in float64, whose
rounding (relative ~ n 2^-53 per coordinate) is not in the sensitivity bound; and the
sampler's own caveat (outcomes below ~2^-50 probability not represented faithfully) holds.
Both are far below delta, as for distributed DP, and neither is in the accounting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.dp.central import CentralPlan
from secagg.dp.noise import discrete_gaussian
from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import Randomness

__all__ = [
    "GRID_STD",
    "MAX_GRID_INFLATION",
    "CentralGrid",
    "central_grid",
    "clip_to_l2",
    "noisy_mean",
]

# The noise's std in grid steps: its variance, 2^48, is within the sampler's 2^50.
GRID_STD = float(2**24)
# The most the grid may widen the noise (the carried multiplier over z) before it is refused.
MAX_GRID_INFLATION = 1.01
# Grid coordinates are held in float64 and int64: exact below 2^53, with a bit to spare.
_MAX_GRID_COORDINATE = float(2**52)
# The error bound is exceeded, per round, with at most this probability (a union bound over
# the coordinates), as distributed DP's is.
_ERROR_TAIL = 1e-9


@dataclass(frozen=True)
class CentralGrid:
    """The grid the central noise is drawn on for ``dim`` values: ``step`` (g, in the
    updates' units) and the noise multiplier the released sum actually carries (its noise
    std over the clip: ``GRID_STD x step / clip``, a little above the plan's z)."""

    dim: int
    step: float
    noise_multiplier: float

    @property
    def noise_std(self) -> float:
        """The std of the noise on the released sum, in the updates' units."""
        return GRID_STD * self.step

    def error_bound(self, included: int) -> float:
        """|released mean - exact mean of the clipped updates| per coordinate, exceeded with
        probability below 1e-9: the discrete Gaussian is sub-Gaussian with its parameter
        (Canonne-Kamath-Steinke), and rounding to the grid adds at most half a step."""
        tail = math.sqrt(2.0 * math.log(2.0 * self.dim / _ERROR_TAIL))
        return (tail * self.noise_std + self.step / 2.0) / included


def central_grid(plan: CentralPlan, dim: int) -> CentralGrid:
    """The grid for ``dim`` values: the step g with ``GRID_STD x g = z (clip + g sqrt(dim))``
    (the noise's std covers the rounded sum's sensitivity). A ConfigurationError refuses a
    dimension so large against the grid that the noise would widen by more than
    ``MAX_GRID_INFLATION``."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise UsageError(f"dim must be a positive int, got {dim!r}")
    z = plan.noise_multiplier
    spread = z * math.sqrt(dim)
    inflation = GRID_STD / (GRID_STD - spread) if spread < GRID_STD else math.inf
    if inflation > MAX_GRID_INFLATION:
        raise ConfigurationError(
            f"the central baseline's grid cannot hold noise multiplier {z:.3g} over {dim} "
            f"values: it would widen the noise by more than {MAX_GRID_INFLATION - 1:.0%}"
        )
    step = z * plan.l2_clip / (GRID_STD - spread)
    return CentralGrid(dim=dim, step=step, noise_multiplier=z * inflation)


def clip_to_l2(values: NDArray[np.floating[Any]], l2_clip: float) -> NDArray[np.float64]:
    """``values`` (float64) scaled down to L2 norm ``l2_clip`` if longer: the clip distributed
    DP applies (``secagg.dp.encoding.DpEncoding.reference``)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ConfigurationError("input contains NaN or infinity")
    norm = float(np.linalg.norm(x))
    return x * (l2_clip / norm) if norm > l2_clip else x.copy()


def noisy_mean(
    plan: CentralPlan,
    clipped_sum: NDArray[np.floating[Any]],
    included: int,
    rng: Randomness,
) -> NDArray[np.float64]:
    """The released mean of ``included`` updates whose clipped sum is ``clipped_sum``: the
    sum rounded to the grid, plus discrete Gaussian noise drawn from ``rng``, over
    ``included``. ``rng`` is a ``SystemRandomness`` for anything real; a seeded one makes a
    benchmark reproducible, and its noise predictable to whoever holds the seed."""
    total = np.asarray(clipped_sum, dtype=np.float64).reshape(-1)
    if isinstance(included, bool) or not isinstance(included, int) or included < 1:
        raise UsageError(f"included must be a positive int, got {included!r}")
    if not np.isfinite(total).all():
        raise ConfigurationError("the clipped sum contains NaN or infinity")
    grid = central_grid(plan, len(total))
    if float(np.max(np.abs(total), initial=0.0)) / grid.step >= _MAX_GRID_COORDINATE:
        raise ConfigurationError(
            f"a sum of {included} updates is too long for the central baseline's grid at "
            f"noise multiplier {plan.noise_multiplier:.3g}: raise the noise (a lower epsilon)"
        )
    steps = np.rint(total / grid.step).astype(np.int64)
    steps += discrete_gaussian(GRID_STD, len(total), rng)
    # An integer times the step, divided by a public count: a function of the noisy integers.
    released: NDArray[np.float64] = steps.astype(np.float64) * (grid.step / included)
    return released

"""Removable noise in a masking round (docs/XNOISE.md): what a client releases for a
certified count, and what the server takes off with it.

``NoiseRemoval`` is built from the deployment's own ``Params`` on both sides, never from the
server's word: the layer structure from the DP block (``DpConfig.layers``, X3) and ``A``, the
corrupt clients the finder counts for the round's cohort (``Params.corrupt``, X10). Given a
certified count ``c`` of inputs in the sum, ``h = c - A`` honest inputs are vouched for, and
exactly ``NoiseLayers.removed(h)`` come off when ``h`` lies in ``[m, M]``; outside it nothing
does (X2). The count's own checks (certificate, participants) are the client's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.checks import is_int
from secagg.dp.calibrate import DpPlan, epsilon_at_noise
from secagg.dp.layers import NoiseLayers, layer_noise
from secagg.errors import UsageError
from secagg.protocol.runner import NoiseTakenOff

__all__ = ["NoiseRemoval"]


@dataclass(frozen=True)
class NoiseRemoval:
    """A round's removable noise: the deployment's calibrated ``plan`` (whose DP block has
    layers: m = ``layers.honest_min``, M = ``layers.honest_max``) and ``corrupt`` (A) for the
    round's cohort."""

    plan: DpPlan = field(repr=False)
    corrupt: int

    def __post_init__(self) -> None:
        if not isinstance(self.plan, DpPlan) or self.plan.config.layers is None:
            raise UsageError("noise removal needs a DP plan with noise layers")
        if not (is_int(self.corrupt) and self.corrupt >= 0):
            raise UsageError(f"the corruption bound must be a non-negative int: {self.corrupt!r}")

    @classmethod
    def of(cls, plan: DpPlan | None, corrupt: int) -> NoiseRemoval | None:
        """The removal a deployment's plan asks for (None: no layers)."""
        if plan is None or plan.config.layers is None:
            return None
        return cls(plan, corrupt)

    @property
    def layers(self) -> NoiseLayers:
        layers = self.plan.config.layers
        assert layers is not None
        return layers

    @property
    def mu_total(self) -> float:
        return self.plan.mu_total

    @property
    def count(self) -> int:
        """Layers each client adds, and shares."""
        return self.layers.count

    def honest(self, count: int) -> int | None:
        """The honest inputs ``count`` vouches for, when layers may come off for it (h = c - A
        in [m, M]); None otherwise."""
        h = count - self.corrupt
        if self.layers.honest_min <= h <= self.layers.honest_max:
            return h
        return None

    def units(self, count: int) -> int:
        """w: units that come off at a certified ``count`` (0 outside [m + A, M + A])."""
        h = self.honest(count)
        return 0 if h is None else self.layers.units_removed(h)

    def removed(self, count: int) -> tuple[int, ...]:
        """The layers that come off at a certified ``count``, ascending."""
        h = self.honest(count)
        return () if h is None else self.layers.removed(h)

    def kept(self, count: int) -> float:
        """Each client's Skellam parameter once the layers of ``count`` are off (all of it,
        mu_total / m, when none come off)."""
        h = self.honest(count)
        return self.layers.kept(self.mu_total, self.layers.honest_min if h is None else h)

    def noise(self, layer: int, seed: bytes, length: int) -> NDArray[np.int64]:
        """Layer ``layer``'s noise from its seed: what the client added and the server
        subtracts."""
        return layer_noise(self.layers, layer, self.mu_total, seed, length)

    def taken_off(self, count: int, layers_left: int) -> NoiseTakenOff:
        """What a round that took the layers of ``count`` off states (X7): c, A, w, the
        per-client parameter kept, and the noise multiplier and epsilon of the sum at
        ``(c - A) x kept`` (no epsilon when the count vouches for no honest input)."""
        plan = self.plan
        kept = self.kept(count)
        honest = count - self.corrupt
        if honest >= 1:
            multiplier = math.sqrt(honest * kept) / plan.scale / plan.config.l2_clip
            epsilon: float | None = epsilon_at_noise(plan, kept, honest)
        else:
            multiplier, epsilon = 0.0, None
        return NoiseTakenOff(
            count=count,
            corrupt=self.corrupt,
            units=self.units(count),
            kept=kept,
            noise_multiplier=multiplier,
            epsilon=epsilon,
            layers_left=layers_left,
        )

"""Removable noise layers: each client's Skellam noise, split so the server can take off
exactly what the honest inputs actually in a sum do not need (docs/XNOISE.md).

A client adds a base ``Sk(mu_total / honest_max)`` and ``bits + 1`` layers: layer 0 of one
``unit``, layer j (1 <= j <= bits) of ``2^(j-1)`` units, ``unit = (mu_total / honest_min -
mu_total / honest_max) / 2^bits``. Base plus every layer is ``Sk(mu_total / honest_min)``, the
noise that covers the minimum cohort, which is what a client adds today; with ``honest``
honest inputs certified in the sum, :meth:`NoiseLayers.units_removed` units come off and each
client keeps at least ``mu_total / honest``, less than one unit above it.

Everything that decides *what comes off* is integer arithmetic on counts: every client and the
server compute the same layers from the same count, and rounding always keeps noise. Only the
Skellam parameters (what a layer holds) are floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from secagg.checks import is_int
from secagg.dp.noise import skellam
from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import DeterministicRandomness

__all__ = ["LAYER_PRECISION", "LAYER_SEED_BYTES", "MAX_LAYER_COUNT", "NoiseLayers", "layer_noise"]

# The kept noise may exceed its target by at most this fraction of the per-client parameter
# (variance): 0.5%, so 0.25% in standard deviation, which leaves the 1% for the
# rounding, wrap and rotation the pipeline adds on top.
LAYER_PRECISION = Fraction(1, 200)
# Each layer's seed: drawn from the operating system, never derived (docs/XNOISE.md X1).
LAYER_SEED_BYTES = 32
# 2^bits units: past this the layers cost the server more than they could ever save.
_MAX_BITS = 16
# The most layers any structure has (layer 0 and one per bit): what a decoder may expect.
MAX_LAYER_COUNT = _MAX_BITS + 1


@dataclass(frozen=True)
class NoiseLayers:
    """The layer structure of one round: ``honest_min`` and ``honest_max`` honest inputs (the
    minimum cohort and the cohort, each minus the corruption bound) and ``bits``."""

    honest_min: int
    honest_max: int
    bits: int

    def __post_init__(self) -> None:
        if not (is_int(self.honest_min) and self.honest_min >= 1):
            raise ConfigurationError("the honest minimum must be a positive integer")
        if not (is_int(self.honest_max) and self.honest_max > self.honest_min):
            raise ConfigurationError(
                "noise layers need a cohort larger than its minimum: with honest_max = "
                "honest_min there is nothing to remove"
            )
        if not (is_int(self.bits) and 1 <= self.bits <= _MAX_BITS):
            raise ConfigurationError(f"bits must be an integer in [1, {_MAX_BITS}]")

    @classmethod
    def for_cohort(
        cls, honest_min: int, honest_max: int, precision: Fraction = LAYER_PRECISION
    ) -> NoiseLayers:
        """The fewest layers whose unit is at most ``precision`` of the least per-client
        parameter, ``mu_total / honest_max``: 2^bits >= (honest_max - honest_min) /
        (honest_min x precision)."""
        if not (is_int(honest_max) and is_int(honest_min) and honest_max > honest_min >= 1):
            raise ConfigurationError(
                f"noise layers need 1 <= honest_min < honest_max, got {honest_min} and {honest_max}"
            )
        if not (isinstance(precision, Fraction) and 0 < precision < 1):
            raise ConfigurationError("precision must be a Fraction in (0, 1)")
        needed = Fraction(honest_max - honest_min) / (honest_min * precision)
        bits = 1
        while (1 << bits) < needed:
            bits += 1
        if bits > _MAX_BITS:
            raise ConfigurationError(
                f"{bits} noise layers for honest inputs from {honest_min} to {honest_max}: "
                f"raise the minimum cohort"
            )
        return cls(honest_min, honest_max, bits)

    @property
    def count(self) -> int:
        """Layers a client adds (and shares): layer 0 and one per bit."""
        return self.bits + 1

    def units(self, layer: int) -> int:
        """Units layer ``layer`` holds: 1 for layers 0 and 1, 2^(j-1) for layer j."""
        self._check_layer(layer)
        return 1 if layer == 0 else 1 << (layer - 1)

    def units_removed(self, honest: int) -> int:
        """w(h) = floor(2^bits (h - h_min) h_max / (h (h_max - h_min))): the most whole units
        that can come off while each client keeps at least mu_total / h."""
        self._check_honest(honest)
        numerator = (1 << self.bits) * (honest - self.honest_min) * self.honest_max
        return numerator // (honest * (self.honest_max - self.honest_min))

    def removed(self, honest: int) -> tuple[int, ...]:
        """The layers that come off at ``honest`` certified honest inputs, ascending: none at
        w = 0, else layer 0 and the binary expansion of w - 1 over layers 1..bits."""
        w = self.units_removed(honest)
        if w == 0:
            return ()
        rest = w - 1
        return (0, *(j for j in range(1, self.count) if rest >> (j - 1) & 1))

    def unit(self, mu_total: float) -> float:
        """One unit's Skellam parameter for a sum that needs ``mu_total``."""
        return mu_total * (1 / self.honest_min - 1 / self.honest_max) / (1 << self.bits)

    def base(self, mu_total: float) -> float:
        """The base noise's Skellam parameter, never removed: ``mu_total / honest_max``."""
        return mu_total / self.honest_max

    def kept(self, mu_total: float, honest: int) -> float:
        """Each client's Skellam parameter after removal at ``honest``: at least
        ``mu_total / honest``, less than one unit above it."""
        units_kept = (1 << self.bits) - self.units_removed(honest)
        return self.base(mu_total) + units_kept * self.unit(mu_total)

    def _check_layer(self, layer: int) -> None:
        if not (is_int(layer) and 0 <= layer < self.count):
            raise UsageError(f"layer must be an integer in [0, {self.count}), got {layer!r}")

    def _check_honest(self, honest: int) -> None:
        if not (is_int(honest) and self.honest_min <= honest <= self.honest_max):
            raise UsageError(
                f"a certified count of {honest!r} honest inputs is outside "
                f"[{self.honest_min}, {self.honest_max}]: nothing may be removed"
            )


def layer_noise(
    layers: NoiseLayers, layer: int, mu_total: float, seed: bytes, length: int
) -> NDArray[np.int64]:
    """Layer ``layer``'s noise, ``length`` Skellam samples from its own ``seed``: the client
    adds it, and the server, once it rebuilt the seed, draws the same vector to subtract."""
    if not (isinstance(seed, bytes) and len(seed) == LAYER_SEED_BYTES):
        raise UsageError(f"a layer seed is {LAYER_SEED_BYTES} bytes")
    parameter = layers.units(layer) * layers.unit(mu_total)
    return skellam(parameter, length, DeterministicRandomness(seed))

"""Real vectors <-> ring vectors: clip, scale, stochastically round, weight; and back.

A value v becomes z = round((clip(v) + clip) / step) in [0, levels], rounded up with
probability equal to the fractional part, so E[z * step - clip] = clip(v) exactly. The ring
vector is (w*z_1, ..., w*z_D, w) for a client of weight w: summing the ring vectors of all
clients gives both the weighted sum of the z's and the total weight W, from which the
weighted mean is decoded. Every decoded coordinate errs by less than one ``step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from secagg.hazmat.randomness import Randomness
    from secagg.hazmat.ring import Ring, RingArray

__all__ = ["MAX_BITS", "MAX_WEIGHT", "EncodedInput", "Quantizer"]

MAX_BITS = 31
MAX_WEIGHT = 1 << 31
_TWO_32 = float(1 << 32)


@dataclass(frozen=True, eq=False)
class EncodedInput:
    """A client's ring vector (length D+1, last element its weight) and its clipping count."""

    vector: RingArray = field(repr=False)
    clipped: int


@dataclass(frozen=True)
class Quantizer:
    """Values clipped to [-clip, clip] and quantised to ``2**bits`` levels."""

    clip: float
    bits: int

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, int | float):
            raise ConfigurationError("clip must be a number")
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise ConfigurationError(f"clip must be finite and positive, got {self.clip!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigurationError("quantisation bits must be an int")
        if not 1 <= self.bits <= MAX_BITS:
            raise ConfigurationError(
                f"quantisation bits must be in [1, {MAX_BITS}], got {self.bits}"
            )

    @property
    def levels(self) -> int:
        """The largest quantised value; z ranges over [0, levels]."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """The real value of one quantisation step."""
        return 2 * self.clip / self.levels

    def encode(
        self, values: NDArray[np.floating[Any]], weight: int, ring: Ring, rng: Randomness
    ) -> EncodedInput:
        """Quantise ``values`` and weight them into a ring vector of length len(values)+1."""
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise UsageError("weight must be an int")
        weight = int(weight)
        if not 0 <= weight < MAX_WEIGHT:
            raise UsageError(f"weight must be in [0, 2^31), got {weight}")
        if weight * self.levels >= ring.modulus:
            raise UsageError(
                f"weight {weight} x {self.levels} levels overflows a {ring.bits}-bit ring"
            )
        x = np.array(values, dtype=np.float64)  # a copy, worked on in place below
        if x.ndim != 1:
            raise UsageError(f"values must be a 1-D array, got shape {x.shape}")
        # Two reductions, no temporaries: min and max propagate NaN, and in the common case
        # (nothing outside the range) they also show that nothing needs clipping.
        low, high = (float(x.min()), float(x.max())) if len(x) else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigurationError("input contains NaN or infinity")
        clipped = 0
        if low < -self.clip or high > self.clip:
            clipped = int(np.count_nonzero(x < -self.clip) + np.count_nonzero(x > self.clip))
            np.clip(x, -self.clip, self.clip, out=x)
        x += self.clip
        x *= 1.0 / self.step
        # Floating-point rounding can land a hair above levels; never round beyond it.
        np.minimum(x, float(self.levels), out=x)
        # Stochastic rounding: floor(x + u) for u uniform in [0, 1) rounds up with probability
        # equal to the fractional part of x (u from the CSPRNG, on a 2^-32 grid). Rounding
        # x + u to a double moves that probability by at most 2^(bits - 53): nothing at 16 bits.
        u = rng.words(len(x)).astype(np.float64)
        u *= 1.0 / _TWO_32
        x += u
        np.floor(x, out=x)

        vector = np.empty(len(x) + 1, dtype=ring.dtype)
        # Integer product: weight * z may exceed float64's 53-bit mantissa. It cannot exceed
        # the ring (checked above), so it does not wrap.
        body = vector[:-1]
        body[...] = x
        if weight != 1:
            body *= ring.dtype(weight)
        vector[-1] = weight
        return EncodedInput(vector=vector, clipped=clipped)

    def decode(self, total: RingArray) -> NDArray[np.float64]:
        """The weighted mean from the ring sum (length D+1) of the clients' vectors."""
        total = np.asarray(total)
        if total.ndim != 1 or len(total) < 1:
            raise UsageError("total must be a non-empty 1-D array")
        weight = int(total[-1])
        if weight == 0:
            raise ConfigurationError("total weight is zero")
        mean: NDArray[np.float64] = total[:-1].astype(np.float64)
        # Divide first: a single client's total / weight is then exactly its integer z.
        mean /= weight
        mean *= self.step
        mean -= self.clip
        return mean

    def error_bound(self) -> float:
        """Max |decoded mean - exact weighted mean of the clipped inputs|: one step.

        Each client's rounding errs by less than one step per coordinate, and a weighted
        average of such errors does too.
        """
        return self.step

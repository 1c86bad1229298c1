"""A Randomness that counts what is drawn from it: how the DP tests show that a sampler or an
encoder is vectorised (a few whole-vector draws, never one per value) without timing it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.randomness import Randomness


class CountingRandomness:
    """Draws from ``inner``, recording the size of every ``words`` and ``bytes`` call."""

    def __init__(self, inner: Randomness) -> None:
        self._inner = inner
        self.draws: list[int] = []

    def bytes(self, n: int) -> bytes:
        self.draws.append(n)
        return self._inner.bytes(n)

    def words(self, n: int) -> NDArray[np.uint32]:
        self.draws.append(n)
        return self._inner.words(n)

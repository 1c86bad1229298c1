"""How a client's update becomes the ring vector it masks, and how the sum is read back.

Masking adds ring vectors; what goes into them is an encoding the client and the server share:

- ``QuantizedEncoding`` (the default): each value clipped to ``[-clip, clip]``, stochastically
  rounded to ``value_bits`` bits and multiplied by the client's weight, the weight last; the sum
  decodes to the weighted mean (``secagg.hazmat.quantize``).
- the distributed-DP encoding (``secagg.dp.encoding.DpEncoding``): rotated, L2-clipped, scaled,
  rounded, with each client's discrete noise added before masking; the sum decodes to the noisy
  unweighted mean.

Both see the session id, so anything random that every client must share (the DP rotation)
is derived from the session, which no party chooses alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from secagg.errors import UsageError
from secagg.hazmat.quantize import EncodedInput, Quantizer
from secagg.hazmat.randomness import Randomness
from secagg.hazmat.ring import Ring, RingArray

if TYPE_CHECKING:
    from secagg.schemes.masking.messages import RoundConfig

__all__ = ["InputEncoding", "QuantizedEncoding", "encoding_or_quantizer"]


class InputEncoding(Protocol):
    def vector_length(self, dim: int) -> int:
        """Ring elements a client sends for an update of ``dim`` values."""
        ...

    def encode(
        self,
        values: NDArray[np.floating],
        weight: int,
        ring: Ring,
        rng: Randomness,
        session_id: bytes,
        layer_seeds: Sequence[bytes] = (),
    ) -> EncodedInput:
        """The ring vector of an update (with distributed DP and removable noise, each
        layer's noise drawn from its seed in ``layer_seeds``: docs/XNOISE.md)."""
        ...

    def decode(self, total: RingArray, included: int, session_id: bytes) -> NDArray[np.float64]:
        """The aggregate from the ring sum of ``included`` clients' vectors."""
        ...

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        """The input as the encoding clips it: what the aggregate is the mean of."""
        ...

    def error_bound(self, included: int) -> float:
        """A bound on |decoded - exact mean of the references| per coordinate."""
        ...


class QuantizedEncoding:
    """Clip, quantise, weight (``Quantizer``); the sum is the weighted mean."""

    def __init__(self, quantizer: Quantizer) -> None:
        self.quantizer = quantizer

    def vector_length(self, dim: int) -> int:
        return dim + 1  # the weighted values, then the weight

    def encode(
        self,
        values: NDArray[np.floating],
        weight: int,
        ring: Ring,
        rng: Randomness,
        session_id: bytes,
        layer_seeds: Sequence[bytes] = (),
    ) -> EncodedInput:
        del session_id  # nothing of the session goes into a quantised value
        if layer_seeds:
            raise UsageError("a quantised input has no noise layers")
        return self.quantizer.encode(np.asarray(values), weight, ring, rng)

    def decode(self, total: RingArray, included: int, session_id: bytes) -> NDArray[np.float64]:
        del included, session_id  # the weight travels in the last element
        return self.quantizer.decode(total)

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        clip = self.quantizer.clip
        return np.clip(np.asarray(values, dtype=np.float64), -clip, clip)

    def error_bound(self, included: int) -> float:
        del included
        return self.quantizer.error_bound()


def encoding_or_quantizer(config: RoundConfig, encoding: InputEncoding | None) -> InputEncoding:
    """``encoding``, or where none is given the quantiser ``config`` fixes; a distributed-DP
    round has no default (its encoding carries the DP plan)."""
    if encoding is not None:
        return encoding
    if config.dp is not None:
        raise UsageError("a distributed-DP round needs its DP encoding")
    return QuantizedEncoding(Quantizer(clip=config.clip, bits=config.value_bits))

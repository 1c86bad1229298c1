"""Distributed DP as masking's input encoding (``secagg.schemes.masking.encoding.InputEncoding``).

Each client turns its update into a noisy ring vector with ``secagg.dp.pipeline.encode``
(rotation, L2 clip, scale, randomised rounding, its own discrete noise, modulo 2^bits) and a
count of 1 in the last element; masking then hides it like any other vector. The server
decodes the unmasked sum into the noisy mean of the included clients' clipped updates. The
rotation comes from the session id, which every client helped choose, so no party picks it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan
from secagg.dp.message import DpRound
from secagg.dp.pipeline import decode, encode
from secagg.errors import RoundAborted, UsageError
from secagg.hazmat.kdf import encode_fields
from secagg.hazmat.quantize import EncodedInput
from secagg.hazmat.randomness import Randomness
from secagg.hazmat.ring import Ring, RingArray

__all__ = ["DpEncoding", "dp_round", "rotation_seed"]

# The high-probability error bound is exceeded, per round, with at most this probability
# (a union bound over the coordinates; wraps are bounded separately by the plan).
_ERROR_TAIL = 1e-9


def rotation_seed(session_id: bytes) -> bytes:
    """The round's rotation: the same for every client of the session, chosen by none."""
    return hashlib.sha256(encode_fields("secagg/v1/dp-rotation", session_id)).digest()


def dp_round(plan: DpPlan) -> DpRound:
    """What a round configuration says of a calibrated plan (and a client compares)."""
    return DpRound(
        mechanism=plan.mechanism.value,
        padded_dim=plan.padded_dim,
        l2_clip=plan.config.l2_clip,
        scale=plan.scale,
        local_noise=plan.local_noise,
        beta=plan.config.beta,
        layers=plan.config.layers,
    )


class DpEncoding:
    """A calibrated ``DpPlan`` as masking's encoding. Weights are 1: the DP mean is unweighted
    (each client's contribution is bounded by the L2 clip, which the guarantee counts on)."""

    def __init__(self, plan: DpPlan) -> None:
        self.plan = plan

    def vector_length(self, dim: int) -> int:
        if dim != self.plan.config.dim:
            raise UsageError(f"the plan is for dim {self.plan.config.dim}, not {dim}")
        return self.plan.padded_dim + 1  # the noisy rotated values, then a count of 1

    def encode(
        self,
        values: NDArray[np.floating[Any]],
        weight: int,
        ring: Ring,
        rng: Randomness,
        session_id: bytes,
        layer_seeds: Sequence[bytes] = (),
    ) -> EncodedInput:
        if weight != 1:
            raise UsageError("with distributed DP every client weighs 1 (an unweighted mean)")
        if ring.bits != self.plan.ring_bits:
            raise UsageError(f"the plan needs a {self.plan.ring_bits}-bit ring, not {ring.bits}")
        noisy, clipped = encode(self.plan, values, rotation_seed(session_id), rng, layer_seeds)
        vector = np.empty(self.plan.padded_dim + 1, dtype=ring.dtype)
        vector[:-1] = noisy  # already reduced modulo 2^bits
        vector[-1] = 1
        return EncodedInput(vector=vector, clipped=int(clipped))

    def decode(self, total: RingArray, included: int, session_id: bytes) -> NDArray[np.float64]:
        if int(total[-1]) != included:
            # A client's count other than 1: the sum cannot be trusted, so nothing of it is
            # revealed (a typed abort, never an exception out of the round).
            raise RoundAborted("unmask", f"the sum counts {int(total[-1])} inputs, not {included}")
        return decode(self.plan, np.asarray(total[:-1]), included, rotation_seed(session_id))

    def reference(self, values: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """The update scaled down to the L2 clip (rotation keeps the norm)."""
        x = np.asarray(values, dtype=np.float64)
        norm = float(np.linalg.norm(x))
        clip = self.plan.config.l2_clip
        return x * (clip / norm) if norm > clip else x.copy()

    def error_bound(self, included: int) -> float:
        """|decoded - mean of the clipped updates| per coordinate, exceeded with probability
        below 1e-9 (plus the plan's wrap probability): the noise of the mean and the
        rounding, both near Gaussian after the rotation, and the rounding's bias."""
        plan = self.plan
        noise = plan.central_noise_std_for(included) / included
        rounding = 0.5 / (plan.scale * math.sqrt(included))  # per-client rounding, averaged
        z = math.sqrt(2 * math.log(2 * plan.padded_dim / _ERROR_TAIL))
        return z * math.hypot(noise, rounding) + plan.rounding_bias_bound

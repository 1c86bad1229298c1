"""A client's update -> a noisy ring vector, and the ring sum -> the noisy mean.

Client (:func:`encode`), as in TensorFlow Federated's distributed DP:

1. flatten the update to ``dim`` float64 values;
2. rotate (randomised Hadamard, padded to ``padded_dim``) with the round's seed;
3. clip to L2 norm ``l2_clip`` (reported: ``clipped`` is True when it bit);
4. multiply by ``scale``;
5. round each coordinate randomly to a neighbouring integer, up with probability equal to the
   fractional part; with ``beta > 0``, redraw the whole rounding until its L2 norm is within
   the bound the accounting assumed (conditional rounding);
6. add the client's own discrete noise (Skellam or discrete Gaussian, from ``rng``); with
   removable noise layers (docs/XNOISE.md), a Skellam base from ``rng`` and each layer from
   its own seed, which the client shares so the server can take the layer off again;
7. reduce modulo 2^bits: the ring vector, in [0, 2^bits), ready to be masked.

Server (:func:`decode`), on the unmasked ring sum: centre each coordinate into
``[-2^(bits-1), 2^(bits-1))``, divide by the scale, rotate back, divide by the number of inputs
included. The result is the *unweighted* mean of the clipped updates plus noise: the DP mode
has no weights, because the guarantee counts each client's contribution as bounded by the clip.

Every step is vectorised; a 100,000-value update encodes in a few tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan
from secagg.dp.layers import layer_noise
from secagg.dp.noise import sample, skellam
from secagg.dp.rotation import rotate, unrotate
from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.randomness import Randomness

__all__ = ["decode", "encode"]

_TWO_POW_MINUS_32 = 2.0**-32
# With beta > 0 a rounding is redrawn while its norm is above the bound; each draw fails with
# probability at most beta, so this many failures in a row has probability at most 2^-64 (for
# beta <= 0.99, that is ~4,400 draws).
_REDRAW_SECURITY_BITS = 64


def _randomised_rounding(y: NDArray[np.float64], rng: Randomness) -> NDArray[np.float64]:
    """floor(y + u), u uniform in [0, 1) on a 2^-32 grid: up with probability frac(y)."""
    u = rng.words(len(y)).astype(np.float64)
    u *= _TWO_POW_MINUS_32
    u += y
    np.floor(u, out=u)
    return u


def encode(
    plan: DpPlan,
    values: NDArray[np.floating[Any]],
    seed: bytes,
    rng: Randomness,
    layer_seeds: Sequence[bytes] = (),
) -> tuple[NDArray[np.uint64], bool]:
    """The client's ring vector (uint64, length ``plan.padded_dim``, values in [0, 2^bits)) and
    whether its update was clipped.

    ``seed`` is the round's 32-byte rotation seed (the same for every client); ``rng`` the
    client's own randomness for rounding and noise (a ``SystemRandomness`` in deployment);
    ``layer_seeds`` one fresh seed per noise layer when the plan has layers (none otherwise).
    """
    if not isinstance(plan, DpPlan):
        raise UsageError("encode expects a DpPlan")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) != plan.config.dim:
        raise UsageError(f"the update has {len(x)} values, the plan expects {plan.config.dim}")
    if not np.isfinite(x).all():
        raise ConfigurationError("input contains NaN or infinity")
    y = rotate(x, seed)
    # The rotation is orthonormal, so this is the update's own norm.
    norm = math.sqrt(float(np.dot(y, y)))
    clip = plan.config.l2_clip
    clipped = norm > clip
    factor = plan.scale * (clip / norm if clipped else 1.0)
    y *= factor

    rounded = _randomised_rounding(y, rng)
    beta = plan.config.beta
    if beta > 0.0:
        bound_squared = plan.rounded_l2_bound**2
        attempts = math.ceil(_REDRAW_SECURITY_BITS * math.log(2.0) / -math.log(beta))
        for _ in range(attempts):
            if float(np.dot(rounded, rounded)) <= bound_squared:
                break
            rounded = _randomised_rounding(y, rng)
        else:
            raise UsageError("conditional rounding failed far beyond its stated probability")

    vector = rounded.astype(np.int64)
    vector += _noise(plan, layer_seeds, rng)
    # Two's complement: AND with 2^b - 1 is reduction modulo 2^b, negatives included.
    vector &= np.int64(plan.ring_modulus - 1)
    return vector.view(np.uint64), clipped


def _noise(plan: DpPlan, layer_seeds: Sequence[bytes], rng: Randomness) -> NDArray[np.int64]:
    """The client's noise: one draw of the plan's parameter, or a base and its layers whose
    parameters add up to it (a sum of independent Skellams is Skellam)."""
    layers = plan.config.layers
    if layers is None:
        if layer_seeds:
            raise UsageError("layer seeds for a plan without noise layers")
        return sample(plan.mechanism, plan.local_noise, plan.padded_dim, rng)
    if len(layer_seeds) != layers.count:
        raise UsageError(f"the plan has {layers.count} noise layers, not {len(layer_seeds)}")
    noise = skellam(layers.base(plan.mu_total), plan.padded_dim, rng)
    for layer, layer_seed in enumerate(layer_seeds):
        noise += layer_noise(layers, layer, plan.mu_total, layer_seed, plan.padded_dim)
    return noise


def decode(
    plan: DpPlan, ring_sum: NDArray[np.unsignedinteger[Any]], included: int, seed: bytes
) -> NDArray[np.float64]:
    """The noisy unweighted mean of the ``included`` clients' clipped updates (length ``dim``)
    from the ring sum of their encoded vectors (any unsigned dtype, reduced mod 2^bits here)."""
    if not isinstance(plan, DpPlan):
        raise UsageError("decode expects a DpPlan")
    if isinstance(included, bool) or not isinstance(included, int):
        raise UsageError(f"included must be an int, got {included!r}")
    if not 1 <= included <= plan.config.max_clients:
        raise UsageError(
            f"included must be in [1, max_clients={plan.config.max_clients}], got {included}"
        )
    total = np.asarray(ring_sum)
    if total.shape != (plan.padded_dim,) or total.dtype.kind != "u":
        raise UsageError(
            f"the ring sum must be an unsigned vector of length {plan.padded_dim}, "
            f"got {total.dtype} of shape {total.shape}"
        )
    centred = total.astype(np.int64) & np.int64(plan.ring_modulus - 1)
    centred[centred >= plan.ring_modulus // 2] -= plan.ring_modulus
    mean = centred.astype(np.float64)
    mean *= 1.0 / (plan.scale * included)
    return unrotate(mean, seed, plan.config.dim)

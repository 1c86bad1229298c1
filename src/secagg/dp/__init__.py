"""Distributed differential privacy on top of secure aggregation: the building blocks.

Every client adds a little discrete noise before masking, so the sum the server unmasks
already carries enough noise for an (epsilon, delta) guarantee, and no party ever sees a
noiseless sum. Modules:

- ``rotation``: the randomised Hadamard rotation shared by a round's clients;
- ``noise``: Skellam and discrete Gaussian samplers over cryptographic randomness;
- ``accounting``: sensitivities, RDP curves, sampling, composition, conversion (dp-accounting);
- ``calibrate``: ``DpConfig`` (what the user asks) -> ``DpPlan`` (scale, noise, bounds);
- ``pipeline``: ``encode`` (client) and ``decode`` (server).

Only converting RDP to epsilon needs Google's ``dp-accounting`` (the ``secagg[dp]`` extra):
``calibrate``, ``achieved_epsilon`` and ``epsilon_spent`` raise a ConfigurationError saying so
when it is missing; everything else imports and runs without it.
"""

from secagg.dp.calibrate import (
    DpConfig,
    DpPlan,
    achieved_epsilon,
    calibrate,
    epsilon_spent,
    wrap_probability_bound,
)
from secagg.dp.noise import Mechanism, discrete_gaussian, skellam
from secagg.dp.pipeline import decode, encode
from secagg.dp.rotation import padded_dimension, rotate, unrotate

__all__ = [
    "DpConfig",
    "DpPlan",
    "Mechanism",
    "achieved_epsilon",
    "calibrate",
    "decode",
    "discrete_gaussian",
    "encode",
    "epsilon_spent",
    "padded_dimension",
    "rotate",
    "skellam",
    "unrotate",
    "wrap_probability_bound",
]

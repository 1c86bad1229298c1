"""Distributed differential privacy on top of secure aggregation: the building blocks.

Every client adds a little discrete noise before masking, so the sum the server unmasks
already carries enough noise for an (epsilon, delta) guarantee, and no party ever sees a
noiseless sum. Modules:

- ``rotation``: the randomised Hadamard rotation shared by a round's clients;
- ``mechanism``: the name of each noise distribution;
- ``noise``: Skellam and discrete Gaussian samplers over cryptographic randomness;
- ``accounting``: sensitivities, RDP curves, sampling, composition, conversion (dp-accounting);
- ``calibrate``: ``DpConfig`` (what the user asks) -> ``DpPlan`` (scale, noise, bounds);
- ``pipeline``: ``encode`` (client) and ``decode`` (server);
- ``central`` and ``central_noise``: the central-DP baseline distributed DP is measured
  against (the Gaussian mechanism on the exact mean of the same clipped updates, its noise
  multiplier from the same accountant, its noise from cryptographic randomness).

Only converting RDP to epsilon needs Google's ``dp-accounting`` (the ``secagg[dp]`` extra):
``calibrate``, ``achieved_epsilon`` and ``epsilon_spent`` raise a ConfigurationError saying so
when it is missing; everything else imports and runs without it.

The names below are imported when first used: ``secagg.dp.settings`` and
``secagg.dp.mechanism`` (what a command's ``--dp-*`` options need) load without numpy.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secagg.dp.calibrate import (
        DpConfig,
        DpPlan,
        achieved_epsilon,
        calibrate,
        carried_noise_multiplier,
        epsilon_spent,
        wrap_probability_bound,
    )
    from secagg.dp.central import CentralPlan, central_noise_multiplier, central_plan
    from secagg.dp.mechanism import Mechanism
    from secagg.dp.noise import discrete_gaussian, skellam
    from secagg.dp.pipeline import decode, encode
    from secagg.dp.rotation import padded_dimension, rotate, unrotate

_WHERE = {
    "DpConfig": "secagg.dp.calibrate",
    "DpPlan": "secagg.dp.calibrate",
    "achieved_epsilon": "secagg.dp.calibrate",
    "calibrate": "secagg.dp.calibrate",
    "carried_noise_multiplier": "secagg.dp.calibrate",
    "CentralPlan": "secagg.dp.central",
    "central_noise_multiplier": "secagg.dp.central",
    "central_plan": "secagg.dp.central",
    "epsilon_spent": "secagg.dp.calibrate",
    "wrap_probability_bound": "secagg.dp.calibrate",
    "Mechanism": "secagg.dp.mechanism",
    "discrete_gaussian": "secagg.dp.noise",
    "skellam": "secagg.dp.noise",
    "decode": "secagg.dp.pipeline",
    "encode": "secagg.dp.pipeline",
    "padded_dimension": "secagg.dp.rotation",
    "rotate": "secagg.dp.rotation",
    "unrotate": "secagg.dp.rotation",
}

__all__ = [
    "CentralPlan",
    "DpConfig",
    "DpPlan",
    "Mechanism",
    "achieved_epsilon",
    "calibrate",
    "carried_noise_multiplier",
    "central_noise_multiplier",
    "central_plan",
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


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'secagg.dp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


class _Package(types.ModuleType):
    """``calibrate`` names both a submodule and the function this package exports. Loading a
    submodule sets the package's attribute of its name to it, which would hide the function
    once anything imported ``secagg.dp.calibrate``; so the function keeps the name (as it did
    when this package imported its names at once), loaded by ``__getattr__`` when first asked
    for."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "calibrate" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

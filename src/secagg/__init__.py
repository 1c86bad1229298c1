"""secagg: secure aggregation for federated learning.

A server learns the sum (or weighted mean) of many clients' updates and nothing else, even
when clients drop out mid-round. The protocol core is sans-I/O (``Client`` and ``Server``
take messages and return messages); ``simulate_round`` drives a whole round in process and
``secure_mean`` is the one-call helper.

Layers, each importing only from those before it (``tests/test_layers.py`` reads every
import; docs/ARCHITECTURE.md draws all of them): ``errors`` <- ``hazmat`` (primitives) <-
``protocol`` (scheme-neutral: the codec, the stages, the round runner) <- ``dp`` <-
``schemes`` (masking's state machines, parameters and policy among them) <- ``simulate`` and
``client_session`` <- this package's API <- ``service`` <- ``flower``, ``demo``,
``compare`` <- ``cli``. ``fl`` (numpy training, nothing secure in it) sits beside
``protocol``: the service's tasks run it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secagg.errors import (
        AbortReason,
        ClientAbort,
        ConfigurationError,
        DecodeError,
        DropReason,
        RoundAborted,
        SecAggError,
    )
    from secagg.schemes.masking.client import Client
    from secagg.schemes.masking.messages import RoundConfig
    from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
    from secagg.schemes.masking.server import RoundResult, Server
    from secagg.simulate import (
        DropSchedule,
        RoundReport,
        SimulationResult,
        secure_mean,
        simulate_round,
    )

# The public API, imported when first used: ``import secagg`` (and so the ``secagg`` command's
# start-up, which must install its signal handlers before anything heavy) costs nothing.
_WHERE = {
    "AbortReason": "secagg.errors",
    "ClientAbort": "secagg.errors",
    "ConfigurationError": "secagg.errors",
    "DecodeError": "secagg.errors",
    "DropReason": "secagg.errors",
    "RoundAborted": "secagg.errors",
    "SecAggError": "secagg.errors",
    "Params": "secagg.schemes.masking.parameters",
    "Protocol": "secagg.schemes.masking.parameters",
    "ServerModel": "secagg.schemes.masking.parameters",
    "Client": "secagg.schemes.masking.client",
    "RoundConfig": "secagg.schemes.masking.messages",
    "RoundResult": "secagg.schemes.masking.server",
    "Server": "secagg.schemes.masking.server",
    "DropSchedule": "secagg.simulate",
    "RoundReport": "secagg.simulate",
    "SimulationResult": "secagg.simulate",
    "secure_mean": "secagg.simulate",
    "simulate_round": "secagg.simulate",
}

__all__ = [
    "AbortReason",
    "Client",
    "ClientAbort",
    "ConfigurationError",
    "DecodeError",
    "DropReason",
    "DropSchedule",
    "Params",
    "Protocol",
    "RoundAborted",
    "RoundConfig",
    "RoundReport",
    "RoundResult",
    "SecAggError",
    "Server",
    "ServerModel",
    "SimulationResult",
    "secure_mean",
    "simulate_round",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'secagg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

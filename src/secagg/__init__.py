"""secagg: secure aggregation for federated learning.

A server learns the sum (or weighted mean) of many clients' updates and nothing else, even
when clients drop out mid-round. The protocol core is sans-I/O (``Client`` and ``Server``
take messages and return messages); ``simulate_round`` drives a whole round in process and
``secure_mean`` is the one-call helper.

Layers, each depending only on those before it: ``hazmat`` (primitives) <- ``protocol``
(state machines) <- ``simulate`` <- ``cli``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    DecodeError,
    DropReason,
    RoundAborted,
    SecAggError,
)
from secagg.params import Params, Protocol, ServerModel
from secagg.protocol.client import Client
from secagg.protocol.messages import RoundConfig
from secagg.protocol.server import RoundResult, Server
from secagg.simulate import DropSchedule, RoundReport, SimulationResult, simulate_round

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


def secure_mean(
    updates: NDArray[np.floating],
    weights: NDArray[np.floating] | None = None,
    *,
    params: Params | None = None,
    drops: DropSchedule | None = None,
    seed: int | None = None,
) -> SimulationResult:
    """Securely aggregate the rows of ``updates`` (clients x dim) in one simulated round.

    Returns the round's result: ``.aggregate`` is the weighted mean of the rows whose inputs
    were included (all of them unless ``drops`` says otherwise), ``.report`` what it cost.
    """
    array = np.asarray(updates)
    if array.ndim != 2:
        raise ConfigurationError(f"updates must be a 2-D array, got shape {array.shape}")
    n, dim = array.shape
    if params is None:
        from secagg.simulate import integer_weights

        _, max_weight = integer_weights(weights, n)
        params = Params(dim=dim, max_clients=n, max_weight=max_weight)
    return simulate_round(params, n, lambda i: array[i], weights=weights, drops=drops, seed=seed)

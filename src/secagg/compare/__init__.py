"""``secagg compare``: the same updates through every scheme, side by side.

Plaintext FedAvg, masking (SecAgg and SecAgg+, each against a semi-honest and a
semi-malicious server) and CKKS homomorphic encryption aggregate the same clients' updates,
with the same clients dropping out (each at a random stage of each scheme's round), in one
run. For each: what a client and the server spend, the bytes a client sends and receives,
the error against the exact mean, the dropout the round survives, what the server learns,
who must collude to see one client's update, and the privacy of the sum it reveals: the
(epsilon, delta) guarantee under distributed DP, "none" otherwise (an exact sum).
With DP settings (``CompareOptions.dp``; ``--dp-epsilon`` on the command line) one more row,
``secagg+-dp``, runs SecAgg+ with every client adding its noise before masking: an
unweighted mean of the updates clipped to the L2 clip, calibrated for the smallest sum the
round is designed to survive; and beside it ``central-dp``, the baseline it is measured
against: a trusted curator's Gaussian mechanism on the exact mean of the same clipped updates
of the same clients, its noise multiplier spending the same target epsilon by the same
accountant (``secagg.compare.central``). ``--sweep-clients`` and ``--sweep-dim`` repeat the
comparison over sizes for the plots.

The row names are here, importing nothing, so that ``secagg compare --help`` can list them;
the comparison (numpy, every scheme) is ``secagg.compare.comparison``, loaded when one of its
names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secagg.compare.comparison import CompareOptions, CompareReport, run_compare, write_plots

__all__ = [
    "ALL_SCHEMES",
    "CENTRAL_DP_SCHEME",
    "DP_SCHEME",
    "SCHEMES",
    "CompareOptions",
    "CompareReport",
    "run_compare",
    "write_plots",
]

# The rows of the comparison, in the order a reader meets them.
SCHEMES = (
    "plaintext",
    "secagg",
    "secagg-active",
    "secagg+",
    "secagg+-active",
    "ckks",
)
# SecAgg+ with distributed DP, and the central-DP baseline beside it: rows only when DP
# settings are given.
DP_SCHEME = "secagg+-dp"
CENTRAL_DP_SCHEME = "central-dp"
ALL_SCHEMES = (*SCHEMES, DP_SCHEME, CENTRAL_DP_SCHEME)

_LAZY = frozenset({"CompareOptions", "CompareReport", "run_compare", "write_plots"})


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'secagg.compare' has no attribute {name!r}")
    value = getattr(importlib.import_module("secagg.compare.comparison"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

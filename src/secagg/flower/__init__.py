"""Secure aggregation inside Flower (flwr 1.42): swap Flower's SecAgg+ for secagg's.

Two pieces, one per side, over Flower's current Message API (and its legacy
``DefaultWorkflow``):

- ``SecAggMod(params, journal=folder, allowed_nodes=...)``, a client ``Mod``:
  ``ClientApp(mods=[SecAggMod(...)])``. A transport over the client session
  (``secagg.client_session``): every round is checked against the node's own deployment and
  journal, trained once, and answered along one durable transcript; the only vector that
  leaves the node is its masked input.
- ``SecureGrid(grid, params, ...)``, a ``Grid`` wrapper for the ``ServerApp``: each
  ``TRAIN`` round of the strategy becomes one secagg round, and the strategy receives one
  reply holding the secure weighted mean (FedAvg averages it into itself).

Our protocol messages travel as their canonical bytes in a ``ConfigRecord`` of Flower's
messages (``secagg.flower.wire``). Flower's node ids map to secagg's client ids per round:
client ``i`` is the ``i``-th smallest node id of the cohort. Needs ``pip install
'secagg[flower]'``.
"""

from __future__ import annotations

from secagg.flower.client import DEFAULT_STAGE_TIMEOUT, REFUSED_PLAINTEXT, SecAggMod
from secagg.flower.server import SecureGrid, SecureRoundReport
from secagg.flower.wire import ArrayLayout

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "REFUSED_PLAINTEXT",
    "ArrayLayout",
    "SecAggMod",
    "SecureGrid",
    "SecureRoundReport",
]

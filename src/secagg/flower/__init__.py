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

For Flower's deployment engine, ``SecAggMod.from_node_config()`` reads the node's deployment
from its SuperNode's ``--node-config`` (``secagg.flower.configured``), and
``secagg.flower.nodes`` keeps the deployment's node ids and identities (``secagg
flower-nodes`` writes them). That module needs no Flower: this package imports Flower only
when one of the names below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secagg.flower.client import DEFAULT_STAGE_TIMEOUT, REFUSED_PLAINTEXT, SecAggMod
    from secagg.flower.configured import load_params
    from secagg.flower.nodes import FlowerNodes, NodeIdentity
    from secagg.flower.server import SecureGrid, SecureRoundReport
    from secagg.flower.wire import ArrayLayout

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "REFUSED_PLAINTEXT",
    "ArrayLayout",
    "FlowerNodes",
    "NodeIdentity",
    "SecAggMod",
    "SecureGrid",
    "SecureRoundReport",
    "load_params",
]

_HOMES = {
    "DEFAULT_STAGE_TIMEOUT": "client",
    "REFUSED_PLAINTEXT": "client",
    "SecAggMod": "client",
    "load_params": "configured",
    "FlowerNodes": "nodes",
    "NodeIdentity": "nodes",
    "SecureGrid": "server",
    "SecureRoundReport": "server",
    "ArrayLayout": "wire",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'secagg.flower' has no attribute {name!r}")
    return getattr(importlib.import_module(f"secagg.flower.{home}"), name)

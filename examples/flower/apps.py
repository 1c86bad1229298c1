"""The example's Flower apps: FedAvg on the digits with secagg's secure aggregation.

Compared with a plain Flower app, two lines differ (marked ``# secagg``): the ClientApp
has ``SecAggMod`` among its mods, and the ServerApp hands the strategy a ``SecureGrid``.
``secaggplus_apps`` builds the same task with Flower's own SecAgg+ (legacy API) for
comparison.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from examples.flower.secagg_digits import task
from examples.flower.secagg_digits.client_app import train_reply
from secagg.flower import SecAggMod, SecureGrid, SecureRoundReport


@dataclass
class RunLog:
    """What the ServerApp saw, round by round (filled in as the run goes)."""

    accuracy: list[float] = field(default_factory=list)  # before round 1, then after each
    models: list[list[np.ndarray]] = field(default_factory=list)  # the global model, likewise
    reports: list[SecureRoundReport] = field(default_factory=list)
    partitions: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    # Called as each evaluation begins (before round 1, then after each round).
    on_evaluate: list[Callable[[], None]] = field(default_factory=list)

    def evaluated(self, accuracy: float) -> None:
        for hook in self.on_evaluate:
            hook()
        self.accuracy.append(accuracy)


def secure_client_app(
    num_nodes: int, *, journal: str | Path | None = None, outer_mods: Sequence[Mod] = ()
) -> ClientApp:
    """The ClientApp: trains the node's share of the digits, only inside secure rounds.

    ``journal`` is the folder of the nodes' journals (one file per node: what each promised,
    kept before it answers); by default a fresh folder for this run. In a simulation every
    node is this app's own, so it opts out of the allow-list by name; a deployment names its
    nodes: ``SecAggMod(params, journal=..., allowed_nodes=[...])``.
    """
    folder = Path(journal) if journal is not None else Path(tempfile.mkdtemp(prefix="secagg-"))
    # secagg: the node's own deployment and journal
    mod = SecAggMod(task.deployment(num_nodes), journal=folder, allow_any_node=True)
    app = ClientApp(mods=[*outer_mods, mod])  # secagg: the mod answers the protocol

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context)

    @app.query()
    def partition(msg: Message, context: Context) -> Message:
        # Public bookkeeping for the example's report: which data share a node holds.
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"info": MetricRecord({"partition-id": pid})}), reply_to=msg)

    return app


def secure_server_app(
    num_nodes: int,
    num_rounds: int,
    log: RunLog,
    *,
    stage_timeout: float = 30.0,
    grid_hook: Callable[[Grid], Grid] | None = None,
    first_round: int | None = None,
    session_rounds: int | None = None,
) -> ServerApp:
    """The ServerApp: FedAvg over every node, each round a secure aggregation round
    (round ids from ``first_round``; by default from the clock, as ``SecureGrid``'s), in
    sessions of up to ``session_rounds`` rounds (docs/SESSIONS.md; by default
    ``SecureGrid``'s) or, with 0, one-shot."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if grid_hook is not None:
            grid = grid_hook(grid)
        log.partitions.update(_partitions(grid, num_nodes))
        secure = SecureGrid(  # secagg
            grid,
            task.deployment(num_nodes),
            stage_timeout=stage_timeout,
            first_round=first_round,
            **({} if session_rounds is None else {"session_rounds": session_rounds}),
        )
        strategy = FedAvg(
            fraction_evaluate=0.0, min_train_nodes=num_nodes, min_available_nodes=num_nodes
        )

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = task.new_model(num_nodes)
            model.load_state_dict(arrays.to_torch_state_dict())
            log.models.append([a.copy() for a in arrays.to_numpy_ndarrays()])
            log.reports[:] = secure.reports
            log.evaluated(task.accuracy(model, num_nodes))
            return MetricRecord({"accuracy": log.accuracy[-1]})

        strategy.start(
            grid=secure,
            initial_arrays=ArrayRecord(task.new_model(num_nodes).state_dict()),
            num_rounds=num_rounds,
            evaluate_fn=evaluate,
        )

    return app


def _partitions(grid: Grid, num_nodes: int) -> dict[int, int]:
    """Ask every node which partition it holds (a query message, outside any training)."""
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_nodes:  # the simulation registers its nodes before the app starts
        nodes = list(grid.get_node_ids())
    queries = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=60):
        if reply.has_content():
            out[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
    return out

"""The ServerApp: FedAvg over the deployment's nodes, each round a secure aggregation round.

Its run config (``pyproject.toml``'s ``[tool.flwr.app.config]``, overridden with ``flwr run
--run-config``) names the deployment files of the server's side: ``secagg-deployment``, the
``deployment.toml`` whose ``[round]`` the nodes hold too, and ``secagg-nodes``, the
``nodes.toml`` of the node ids (and identities in active mode). ``report``, if set, is a
file the app writes each round's outcome to (JSON), for the operator and for tests.
"""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from secagg.flower import FlowerNodes, SecureGrid, load_params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from . import task  # torch, once the run starts

    config = context.run_config
    num_partitions = int(config["num-partitions"])
    if str(config["secagg-deployment"]):
        params = load_params(str(config["secagg-deployment"]))  # secagg: the deployment
        nodes = FlowerNodes.load(Path(str(config["secagg-nodes"])))  # secagg: its nodes
        wait_for_nodes(grid, nodes, float(config["node-wait"]))
        pki, allowed = nodes.pki, nodes.node_ids
    else:  # a simulation: every node is the app's own (the nodes opt in likewise)
        params, pki, allowed = task.deployment(num_partitions), None, None
    secure = SecureGrid(  # secagg: every training round is a secure round
        grid,
        params,
        pki=pki,
        allowed_nodes=allowed,
        stage_timeout=float(config["stage-timeout"]),
    )
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=num_partitions,
        min_available_nodes=num_partitions,
    )
    accuracy: list[float] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = task.new_model(num_partitions)
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy.append(task.accuracy(model, num_partitions))
        if str(config["report"]):
            write_report(Path(str(config["report"])), secure, accuracy)
        return MetricRecord({"accuracy": accuracy[-1]})

    strategy.start(
        grid=secure,
        initial_arrays=ArrayRecord(task.new_model(num_partitions).state_dict()),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=evaluate,
    )


def wait_for_nodes(
    grid: Grid,
    nodes: FlowerNodes,
    seconds: float,
    *,
    interval: float = 1.0,
    every: float = 15.0,
) -> None:
    """Wait until every node of the deployment is connected (a round samples all of them).

    The run's log (``flwr run --stream``, where the operator reads it) says how many are
    connected when the wait starts, whenever that changes, every ``every`` seconds, and when
    all are, so a run stuck before its first round shows where; a node still missing after
    ``seconds`` ends the run with a one-line error naming the missing node ids.
    ``interval``: seconds between polls."""
    wanted = nodes.node_ids
    deadline = time.monotonic() + seconds
    said: tuple[int, float] | None = None  # (how many were connected, when it was said)
    while True:
        connected = wanted & set(grid.get_node_ids())
        missing = sorted(wanted - connected)
        if not missing:
            flwr_log(INFO, "all %d nodes of nodes.toml are connected", len(wanted))
            return
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(
                f"waited {seconds:g} s for the {len(wanted)} nodes of nodes.toml: "
                f"{len(connected)} connected, never connected: {missing}"
            )
        if said is None or said[0] != len(connected) or now - said[1] >= every:
            flwr_log(
                INFO,
                "waiting for the %d nodes of nodes.toml: %d connected, missing %s",
                len(wanted),
                len(connected),
                missing,
            )
            said = (len(connected), now)
        time.sleep(interval)


def write_report(path: Path, secure: SecureGrid, accuracy: list[float]) -> None:
    """The rounds so far, as JSON: each secure round's report and the accuracy after it."""
    document: dict[str, Any] = {
        "accuracy": accuracy,
        "rounds": [report.to_json() for report in secure.reports],
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1))
    temporary.replace(path)

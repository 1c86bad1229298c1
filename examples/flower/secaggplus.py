"""The same task with Flower's own SecAgg+, for comparison (flwr 1.42: legacy API only).

Wired as Flower's ``examples/flower-secure-aggregation`` does: a ``NumPyClient`` with
``secaggplus_mod`` on the nodes; ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
with the legacy FedAvg on the server. Flower's SecAgg+ aggregates the models themselves
(not updates), so its clipping range must cover the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from examples.flower.apps import RunLog
from examples.flower.secagg_digits import task


def secaggplus_client_app(num_nodes: int) -> ClientApp:
    class DigitsClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            model = task.new_model(num_nodes)
            state = zip(model.state_dict(), parameters, strict=True)
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state})
            examples = task.train(model, self.partition, num_nodes, int(config["server-round"]))
            return [t.detach().numpy() for t in model.state_dict().values()], examples, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def secaggplus_server_app(
    num_nodes: int,
    num_rounds: int,
    log: RunLog,
    *,
    timeout: float = 30.0,
    grid_hook: Callable[[Grid], Grid] | None = None,
) -> ServerApp:
    """SecAgg+ with the same graph degree and threshold as secagg uses for this cohort."""
    graph = task.deployment(num_nodes).graph(num_nodes)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if grid_hook is not None:
            grid = grid_hook(grid)
        initial = [t.detach().numpy() for t in task.new_model(num_nodes).state_dict().values()]

        def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
            model = task.new_model(num_nodes)
            state = zip(model.state_dict(), parameters, strict=True)
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state})
            log.models.append([np.array(p) for p in parameters])
            log.evaluated(task.accuracy(model, num_nodes))
            return 0.0, {"accuracy": log.accuracy[-1]}

        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_nodes,
            min_available_clients=num_nodes,
            initial_parameters=ndarrays_to_parameters(initial),
            evaluate_fn=evaluate,
            on_fit_config_fn=lambda server_round: {"server-round": server_round},
            accept_failures=True,
        )
        context = LegacyContext(
            context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy
        )
        workflow = SecAggPlusWorkflow(
            # Flower counts the node itself among the shares; 1.0 is the complete graph.
            num_shares=1.0 if graph.complete else graph.degree + 1,
            reconstruction_threshold=graph.threshold,
            max_weight=float(task.deployment(num_nodes).max_weight),
            timeout=timeout,
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, context)

    return app

"""The legacy API: ``DefaultWorkflow`` with a legacy FedAvg and ``NumPyClient``s.

Where a Flower app uses ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` and
``secaggplus_mod``, it swaps in ``SecureGrid`` and ``SecAggMod``; the legacy fit workflow
then aggregates the one secure reply like any ``FitRes``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from secagg.flower import SecureGrid
from tests.flower.helpers import PARAMS, delta, node_ids, secagg_mod, weight
from tests.flower.loopback import LoopbackGrid

START = [np.arange(4, dtype=np.float32).reshape(2, 2) / 10, np.array([0.5, -0.25], np.float32)]


class DeltaClient(NumPyClient):  # type: ignore[misc]
    def __init__(self, partition: int) -> None:
        self.partition = partition

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        flat = np.concatenate([p.reshape(-1) for p in parameters]) + delta(self.partition)
        new = [flat[:4].reshape(2, 2).astype(np.float32), flat[4:].astype(np.float32)]
        return new, weight(self.partition), {}


def test_the_legacy_default_workflow_aggregates_the_secure_reply() -> None:
    nodes = node_ids(5)

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return DeltaClient(int(context.node_config["partition-id"])).to_client()

    app = ClientApp(client_fn=client_fn, mods=[secagg_mod(PARAMS)])
    grid = SecureGrid(LoopbackGrid(app, nodes), PARAMS)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(nodes),
        min_available_clients=len(nodes),
        initial_parameters=ndarrays_to_parameters(START),
    )
    context = LegacyContext(
        context=Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
    )
    DefaultWorkflow()(grid, context)

    assert [r.outcome for r in grid.reports] == ["completed"]
    arrays = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    got = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float64)
    start = np.concatenate([a.reshape(-1) for a in START]).astype(np.float64)
    partitions = list(nodes.values())
    expected = np.average(
        [delta(p) for p in partitions], axis=0, weights=[weight(p) for p in partitions]
    )
    assert np.max(np.abs(got - start - expected)) <= PARAMS.quantizer.error_bound() + 1e-6

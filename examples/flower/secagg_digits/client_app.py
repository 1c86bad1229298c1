"""The ClientApp: trains the node's share of the digits, only inside secure rounds.

In Flower's deployment engine each node's secagg deployment (its ``Params``, the allow-list
of node ids, its journal, its identity in active mode) comes from its SuperNode's own
``--node-config`` (``SecAggMod.from_node_config()``), never from the run config: see
``examples/flower/README.md``. Compared with a plain Flower app, one line differs (marked
``# secagg``).
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg import Params
from secagg.flower import SecAggMod

from .failures import failing_mod, from_node_config


def simulation_params(node_config: Mapping[str, object]) -> Params:
    """A simulated node's deployment (``SECAGG_FLOWER_SIMULATION=1`` only): the task's."""
    from . import task

    return task.deployment(int(str(node_config["num-partitions"])))


app = ClientApp(
    mods=[
        failing_mod(from_node_config),  # the example's dropouts on demand (off by default)
        # secagg: the node's own deployment, from its config
        SecAggMod.from_node_config(simulation_params=simulation_params),
    ]
)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_reply(msg, context)


def train_reply(msg: Message, context: Context) -> Message:
    """Train the global model on this node's share for one round: the trained arrays and
    the number of examples (FedAvg's weight)."""
    # Imported here: Flower's deployment engine starts a process for every message, and
    # only the round's first one trains (torch takes a second or two to import).
    from . import task

    partition = int(context.node_config["partition-id"])
    num_nodes = int(context.node_config["num-partitions"])
    model = task.new_model(num_nodes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    examples = task.train(model, partition, num_nodes, int(msg.content["config"]["server-round"]))
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content, reply_to=msg)

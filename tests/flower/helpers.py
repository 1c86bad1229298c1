"""A small task for the mod and grid tests: a 6-value model and a client app whose update
is known in advance, so every aggregate can be checked exactly."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from numpy.typing import NDArray

from secagg import Params
from secagg.flower import ArrayLayout, SecAggMod, wire
from secagg.hazmat.randomness import DeterministicRandomness

DIM = 6
PARAMS = Params(dim=DIM, max_clients=8, clip=1.0, value_bits=16, max_weight=100)
# Flower's node ids are unsigned 64-bit: use large ones, beyond a u32 and an i64.
NODE_BASE = 2**63 + 12345


def node_ids(count: int) -> dict[int, int]:
    """``count`` node ids (not in order of their partitions) -> partition id."""
    return {NODE_BASE + 7919 * ((5 * p) % count) + p: p for p in range(count)}


def model() -> ArrayRecord:
    """Four + two float32 values to aggregate, and an int64 counter that is not."""
    return ArrayRecord(
        {
            "w": Array(np.arange(4, dtype=np.float32).reshape(2, 2) / 10),
            "b": Array(np.array([0.5, -0.25], dtype=np.float32)),
            "steps": Array(np.array([7], dtype=np.int64)),
        }
    )


def task(arrays: ArrayRecord | None = None, server_round: int = 1) -> RecordDict:
    """What FedAvg sends for training: the model and its config."""
    return RecordDict(
        {
            "arrays": model() if arrays is None else arrays,
            "config": ConfigRecord({"server-round": server_round, "lr": 0.1}),
        }
    )


def delta(partition: int) -> NDArray[np.float64]:
    words = DeterministicRandomness(f"secagg/tests/flower/delta/{partition}".encode()).words(DIM)
    return (words.astype(np.float64) / 2**32 - 0.5).astype(np.float32).astype(np.float64)


def weight(partition: int) -> int:
    return 1 + partition % 4


def client_app(mods: list[Mod], trained: list[int], *, bad_weight: int | None = None) -> ClientApp:
    """A ClientApp whose update is ``delta(partition)`` with weight ``weight(partition)``;
    each training call is recorded in ``trained``."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        trained.append(partition)
        arrays = msg.content["arrays"]
        layout = ArrayLayout.of(arrays)
        new = layout.unflatten(layout.flatten(arrays) + delta(partition), like=arrays)
        examples = weight(partition) if bad_weight is None else bad_weight
        metrics = MetricRecord({"num-examples": examples})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"loss": 0.5})}), reply_to=msg)

    return app


def flat(arrays: ArrayRecord) -> NDArray[np.float64]:
    return ArrayLayout.of(arrays).flatten(arrays).astype(np.float64)


def secagg_record(message: Message) -> ConfigRecord:
    record = message.content.config_records[wire.RECORD_KEY]
    assert isinstance(record, ConfigRecord)
    return record


def secagg_mod(params: Params = PARAMS, **options: Any) -> SecAggMod:
    """A mod with a journal folder of its own and, unless the test names one, no allow-list
    (the app opts out by name, as a simulation whose nodes are all its own may)."""
    options.setdefault("journal", tempfile.mkdtemp(prefix="secagg-test-journal-"))
    if "allowed_nodes" not in options and "pki" not in options:
        options.setdefault("allow_any_node", True)
    return SecAggMod(params, **options)

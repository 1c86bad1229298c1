"""The example's task: a small PyTorch MLP on the handwritten digits, split across nodes.

Everything a Flower app needs besides its two apps: the model, each node's data (a non-IID
share of scikit-learn's bundled digits, nothing downloaded), local training, evaluation, and
the secure-aggregation deployment both sides hold.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numpy.typing import NDArray

from secagg import Params
from secagg.fl.data import Dataset, FederatedSplit, load_digits_split
from secagg.fl.fedavg import TrainingConfig
from secagg.fl.model import ModelSpec
from secagg.fl.torch import DigitsNet, sgd_train_step

SEED = 0
TRAINING = TrainingConfig(local_epochs=2, batch_size=16, learning_rate=0.3, seed=SEED)
# Every update of this task stays inside [-2, 2] (the secagg demo measured it over whole
# runs), so nothing is clipped; 16 bits over that range are steps of 6e-5.
CLIP = 2.0
VALUE_BITS = 16


@functools.cache
def split(num_nodes: int) -> FederatedSplit:
    """The digits, split across ``num_nodes`` nodes (2 labels each) and a test set."""
    return load_digits_split(num_nodes, seed=SEED)


def architecture(num_nodes: int) -> ModelSpec:
    data = split(num_nodes)
    return ModelSpec(features=data.features, classes=data.classes)


def new_model(num_nodes: int) -> DigitsNet:
    """The global model's starting point (the same on every run)."""
    return DigitsNet(architecture(num_nodes), seed=SEED)


def deployment(num_nodes: int) -> Params:
    """The secure-aggregation parameters: the server's and every client's, identical.

    ``max_weight`` bounds a node's example count (its FedAvg weight): no node holds more
    than the whole training set.
    """
    data = split(num_nodes)
    return Params(
        dim=architecture(num_nodes).dim,
        max_clients=num_nodes,
        clip=CLIP,
        value_bits=VALUE_BITS,
        max_weight=sum(data.sizes),
    )


def local_data(partition_id: int, num_nodes: int) -> Dataset:
    return split(num_nodes).clients[partition_id]


def train(model: DigitsNet, partition_id: int, num_nodes: int, server_round: int) -> int:
    """Train ``model`` in place on the node's data for one round; the examples used."""
    step = sgd_train_step(local_data(partition_id, num_nodes), TRAINING, client_index=partition_id)
    # A 64x64 model in batches of 16: more intra-op threads only add contention when
    # several simulated nodes share two cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return step(model, server_round)
    finally:
        torch.set_num_threads(previous)


def accuracy(model: DigitsNet, num_nodes: int) -> float:
    """Accuracy on the held-out test set."""
    test = split(num_nodes).test
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(test.x)))
    return float((logits.argmax(dim=1).numpy() == test.y).mean())


def state_vector(model: DigitsNet) -> NDArray[np.float32]:
    """The model's parameters as one float32 vector (name order of ``state_dict``)."""
    return np.concatenate(
        [t.detach().numpy().reshape(-1) for t in model.state_dict().values()]
    ).astype(np.float32)

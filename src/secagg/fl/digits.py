"""The digits task (``secagg demo``, and ``--task digits`` of a deployment): the model the
coordinator starts from and what each client trains.

``secagg.service.tasks`` names the tasks a deployment may run; this module is the digits one.

A client process rebuilds the same non-IID split of the digits from (clients, seed) and
trains on its own share only; nothing but the (masked) update leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from secagg.fl.data import FederatedSplit, load_digits_split
from secagg.fl.fedavg import TrainingConfig, local_update
from secagg.fl.model import ModelSpec
from secagg.updates import UpdateFn

__all__ = [
    "DEMO_CLIP",
    "DEMO_TRAINING",
    "DigitsRequirements",
    "demo_model",
    "digits_initial_model",
    "digits_median_update_norm",
    "digits_requirements",
    "digits_task",
]

# Updates of the demo's model stay well inside this range (measured over whole runs): the
# quantiser clips nothing, and 16 bits over [-2, 2] give steps of 6e-5.
DEMO_CLIP = 2.0
DEMO_TRAINING = TrainingConfig()


def demo_model(split: FederatedSplit) -> ModelSpec:
    return ModelSpec(features=split.features, classes=split.classes)


@cache
def _split(clients: int, seed: int) -> FederatedSplit:
    return load_digits_split(clients, seed=seed)


@dataclass(frozen=True)
class DigitsRequirements:
    """What a deployment must allow for the digits task: the model's size, the largest
    weight a client can send (its number of examples) and the clip range of the updates."""

    dim: int
    max_weight: int
    clip: float


def digits_requirements(clients: int, seed: int = 0) -> DigitsRequirements:
    """The digits task split over ``clients`` clients.

    A client's weight is its number of training examples. ``max_weight`` is the size of the
    whole training set, which bounds every client's share whatever the seed of the split
    (and costs at most a few bits of ring width over the largest share of one seed).
    """
    split = _split(clients, seed)
    return DigitsRequirements(
        dim=demo_model(split).dim, max_weight=sum(split.sizes), clip=DEMO_CLIP
    )


def digits_initial_model(clients: int, seed: int = 0) -> NDArray[np.float32]:
    """The model the coordinator starts the digits task from (random weights: a network
    started at zero would keep every hidden unit identical)."""
    return demo_model(_split(clients, seed)).init(seed)


def digits_task(client_id: int, clients: int, seed: int) -> UpdateFn:
    split = _split(clients, seed)
    spec = demo_model(split)
    data = split.clients[client_id]
    config = TrainingConfig(
        local_epochs=DEMO_TRAINING.local_epochs,
        batch_size=DEMO_TRAINING.batch_size,
        learning_rate=DEMO_TRAINING.learning_rate,
        seed=seed,
    )

    def update(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        return local_update(spec, model, data, config, round_index=step, client_index=client_id)

    return update


@cache
def digits_median_update_norm(clients: int, seed: int = 0) -> float:
    """The median L2 norm of the clients' first-round updates (from the initial model): the
    L2 clip distributed DP starts from on this task (docs/DP_GUIDE.md; about half the
    clients are scaled down a little, none by much).

    It is computed from the clients' own data, which a real deployment would not have in
    one place: there, take it from public data or a non-private pilot. The demo and
    ``secagg certs --task digits`` hold every share anyway, so they use it.
    """
    model = digits_initial_model(clients, seed)
    norms = [
        float(np.linalg.norm(np.asarray(digits_task(c, clients, seed)(model, 0)[0], np.float64)))
        for c in range(clients)
    ]
    return float(np.median(norms))

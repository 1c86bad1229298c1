"""Synthetic client updates for exercising the service without a model.

Client i's update at training step s is reproducible from (seed, i, s), so a test or a load
benchmark can compute the exact mean the coordinator should reveal.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.randomness import DeterministicRandomness
from secagg.service.client import UpdateFn

__all__ = ["random_task", "random_update", "random_weight"]


def random_update(client_id: int, dim: int, step: int, seed: int) -> NDArray[np.float32]:
    """Uniform in (-0.5, 0.5): well inside the default clip range."""
    key = hashlib.sha256(f"secagg/task/random/{seed}/{client_id}/{step}".encode()).digest()
    words = DeterministicRandomness(key).words(dim)
    return (words.astype(np.float64) / 2**32 - 0.5).astype(np.float32)


def random_weight(client_id: int) -> int:
    return 1 + client_id % 3


def random_task(client_id: int, dim: int, seed: int) -> UpdateFn:
    def update(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        del model  # the synthetic update does not depend on the model
        return random_update(client_id, dim, step, seed), random_weight(client_id)

    return update

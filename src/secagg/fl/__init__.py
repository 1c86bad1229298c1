"""Federated learning on top of secure aggregation: data, model, local training, FedAvg.

The server of a secure round learns only the weighted mean of the clients' updates; this
package supplies what those updates are: a small numpy classifier over one flat float32
parameter vector (``model``), the handwritten digits split across clients (``data``, needs
the ``fl`` extra: scikit-learn bundles the dataset), client-side SGD and a plaintext FedAvg
reference to compare secure runs against (``fedavg``). Nothing here is secret, so seeded
numpy randomness makes every run reproducible.
"""

from __future__ import annotations

from secagg.fl.data import Dataset, FederatedSplit, load_digits_split
from secagg.fl.fedavg import (
    RoundAccuracy,
    TrainingConfig,
    apply_update,
    local_update,
    plaintext_fedavg,
    weighted_mean,
)
from secagg.fl.model import ModelSpec, model_hash

__all__ = [
    "Dataset",
    "FederatedSplit",
    "ModelSpec",
    "RoundAccuracy",
    "TrainingConfig",
    "apply_update",
    "load_digits_split",
    "local_update",
    "model_hash",
    "plaintext_fedavg",
    "weighted_mean",
]

"""The handwritten digits, split across federated clients.

scikit-learn bundles the UCI digits (1,797 8x8 images, 10 classes) inside its wheel, so the
data ships with an installed package and nothing is downloaded. Features are pixel
intensities 0..16, scaled to [0, 1].

The non-IID split is the "shards" split of McMahan et al. (2017): sort the training set by
label, cut it into ``clients * labels_per_client`` contiguous shards and deal each client
``labels_per_client`` of them, so most clients see only about that many labels. Shard sizes
are drawn at random (between about half and one and a half times the average), so clients
also hold different numbers of examples and the *weighted* mean differs from the plain one.

Nothing here is secret: numpy's seeded generator makes every split reproducible.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.checks import is_any_int
from secagg.errors import ConfigurationError
from secagg.extras import require

__all__ = ["Dataset", "FederatedSplit", "load_digits_split"]


@dataclass(frozen=True, repr=False, eq=False)
class Dataset:
    """Examples ``x`` (n x features, float32) and labels ``y`` (n, int64), both read-only.

    The arrays are copied on construction and frozen, so a dataset cannot change under a
    training run that holds it. ``repr`` shows shapes only: a dataset is too big to print.
    """

    x: NDArray[np.float32] = field(repr=False)
    y: NDArray[np.int64] = field(repr=False)

    def __post_init__(self) -> None:
        x = np.array(self.x, dtype=np.float32, order="C", copy=True)
        y_in = np.asarray(self.y)
        if x.ndim != 2:
            raise ConfigurationError(f"x must be 2-D (examples x features), got shape {x.shape}")
        if y_in.ndim != 1 or len(y_in) != len(x):
            raise ConfigurationError(f"y must have shape ({len(x)},), got {y_in.shape}")
        if len(y_in) and y_in.dtype.kind not in "iu":
            raise ConfigurationError(f"labels must be integers, got dtype {y_in.dtype}")
        y = np.array(y_in, dtype=np.int64, copy=True)
        if len(y) and y.min() < 0:
            raise ConfigurationError("labels must be non-negative")
        if not np.all(np.isfinite(x)):
            raise ConfigurationError("x must be finite")
        x.flags.writeable = False
        y.flags.writeable = False
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Dataset(x={self.x.shape}, y={self.y.shape})"

    @property
    def features(self) -> int:
        return int(self.x.shape[1])

    def labels(self) -> frozenset[int]:
        """The distinct labels present."""
        return frozenset(int(label) for label in np.unique(self.y))

    def subset(self, indices: NDArray[np.integer[Any]]) -> Dataset:
        return Dataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class FederatedSplit:
    """One training set per client, a shared held-out test set, and the problem's shape."""

    clients: tuple[Dataset, ...]
    test: Dataset
    classes: int
    features: int

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each client's number of examples: its weight in FedAvg."""
        return tuple(len(client) for client in self.clients)


@functools.cache
def _digits() -> Dataset:
    require("fl", "the digits data")
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    bunch = load_digits()
    # Pixel intensities are 0..16; [0, 1] keeps the first layer's inputs well scaled.
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(x.astype(np.float32), y)


def load_digits_split(
    clients: int,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    labels_per_client: int = 2,
    non_iid: bool = True,
) -> FederatedSplit:
    """Split the digits into ``clients`` training sets and a stratified test set.

    Every training example goes to exactly one client. With ``non_iid`` (the default) the
    clients get label-sorted shards (see the module docstring); otherwise a uniform random
    partition into near-equal parts. ``labels_per_client`` only matters for ``non_iid``.
    """
    if not is_any_int(clients) or clients < 1:
        raise ConfigurationError(f"clients must be an int >= 1, got {clients!r}")
    if not is_any_int(seed) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative int, got {seed!r}")
    if not is_any_int(labels_per_client) or labels_per_client < 1:
        raise ConfigurationError(
            f"labels_per_client must be an int >= 1, got {labels_per_client!r}"
        )
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0.0 < test_fraction < 1.0
    ):
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction!r}")

    data = _digits()
    classes = int(data.y.max()) + 1
    rng = np.random.default_rng(seed)
    train_idx, test_idx = _stratified_split(data.y, test_fraction, classes, rng)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise ConfigurationError(f"test_fraction {test_fraction} leaves an empty set")

    shards = clients * labels_per_client if non_iid else clients
    if shards > len(train_idx):
        raise ConfigurationError(
            f"{shards} shards for {len(train_idx)} training examples: use fewer clients"
            + (" or labels_per_client" if non_iid else "")
        )
    if non_iid:
        parts = _shards(train_idx, data.y, clients, labels_per_client, rng)
    else:
        parts = np.array_split(rng.permutation(train_idx), clients)
    return FederatedSplit(
        clients=tuple(data.subset(np.sort(part)) for part in parts),
        test=data.subset(np.sort(test_idx)),
        classes=classes,
        features=data.features,
    )


def _stratified_split(
    y: NDArray[np.int64], fraction: float, classes: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    # Per class, so the test set's label mix matches the whole set's (accuracy on a skewed
    # test set would reward a model that has only learned the common digits).
    train: list[NDArray[np.int64]] = []
    test: list[NDArray[np.int64]] = []
    for label in range(classes):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = math.floor(fraction * len(members) + 0.5)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _shards(
    train_idx: NDArray[np.int64],
    y: NDArray[np.int64],
    clients: int,
    per_client: int,
    rng: np.random.Generator,
) -> list[NDArray[np.int64]]:
    shards = clients * per_client
    # Shuffle before the stable sort, so the examples of one label are in random order and a
    # shard holding part of a label gets a random part of it.
    shuffled = rng.permutation(train_idx)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    sizes = _random_sizes(len(by_label), shards, rng)
    cuts = np.cumsum(sizes)[:-1]
    pieces = np.split(by_label, cuts)
    order = rng.permutation(shards)
    return [
        np.concatenate([pieces[s] for s in order[c * per_client : (c + 1) * per_client]])
        for c in range(clients)
    ]


def _random_sizes(total: int, parts: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """``parts`` sizes >= 1 summing to ``total``, each about 0.5x-1.5x the average."""
    share = rng.uniform(0.5, 1.5, parts)
    spare = total - parts  # one example each first, so no shard is ever empty
    exact = share / share.sum() * spare
    sizes: NDArray[np.int64] = np.floor(exact).astype(np.int64)
    # Largest remainders get the leftover examples, so the sizes sum to ``total`` exactly.
    leftover = spare - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:leftover]] += 1
    sizes += 1
    return sizes

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.errors import ConfigurationError
from secagg.fl.data import Dataset, FederatedSplit, load_digits_split

pytest.importorskip("sklearn")

DIGITS = 1797


def rows(*datasets: Dataset) -> np.ndarray[Any, Any]:
    """Every (pixels, label) row of the datasets, in a canonical order: a multiset."""
    table = np.concatenate([np.hstack([d.x, d.y[:, None].astype(np.float32)]) for d in datasets])
    return table[np.lexsort(table.T[::-1])]


def all_digits() -> Dataset:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    bunch = load_digits()
    return Dataset((bunch.data / 16.0).astype(np.float32), bunch.target)


def assert_same_split(a: FederatedSplit, b: FederatedSplit) -> None:
    assert len(a.clients) == len(b.clients)
    for left, right in zip((*a.clients, a.test), (*b.clients, b.test), strict=True):
        np.testing.assert_array_equal(left.x, right.x)
        np.testing.assert_array_equal(left.y, right.y)


def test_split_is_deterministic_for_a_seed() -> None:
    assert_same_split(load_digits_split(10, seed=3), load_digits_split(10, seed=3))
    assert_same_split(
        load_digits_split(7, seed=3, non_iid=False), load_digits_split(7, seed=3, non_iid=False)
    )


def test_another_seed_gives_another_split() -> None:
    a, b = load_digits_split(10, seed=0), load_digits_split(10, seed=1)
    assert a.sizes != b.sizes or any(
        not np.array_equal(x.y, y.y) for x, y in zip(a.clients, b.clients, strict=True)
    )


@pytest.mark.parametrize(("clients", "non_iid"), [(10, True), (1, True), (23, True), (10, False)])
def test_clients_and_test_set_partition_the_digits(clients: int, non_iid: bool) -> None:
    split = load_digits_split(clients, non_iid=non_iid)
    assert len(split.clients) == clients
    assert sum(split.sizes) + len(split.test) == DIGITS
    # As multisets of (pixels, label) rows: every example is used exactly once, so the test
    # set is disjoint from the training data and no training example is lost or duplicated.
    np.testing.assert_array_equal(rows(*split.clients, split.test), rows(all_digits()))


def test_features_are_scaled_to_the_unit_interval() -> None:
    split = load_digits_split(5)
    assert (split.features, split.classes) == (64, 10)
    for data in (*split.clients, split.test):
        assert data.x.dtype == np.float32 and data.y.dtype == np.int64
        assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert max(float(d.x.max()) for d in split.clients) == 1.0


def test_test_set_is_stratified_by_label() -> None:
    split = load_digits_split(10, test_fraction=0.25)
    everything = all_digits()
    expected = np.bincount(everything.y) * 0.25
    assert np.all(np.abs(np.bincount(split.test.y, minlength=10) - expected) <= 0.5)


def test_non_iid_clients_see_few_labels() -> None:
    split = load_digits_split(10, labels_per_client=2)
    labels = [len(client.labels()) for client in split.clients]
    # A shard may straddle the boundary between two labels, so a client can see up to 4.
    assert max(labels) <= 4
    assert float(np.mean(labels)) <= 3.0
    assert all(len(c.labels()) == 10 for c in load_digits_split(10, non_iid=False).clients)


def test_non_iid_clients_hold_different_numbers_of_examples() -> None:
    sizes = load_digits_split(10).sizes
    assert max(sizes) >= 1.3 * min(sizes)
    assert min(sizes) >= 1


def test_iid_clients_hold_near_equal_shares() -> None:
    sizes = load_digits_split(7, non_iid=False).sizes
    assert max(sizes) - min(sizes) <= 1


def test_every_client_gets_at_least_one_example_with_one_shard_per_example() -> None:
    train = DIGITS - len(load_digits_split(1).test)
    split = load_digits_split(train // 2, labels_per_client=2)
    assert min(split.sizes) >= 2 and sum(split.sizes) == train


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clients": 0},
        {"clients": -1},
        {"clients": True},
        {"clients": 2.0},
        {"clients": 700, "labels_per_client": 2},  # 1,400 shards for 1,348 examples
        {"clients": 1349, "non_iid": False},
        {"clients": 10, "labels_per_client": 0},
        {"clients": 10, "test_fraction": 0.0},
        {"clients": 10, "test_fraction": 1.0},
        {"clients": 10, "test_fraction": float("nan")},
        {"clients": 10, "seed": -1},
    ],
)
def test_bad_arguments_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        load_digits_split(**kwargs)


def test_dataset_repr_shows_only_shapes() -> None:
    data = Dataset(np.full((3, 2), 0.123456, dtype=np.float32), np.array([0, 1, 2]))
    assert repr(data) == "Dataset(x=(3, 2), y=(3,))"
    assert len(data) == 3 and data.features == 2


def test_dataset_is_a_read_only_copy() -> None:
    x, y = np.zeros((2, 2), dtype=np.float32), np.array([0, 1])
    data = Dataset(x, y)
    x[0, 0], y[0] = 5.0, 7
    assert data.x[0, 0] == 0.0 and data.y[0] == 0
    with pytest.raises(ValueError, match="read-only"):
        data.x[0, 0] = 1.0


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (np.zeros(3), np.zeros(3, dtype=int)),
        (np.zeros((3, 2)), np.zeros(2, dtype=int)),
        (np.zeros((3, 2)), np.zeros(3)),
        (np.zeros((3, 2)), np.array([0, -1, 0])),
        (np.full((3, 2), np.nan), np.zeros(3, dtype=int)),
    ],
)
def test_dataset_rejects_malformed_arrays(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Dataset(x, y)

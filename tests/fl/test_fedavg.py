from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from secagg.errors import ConfigurationError
from secagg.fl.data import Dataset, FederatedSplit, load_digits_split
from secagg.fl.fedavg import (
    RoundAccuracy,
    TrainingConfig,
    apply_update,
    local_update,
    plaintext_fedavg,
    weighted_mean,
)
from secagg.fl.model import ModelSpec

pytest.importorskip("sklearn")

CLIENTS, ROUNDS = 10, 10
# The secure aggregation's default clip: values outside [-1, 1] would be clipped.
DEFAULT_CLIP = 1.0


@pytest.fixture(scope="module")
def split() -> FederatedSplit:
    return load_digits_split(CLIENTS, seed=0)


@pytest.fixture(scope="module")
def spec(split: FederatedSplit) -> ModelSpec:
    return ModelSpec(split.features, split.classes)


@pytest.fixture(scope="module")
def history(spec: ModelSpec, split: FederatedSplit) -> list[RoundAccuracy]:
    return plaintext_fedavg(spec, split, TrainingConfig(), rounds=ROUNDS)


def update_of(
    spec: ModelSpec, data: Dataset, *, seed: int = 0, round_index: int = 0, client_index: int = 0
) -> tuple[np.ndarray[Any, Any], int]:
    return local_update(
        spec,
        spec.init(0),
        data,
        TrainingConfig(seed=seed),
        round_index=round_index,
        client_index=client_index,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"local_epochs": 0},
        {"batch_size": 0},
        {"batch_size": 1.5},
        {"learning_rate": 0.0},
        {"learning_rate": -0.1},
        {"learning_rate": float("inf")},
        {"learning_rate": True},
        {"seed": -1},
    ],
)
def test_bad_training_configs_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        TrainingConfig(**kwargs)


def test_local_update_is_deterministic_for_seed_round_and_client(
    spec: ModelSpec, split: FederatedSplit
) -> None:
    data = split.clients[3]
    first, weight = update_of(spec, data, seed=1, round_index=2, client_index=3)
    again, _ = update_of(spec, data, seed=1, round_index=2, client_index=3)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape == (spec.dim,)
    assert weight == len(data)
    for other in ({"seed": 2}, {"round_index": 3}, {"client_index": 4}):
        changed = {"seed": 1, "round_index": 2, "client_index": 3, **other}
        assert not np.array_equal(update_of(spec, data, **changed)[0], first)


def test_local_update_weight_is_the_clients_example_count(
    spec: ModelSpec, split: FederatedSplit
) -> None:
    for c, data in enumerate(split.clients):
        assert update_of(spec, data, client_index=c)[1] == len(data) == split.sizes[c]


def test_local_update_lowers_the_clients_loss_and_leaves_the_global_model_alone(
    spec: ModelSpec, split: FederatedSplit
) -> None:
    data, start = split.clients[0], spec.init(0)
    before = start.copy()
    update, _ = local_update(spec, start, data, TrainingConfig(), round_index=0, client_index=0)
    np.testing.assert_array_equal(start, before)
    loss_before, _ = spec.loss_and_grad(start, data.x, data.y)
    loss_after, _ = spec.loss_and_grad(apply_update(start, update), data.x, data.y)
    assert loss_after < 0.5 * loss_before


def test_client_without_data_sends_a_zero_update_of_weight_zero(spec: ModelSpec) -> None:
    empty = Dataset(np.zeros((0, spec.features), dtype=np.float32), np.zeros(0, dtype=np.int64))
    update, weight = update_of(spec, empty)
    assert weight == 0 and update.shape == (spec.dim,) and not update.any()


def test_local_update_rejects_a_mismatched_model(spec: ModelSpec, split: FederatedSplit) -> None:
    with pytest.raises(ConfigurationError):
        local_update(
            spec,
            np.zeros(3, dtype=np.float32),
            split.clients[0],
            TrainingConfig(),
            round_index=0,
            client_index=0,
        )
    with pytest.raises(ConfigurationError):
        update_of(spec, split.clients[0], round_index=-1)


def test_a_local_update_takes_one_vectorised_gradient_per_minibatch(
    monkeypatch: pytest.MonkeyPatch, spec: ModelSpec, split: FederatedSplit
) -> None:
    # Counted rather than timed: each epoch computes one gradient per minibatch of up to
    # batch_size examples at once, never one per example.
    data = max(split.clients, key=len)
    config = TrainingConfig()
    batches: list[int] = []
    gradient = ModelSpec._loss_and_grad64

    def counted(self: ModelSpec, params: Any, x: Any, y: Any) -> Any:
        batches.append(len(y))
        return gradient(self, params, x, y)

    monkeypatch.setattr(ModelSpec, "_loss_and_grad64", counted)
    update_of(spec, data)
    assert len(batches) == config.local_epochs * math.ceil(len(data) / config.batch_size)
    assert sum(batches) == config.local_epochs * len(data)
    assert max(batches) == config.batch_size


def test_weighted_mean_weights_by_example_count() -> None:
    updates = [np.array([1.0, 0.0], dtype=np.float32), np.array([0.0, 4.0], dtype=np.float32)]
    mean = weighted_mean(updates, [3, 1])
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, [0.75, 1.0], rtol=0, atol=1e-15)
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [0, 0])
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [1])
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [1, -1])


def test_apply_update_adds_the_mean_update() -> None:
    start = np.array([1.0, 2.0], dtype=np.float32)
    result = apply_update(start, np.array([0.5, -0.25]))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, [1.5, 1.75])
    with pytest.raises(ConfigurationError):
        apply_update(start, np.zeros(3))
    with pytest.raises(ConfigurationError):
        apply_update(start, np.array([np.nan, 0.0]))


def test_fedavg_on_non_iid_digits_reaches_85_percent_in_10_rounds(
    history: list[RoundAccuracy],
) -> None:
    assert [r.round for r in history] == list(range(ROUNDS))
    assert all(r.included == CLIENTS for r in history)
    assert history[0].accuracy < history[-1].accuracy
    assert history[-1].accuracy >= 0.85


def test_client_updates_with_the_defaults_fit_inside_the_default_clip(
    history: list[RoundAccuracy],
) -> None:
    largest = max(r.max_abs_update for r in history)
    assert 0 < largest < 0.9 * DEFAULT_CLIP


def test_fedavg_is_deterministic(
    spec: ModelSpec, split: FederatedSplit, history: list[RoundAccuracy]
) -> None:
    again = plaintext_fedavg(spec, split, TrainingConfig(), rounds=3)
    assert [r.accuracy for r in again] == [r.accuracy for r in history[:3]]


def test_fedavg_trains_only_the_included_clients(spec: ModelSpec, split: FederatedSplit) -> None:
    def include(round_index: int, client: int) -> bool:
        return round_index != 1 and client % 2 == 0

    history = plaintext_fedavg(spec, split, TrainingConfig(), rounds=3, include=include)
    assert [r.included for r in history] == [5, 0, 5]
    # A round without clients leaves the model, hence the accuracy, as it was.
    assert history[1].accuracy == history[0].accuracy
    assert history[1].max_abs_update == 0.0


def test_fedavg_step_is_the_weighted_mean_of_local_updates(split: FederatedSplit) -> None:
    spec, config = ModelSpec(split.features, split.classes, hidden=8), TrainingConfig()
    start = spec.init(config.seed)
    updates = [
        local_update(spec, start, data, config, round_index=0, client_index=c)
        for c, data in enumerate(split.clients)
    ]
    mean = weighted_mean([u for u, _ in updates], [w for _, w in updates])
    expected = spec.accuracy(apply_update(start, mean), split.test)
    assert plaintext_fedavg(spec, split, config, rounds=1)[0].accuracy == expected


def test_fedavg_rejects_a_model_for_other_data(split: FederatedSplit) -> None:
    with pytest.raises(ConfigurationError):
        plaintext_fedavg(ModelSpec(32, 10), split, TrainingConfig(), rounds=1)
    with pytest.raises(ConfigurationError):
        plaintext_fedavg(ModelSpec(64, 10), split, TrainingConfig(), rounds=-1)

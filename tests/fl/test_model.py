from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from secagg.errors import ConfigurationError
from secagg.fl.data import Dataset
from secagg.fl.model import ModelSpec, model_hash
from secagg.hazmat.kdf import encode_fields


def batch(spec: ModelSpec, n: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)  # test inputs, nothing secret
    return rng.uniform(0, 1, (n, spec.features)), rng.integers(0, spec.classes, n)


def test_dim_counts_every_weight_and_bias() -> None:
    assert ModelSpec(64, 10).dim == 64 * 64 + 64 + 64 * 10 + 10
    assert ModelSpec(64, 10, hidden=32).dim == 64 * 32 + 32 + 32 * 10 + 10
    assert ModelSpec(64, 10, hidden=0).dim == 64 * 10 + 10


@pytest.mark.parametrize(
    "args", [(0, 10, 8), (64, 1, 8), (64, 10, -1), (64.0, 10, 8), (True, 10, 8), (64, 10, 2.5)]
)
def test_bad_architectures_are_configuration_errors(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ModelSpec(*args)


@pytest.mark.parametrize("hidden", [0, 16])
def test_init_is_a_deterministic_small_float32_vector(hidden: int) -> None:
    spec = ModelSpec(64, 10, hidden)
    params = spec.init(3)
    assert params.dtype == np.float32 and params.shape == (spec.dim,)
    np.testing.assert_array_equal(params, spec.init(3))
    assert not np.array_equal(params, spec.init(4))
    assert 0 < float(np.abs(params).max()) < 2.0
    # Small output weights: the untrained model is close to uniform over the classes.
    x, y = batch(spec, 200, 0)
    loss, _ = spec.loss_and_grad(params, x, y)
    assert abs(loss - math.log(10)) < 0.5


@pytest.mark.parametrize("hidden", [0, 4])
def test_gradient_matches_central_finite_differences(hidden: int) -> None:
    spec = ModelSpec(5, 3, hidden)
    x, y = batch(spec, 7, 1)
    rng = np.random.default_rng(2)
    # Nonzero biases, so the check covers them as well as the weights.
    params = (spec.init(0) + rng.normal(0, 0.3, spec.dim)).astype(np.float32)
    _, grad = spec.loss_and_grad(params, x, y)
    assert grad.dtype == np.float32 and grad.shape == params.shape
    numeric = np.empty(spec.dim)
    for i in range(spec.dim):
        up, down = params.copy(), params.copy()
        up[i] += np.float32(1e-3)
        down[i] -= np.float32(1e-3)
        # The step actually taken, after float32 rounding of params +- eps.
        step = float(up[i]) - float(down[i])
        numeric[i] = (spec.loss_and_grad(up, x, y)[0] - spec.loss_and_grad(down, x, y)[0]) / step
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_loss_is_mean_cross_entropy() -> None:
    spec = ModelSpec(2, 2, hidden=0)
    params = np.array([1, 0, 0, 1, 0, 0], dtype=np.float32)  # logits = x
    x, y = np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([0, 1])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert spec.loss_and_grad(params, x, y)[0] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(spec.logits(params, x), x)


def test_loss_does_not_overflow_for_huge_logits() -> None:
    spec = ModelSpec(1, 2, hidden=0)
    params = np.array([1000.0, -1000.0, 0.0, 0.0], dtype=np.float32)
    loss, grad = spec.loss_and_grad(params, np.array([[1.0]]), np.array([1]))
    assert loss == pytest.approx(2000.0)
    assert np.all(np.isfinite(grad))


def test_accuracy_is_the_fraction_of_argmax_hits() -> None:
    spec = ModelSpec(2, 2, hidden=0)
    params = np.array([1, 0, 0, 1, 0, 0], dtype=np.float32)  # predicts the hot coordinate
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    assert spec.accuracy(params, Dataset(x, np.array([0, 1, 0, 1]))) == 1.0
    assert spec.accuracy(params, Dataset(x, np.array([0, 1, 1, 1]))) == 0.75


@pytest.mark.parametrize(
    ("params_len", "x_shape", "y"),
    [
        (5, (3, 2), [0, 1, 0]),  # wrong parameter count
        (6, (3, 3), [0, 1, 0]),  # wrong feature count
        (6, (3, 2), [0, 1]),  # labels do not match the examples
        (6, (3, 2), [0, 2, 0]),  # label out of range
        (6, (0, 2), []),  # empty batch
    ],
)
def test_malformed_arguments_are_configuration_errors(
    params_len: int, x_shape: tuple[int, int], y: list[int]
) -> None:
    spec = ModelSpec(2, 2, hidden=0)
    with pytest.raises(ConfigurationError):
        spec.loss_and_grad(
            np.zeros(params_len, dtype=np.float32), np.zeros(x_shape), np.array(y, dtype=int)
        )


def test_model_hash_is_stable_and_canonical() -> None:
    params = np.arange(4, dtype=np.float32) / 3
    digest = model_hash(params)
    assert len(digest) == 32
    expected = hashlib.sha256(
        encode_fields("secagg/v1/model", "<f4", 1, 4, params.astype("<f4").tobytes())
    ).digest()
    assert digest == expected
    assert digest.hex() == "7cde068a526102240078ef830e03046efb2623d074168319bf2aa67360de6d7f"
    # The same values hash the same whatever the byte order or memory layout.
    assert model_hash(params.astype(">f4")) == digest
    assert model_hash(np.repeat(params, 2)[::2]) == digest


def test_model_hash_changes_with_any_parameter_dtype_or_shape() -> None:
    params = ModelSpec(5, 3, hidden=4).init(0)
    digest = model_hash(params)
    seen = {digest}
    for i in range(len(params)):
        changed = params.copy()
        changed[i] = np.nextafter(changed[i], np.float32(np.inf))  # the smallest change
        seen.add(model_hash(changed))
    assert len(seen) == len(params) + 1
    assert model_hash(params.astype(np.float64)) != digest
    assert model_hash(params.reshape(1, -1)) != digest
    with pytest.raises(ConfigurationError):
        model_hash(np.zeros(3, dtype=np.int32))

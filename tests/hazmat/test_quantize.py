from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.errors import ConfigurationError, UsageError
from secagg.hazmat.quantize import EncodedInput, Quantizer
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.ring import Ring


def rng(label: str = "quantize") -> DeterministicRandomness:
    return DeterministicRandomness(b"quantize test randomness").fork(label)


def data(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, n)  # test inputs, nothing secret


@pytest.mark.parametrize(
    ("clip", "bits"),
    [(0.0, 8), (-1.0, 8), (float("nan"), 8), (float("inf"), 8), (1.0, 0), (1.0, 32), (1.0, True)],
)
def test_invalid_clip_or_bits_are_rejected(clip: float, bits: int) -> None:
    with pytest.raises(ConfigurationError):
        Quantizer(clip, bits)


def test_levels_and_step() -> None:
    q = Quantizer(1.5, 4)
    assert q.levels == 15
    assert q.step == pytest.approx(0.2)
    assert q.error_bound() == q.step


def test_encoded_vector_layout() -> None:
    q, ring = Quantizer(1.0, 8), Ring(20)
    encoded = q.encode(data(1000, 0), 7, ring, rng())
    vector = encoded.vector
    assert vector.dtype == ring.dtype
    assert vector.shape == (1001,)
    assert vector[-1] == 7
    assert np.all(vector[:-1] % 7 == 0)
    assert vector[:-1].max() <= 7 * q.levels


def test_values_on_the_grid_decode_exactly() -> None:
    q, ring = Quantizer(2.0, 6), Ring(16)
    grid = np.random.default_rng(1).integers(0, q.levels + 1, 500)
    values = grid * q.step - q.clip
    encoded = q.encode(values, 3, ring, rng())
    np.testing.assert_array_equal(encoded.vector[:-1], 3 * grid)
    np.testing.assert_allclose(q.decode(encoded.vector), values, rtol=0, atol=1e-12)


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbouring_level() -> None:
    q, ring = Quantizer(1.0, 4), Ring(8)
    v = 0.3  # between levels 9 (0.2) and 10 (0.333...); fraction 0.75
    decoded = q.decode(q.encode(np.full(200_000, v), 1, ring, rng()).vector)
    lower, upper = 9 * q.step - q.clip, 10 * q.step - q.clip
    assert np.all(np.isclose(decoded, lower) | np.isclose(decoded, upper))
    assert np.mean(np.isclose(decoded, upper)) == pytest.approx(0.75, abs=0.006)
    # Sigma of the mean is step * sqrt(0.75 * 0.25 / n) ~ 1.3e-4.
    assert abs(decoded.mean() - v) < 1e-3


def test_rounding_randomness_comes_from_the_given_source() -> None:
    q, ring = Quantizer(1.0, 8), Ring(16)
    values = data(100, 2)
    a = q.encode(values, 1, ring, rng("a")).vector
    assert np.array_equal(a, q.encode(values, 1, ring, rng("a")).vector)
    assert not np.array_equal(a, q.encode(values, 1, ring, rng("b")).vector)


def test_clipped_values_are_counted_and_decode_to_the_bounds() -> None:
    q, ring = Quantizer(1.0, 8), Ring(16)
    values = np.array([-5.0, 5.0, 0.0, 1.0, -1.0, 1.0000001])
    encoded = q.encode(values, 1, ring, rng())
    assert encoded.clipped == 3
    decoded = q.decode(encoded.vector)
    assert decoded[0] == pytest.approx(-1.0)
    assert decoded[1] == pytest.approx(1.0)
    assert decoded[3] == pytest.approx(1.0)
    assert decoded[5] == pytest.approx(1.0)


def test_weighted_mean_of_several_clients_is_within_the_error_bound() -> None:
    q, ring = Quantizer(0.5, 10), Ring(32)
    weights = [1, 5, 17, 1000, 3]
    inputs = [data(2000, seed, scale=0.4) for seed in range(len(weights))]
    total = ring.zeros(2001)
    for i, (values, weight) in enumerate(zip(inputs, weights, strict=True)):
        ring.add_into(total, q.encode(values, weight, ring, rng(f"client-{i}")).vector)
    exact = sum(w * np.clip(v, -q.clip, q.clip) for v, w in zip(inputs, weights, strict=True))
    exact = exact / sum(weights)
    error = np.abs(q.decode(total) - exact)
    assert error.max() < q.error_bound()
    # One stochastic rounding errs by step/3 on average; the weighted mean by no more.
    assert error.mean() < q.error_bound() / 2


def test_largest_weight_and_level_are_encoded_exactly() -> None:
    # 31-bit levels times a 2^31-1 weight exceed float64's mantissa: the product is integer.
    q, ring = Quantizer(1.0, 31), Ring(62)
    weight = 2**31 - 1
    vector = q.encode(np.array([1.0, -1.0]), weight, ring, rng()).vector
    assert vector.tolist() == [weight * q.levels, 0, weight]


def test_zero_weight_gives_a_zero_vector() -> None:
    vector = Quantizer(1.0, 8).encode(data(10, 3), 0, Ring(16), rng()).vector
    assert not vector.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_inputs_are_rejected(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="NaN or infinity"):
        Quantizer(1.0, 8).encode(np.array([0.0, bad]), 1, Ring(16), rng())


@pytest.mark.parametrize("weight", [-1, 2**31, 1.5, True, None])
def test_weights_must_be_ints_in_0_to_2_to_the_31(weight: Any) -> None:
    with pytest.raises(UsageError):
        Quantizer(1.0, 8).encode(np.zeros(3), weight, Ring(62), rng())


def test_weight_times_levels_must_fit_the_ring() -> None:
    q, ring = Quantizer(1.0, 8), Ring(10)  # 255 levels, modulus 1024
    q.encode(np.zeros(3), 4, ring, rng())  # 1020 fits
    with pytest.raises(UsageError):
        q.encode(np.zeros(3), 5, ring, rng())  # 1275 does not


def test_values_must_be_one_dimensional() -> None:
    with pytest.raises(UsageError):
        Quantizer(1.0, 8).encode(np.zeros((2, 2)), 1, Ring(16), rng())


def test_input_array_is_not_modified() -> None:
    values = np.array([-3.0, 0.25, 3.0])
    Quantizer(1.0, 8).encode(values, 1, Ring(16), rng())
    assert values.tolist() == [-3.0, 0.25, 3.0]


def test_decode_rejects_zero_total_weight() -> None:
    with pytest.raises(ConfigurationError, match="total weight is zero"):
        Quantizer(1.0, 8).decode(np.zeros(4, dtype=np.uint32))


def test_decode_rejects_empty_or_multidimensional_totals() -> None:
    with pytest.raises(UsageError):
        Quantizer(1.0, 8).decode(np.zeros(0, dtype=np.uint32))
    with pytest.raises(UsageError):
        Quantizer(1.0, 8).decode(np.ones((2, 2), dtype=np.uint32))


def test_encoded_input_repr_does_not_print_the_vector() -> None:
    vector = np.array([123456, 654321, 1], dtype=np.uint32)
    text = repr(EncodedInput(vector=vector, clipped=0))
    assert "123456" not in text
    assert "654321" not in text
    assert "clipped=0" in text

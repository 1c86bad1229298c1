from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from secagg.dp import rotation
from secagg.dp.rotation import padded_dimension, rotate, unrotate
from secagg.errors import UsageError

SEED = bytes(range(32))


def data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, n)  # test inputs, nothing secret


def sylvester(size: int) -> np.ndarray:
    h = np.ones((1, 1))
    while len(h) < size:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize(
    ("dim", "padded"), [(1, 1), (2, 2), (3, 4), (64, 64), (65, 128), (100_000, 131_072)]
)
def test_the_rotation_pads_to_the_next_power_of_two(dim: int, padded: int) -> None:
    assert padded_dimension(dim) == padded
    assert rotate(np.ones(dim), SEED).shape == (padded,)


class _CountingNumpy:
    """numpy, for the rotation module, counting ``copyto``: one per Hadamard pass."""

    def __init__(self) -> None:
        self.copies = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def copyto(self, *args: Any, **kwargs: Any) -> None:
        self.copies += 1
        np.copyto(*args, **kwargs)


def test_rotation_then_unrotation_is_exact_at_100k_values_in_17_whole_array_passes_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Counted rather than timed: the Walsh-Hadamard transform of 2**17 values is 17 passes,
    # each a few whole-array operations (n log n work in log n numpy calls), in each
    # direction, where a loop over the values would make millions of calls.
    counting = _CountingNumpy()
    monkeypatch.setattr(rotation, "np", counting)
    x = data(100_000, 1)
    rotated = rotate(x, SEED)
    assert counting.copies == 17
    back = unrotate(rotated, SEED, len(x))
    assert counting.copies == 2 * 17
    assert back.shape == x.shape
    assert np.max(np.abs(back - x)) < 1e-9


@pytest.mark.parametrize("dim", [1, 5, 1000, 4096])
def test_the_rotation_preserves_the_l2_norm(dim: int) -> None:
    x = data(dim, dim)
    assert np.linalg.norm(rotate(x, SEED)) == pytest.approx(np.linalg.norm(x), rel=1e-12)


def test_the_rotation_is_the_hadamard_matrix_times_random_signs_over_sqrt_d() -> None:
    size = 64
    columns = np.stack([rotate(np.eye(size)[i], SEED) for i in range(size)], axis=1)
    # Orthonormal.
    np.testing.assert_allclose(columns @ columns.T, np.eye(size), atol=1e-12)
    # Column j is +-(column j of H) / sqrt(D): a flat spread of any single coordinate.
    ratio = columns * math.sqrt(size) / sylvester(size)
    np.testing.assert_allclose(np.abs(ratio), 1.0, atol=1e-12)
    signs = np.sign(ratio[0])
    np.testing.assert_allclose(ratio, np.broadcast_to(signs, ratio.shape), atol=1e-12)
    assert 0 < np.count_nonzero(signs > 0) < size


def test_a_spike_is_spread_evenly_over_every_coordinate() -> None:
    x = np.zeros(1000)
    x[123] = 5.0
    y = rotate(x, SEED)
    np.testing.assert_allclose(np.abs(y), 5.0 / math.sqrt(1024), rtol=1e-12)


def test_the_signs_are_balanced() -> None:
    # unrotate(y) = diag(signs) H y / sqrt(D), and H e_0 is all ones: this is the signs.
    size = 1 << 17
    signs = unrotate(np.eye(1, size)[0] * math.sqrt(size), SEED, size)
    np.testing.assert_allclose(np.abs(signs), 1.0, rtol=1e-12)
    plus = np.count_nonzero(signs > 0) / size
    # Binomial(2^17, 1/2): standard error 0.0014; 4 of them.
    assert abs(plus - 0.5) < 4 * 0.5 / math.sqrt(size)


def test_the_rotation_is_linear_so_the_server_can_undo_it_on_a_sum() -> None:
    xs = [data(3000, i) for i in range(5)]
    total = sum(rotate(x, SEED) for x in xs)
    np.testing.assert_allclose(unrotate(total, SEED, 3000), sum(xs), atol=1e-9)


def test_the_seed_determines_the_rotation() -> None:
    x = data(500, 7)
    np.testing.assert_array_equal(rotate(x, SEED), rotate(x, bytes(SEED)))
    other = rotate(x, bytes(32))
    assert not np.allclose(rotate(x, SEED), other)
    # The wrong seed does not undo it.
    assert not np.allclose(unrotate(rotate(x, SEED), bytes(32), 500), x, atol=1e-3)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(33), "x" * 32])
def test_a_seed_that_is_not_32_bytes_is_refused(seed: object) -> None:
    with pytest.raises(UsageError):
        rotate(np.ones(4), seed)  # type: ignore[arg-type]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(UsageError):
        rotate(np.ones((2, 2)), SEED)
    with pytest.raises(UsageError):
        rotate(np.ones(0), SEED)
    with pytest.raises(UsageError):
        unrotate(np.ones(100), SEED, 100)  # needs the padded length, 128
    with pytest.raises(UsageError):
        padded_dimension(0)

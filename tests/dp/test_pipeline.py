from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.dp.calibrate import DpConfig, DpPlan, calibrate
from secagg.dp.mechanism import Mechanism
from secagg.dp.pipeline import decode, encode
from secagg.errors import ConfigurationError, UsageError
from tests.dp._counting import CountingRandomness
from tests.dp._stats import rng

pytest.importorskip("dp_accounting")  # calibrate needs it; encode/decode do not

SEED = bytes(range(100, 132))
DP_SOURCES = Path(__file__).resolve().parents[2] / "src" / "secagg" / "dp"


def plan_for(**overrides: Any) -> DpPlan:
    fields: dict[str, Any] = dict(
        dim=3000, l2_clip=2.0, bits=20, min_clients=12, max_clients=16, delta=1e-5
    )
    fields.update(overrides)
    if "noise_multiplier" not in fields and "target_epsilon" not in fields:
        fields["target_epsilon"] = 3.0
    return calibrate(DpConfig(**fields))


def inputs(n: int, dim: int, seed: int) -> list[np.ndarray]:
    # Test data, nothing secret: norms spread around the clip of 2, so some clients are clipped.
    gen = np.random.default_rng(seed)
    return [gen.normal(0.0, gen.uniform(0.01, 0.07), dim) for _ in range(n)]


def clipped(x: np.ndarray, clip: float) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return x * min(1.0, clip / norm)


def ring_sum(vectors: list[np.ndarray], plan: DpPlan) -> np.ndarray:
    total = np.zeros(plan.padded_dim, dtype=np.uint64)
    for v in vectors:
        total += v
    total &= np.uint64(plan.ring_modulus - 1)
    return total


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_decoding_the_ring_sum_recovers_the_clipped_mean_within_the_noise(
    mechanism: Mechanism,
) -> None:
    plan = plan_for(mechanism=mechanism)
    xs = inputs(12, 3000, seed=1)
    source = rng(f"clients {mechanism}")
    encoded = [encode(plan, x, SEED, source) for x in xs]
    flags = [was_clipped for _, was_clipped in encoded]
    assert flags == [float(np.linalg.norm(x)) > 2.0 for x in xs]
    assert any(flags) and not all(flags)

    mean = decode(plan, ring_sum([v for v, _ in encoded], plan), 12, SEED)
    expected = np.mean([clipped(x, 2.0) for x in xs], axis=0)
    residual = mean - expected
    # Per coordinate: noise of std central_noise_std / n, plus rounding (each client's error
    # has variance at most 1/4 in scaled units). Over 3,000 coordinates the sample std is
    # within ~1.3% of its expectation (one standard error); allow 5%.
    noise_only = plan.central_noise_std / 12
    with_rounding = math.sqrt(plan.central_noise_std**2 + 12 / (4 * plan.scale**2)) / 12
    assert abs(residual.mean()) < 5 * noise_only / math.sqrt(3000)
    assert 0.95 * noise_only <= residual.std() <= 1.05 * with_rounding


@pytest.mark.parametrize("mechanism", list(Mechanism))
@pytest.mark.parametrize("included", [12, 16])
def test_the_aggregate_noise_has_the_configured_central_variance(
    mechanism: Mechanism, included: int
) -> None:
    # Zero updates round to exactly zero, so the decoded sum is the noise alone.
    plan = plan_for(dim=30_000, mechanism=mechanism)
    source = rng(f"noise {mechanism} {included}")
    zeros = np.zeros(30_000)
    total = ring_sum([encode(plan, zeros, SEED, source)[0] for _ in range(included)], plan)
    noise = decode(plan, total, included, SEED) * included
    expected = plan.central_noise_std_for(included) ** 2
    # 30,000 near-Gaussian values: the sample variance's standard error is sqrt(2/n) = 0.8%;
    # 4% is five of them.
    assert noise.var() == pytest.approx(expected, rel=0.04)
    assert abs(noise.mean()) < 5 * math.sqrt(expected / 30_000)


def test_the_wrap_rate_over_many_encodings_is_within_the_stated_bound() -> None:
    # A narrow ring with a loose bound so that wraps are frequent enough to count; the worst
    # case for the ring: every client sends the same update at the full clip.
    plan = plan_for(
        dim=4096,
        bits=12,
        min_clients=10,
        max_clients=20,
        max_wrap_probability=0.05,
        max_rounding_inflation=4.0,
        noise_multiplier=0.5,
    )
    # The same clients encoded into a 24-bit ring with the same scale, noise and randomness
    # give the true (unwrapped) sums.
    wide = dataclasses.replace(plan, config=dataclasses.replace(plan.config, bits=24), ring_bits=24)
    # Deliberately over-scaled (signal and noise x3): the detector below must see it wrap far
    # above the bound, so that a rate within the bound means something.
    over = dataclasses.replace(plan, scale=3 * plan.scale, local_noise=9 * plan.local_noise)
    update = np.random.default_rng(5).normal(size=4096)
    update *= 2.0 / np.linalg.norm(update)

    def wrap_rate(narrow: DpPlan, trials: int) -> float:
        wraps = 0
        wide_plan = dataclasses.replace(wide, scale=narrow.scale, local_noise=narrow.local_noise)
        for trial in range(trials):
            narrow_vectors, wide_vectors = [], []
            for client in range(20):
                label = f"wrap {trial} {client}"
                narrow_vectors.append(encode(narrow, update, SEED, rng(label))[0])
                wide_vectors.append(encode(wide_plan, update, SEED, rng(label))[0])
            half = narrow.ring_modulus // 2
            low = ring_sum(narrow_vectors, narrow).astype(np.int64)
            low[low >= half] -= narrow.ring_modulus
            true = ring_sum(wide_vectors, wide_plan).astype(np.int64)
            true[true >= wide.ring_modulus // 2] -= wide.ring_modulus
            assert np.all(np.abs(true) < wide.ring_modulus // 4)  # the wide ring never wraps
            wraps += int(np.count_nonzero(low != true))
        return wraps / (trials * 4096)

    # Measured: 0.0059 against a bound of 0.0499 (Chernoff is conservative by ~8x here), and
    # 0.36 when over-scaled.
    rate = wrap_rate(plan, trials=6)
    assert 0 < rate <= plan.wrap_probability_bound
    assert wrap_rate(over, trials=1) > 3 * plan.wrap_probability_bound


def test_an_encoded_vector_is_a_ring_vector_of_the_padded_length() -> None:
    plan = plan_for()
    vector, was_clipped = encode(plan, np.full(3000, 1e-3), SEED, rng("layout"))
    assert vector.dtype == np.uint64
    assert vector.shape == (4096,)
    assert int(vector.max()) < 2**20
    assert was_clipped is False
    # Updates of any shape are flattened.
    matrix, _ = encode(plan, np.full((30, 100), 1e-3), SEED, rng("layout"))
    np.testing.assert_array_equal(matrix, vector)


def test_a_100k_value_update_encodes_with_a_few_vector_draws() -> None:
    # Counted rather than timed: one draw of the padded length for the randomised rounding
    # (no conditional rounding at beta = 0) and the Skellam sampler's passes over whole
    # vectors, at most 4 per bit of the padded length where a loop over the values would make
    # 131,072. The randomness is seeded, so the draws are exact.
    plan = plan_for(dim=100_000, bits=20, min_clients=100, max_clients=200)
    x = np.random.default_rng(3).normal(0.0, 0.01, 100_000)
    source = CountingRandomness(rng("timing"))
    vector, _ = encode(plan, x, SEED, source)
    assert vector.shape == (131_072,)
    assert plan.config.beta == 0.0 and plan.mechanism is Mechanism.SKELLAM
    assert source.draws[0] == 131_072  # the rounding
    assert len(source.draws) == 25 <= 1 + 4 * (131_072).bit_length()
    assert sum(source.draws) == 1_310_496


def test_conditional_rounding_keeps_the_mean_within_its_stated_bias() -> None:
    plan = plan_for(beta=0.01)
    assert 0 < plan.rounding_bias_bound < 1e-3
    xs = inputs(12, 3000, seed=2)
    source = rng("conditional")
    vectors = [encode(plan, x, SEED, source)[0] for x in xs]
    mean = decode(plan, ring_sum(vectors, plan), 12, SEED)
    expected = np.mean([clipped(x, 2.0) for x in xs], axis=0)
    # Noise (std per coordinate central/n) dominates; the bias is at most 1e-3 in L2.
    rms = float(np.sqrt(np.mean((mean - expected) ** 2)))
    assert rms < 1.05 * plan.central_noise_std / 12 + plan.rounding_bias_bound


def test_bad_inputs_are_refused() -> None:
    plan = plan_for()
    with pytest.raises(UsageError):
        encode(plan, np.zeros(2999), SEED, rng("bad"))
    with pytest.raises(ConfigurationError):
        encode(plan, np.full(3000, np.nan), SEED, rng("bad"))
    with pytest.raises(UsageError):
        encode(plan, np.zeros(3000), b"short", rng("bad"))
    good = np.zeros(4096, dtype=np.uint64)
    with pytest.raises(UsageError):
        decode(plan, good, 0, SEED)
    with pytest.raises(UsageError):
        decode(plan, good, 17, SEED)  # more than max_clients
    with pytest.raises(UsageError):
        decode(plan, good.astype(np.int64), 12, SEED)
    with pytest.raises(UsageError):
        decode(plan, good[:100], 12, SEED)


def test_no_numpy_or_python_generator_appears_in_the_dp_sources() -> None:
    forbidden = re.compile(
        r"np\.random|numpy\.random|default_rng|RandomState|Generator\(|^\s*import random"
        r"|^\s*from random import",
        re.MULTILINE,
    )
    sources = sorted(DP_SOURCES.glob("*.py"))
    assert len(sources) >= 6
    for path in sources:
        assert not forbidden.search(path.read_text()), path.name

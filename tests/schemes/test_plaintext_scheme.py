"""The plaintext baseline: exactly the weighted mean, and every update in the server's hands."""

from __future__ import annotations

import numpy as np

from secagg.schemes.plaintext import PlaintextScheme
from secagg.simulate import DropSchedule, random_inputs, simulate_round


def test_the_baseline_is_the_exact_weighted_mean_of_the_included() -> None:
    inputs = random_inputs(100, 2)
    weights = np.array([1, 2, 3, 4, 5, 6], dtype=np.float64)
    drops = DropSchedule({"upload": frozenset({2})})
    result = simulate_round(
        PlaintextScheme(dim=100, max_weight=6), 6, inputs, weights=weights, drops=drops, seed=1
    )
    assert result.report.included == (0, 1, 3, 4, 5)
    kept = (0, 1, 3, 4, 5)
    exact = sum(weights[i] * inputs(i).astype(np.float64) for i in kept) / weights[list(kept)].sum()
    assert result.aggregate is not None
    assert np.max(np.abs(result.aggregate - exact)) < 1e-12
    assert result.report.upload_bytes_per_client > 400  # 100 float32 values and a header


def test_the_baseline_discloses_everything() -> None:
    disclosure = PlaintextScheme(dim=3).disclosure(10)
    assert disclosure.server_learns == "everything"

"""The plaintext baseline: exactly the weighted mean, and every update in the server's hands."""

from __future__ import annotations

import tracemalloc

import numpy as np

from secagg.hazmat.randomness import DeterministicRandomness
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


def test_the_server_sums_each_update_as_it_arrives_and_keeps_none_of_them() -> None:
    # The simulator runs this baseline beside rounds of 20,000 clients: a server that kept
    # every upload until the stage closed held 7.6 GB at 100,000 values.
    dim, n = 10_000, 200
    scheme = PlaintextScheme(dim=dim)
    config = scheme.round_config(range(n), nonce=bytes(16))
    server = scheme.server(config)
    start = server.start()
    inputs = random_inputs(dim, 3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            client = scheme.client(config, i, DeterministicRandomness(bytes(16)))
            client.set_input(inputs(i))
            reply = client.receive(start[i])
            assert reply is not None
            server.receive(i, reply.encode())
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 10 * 4 * dim  # a few updates' worth, not n of them (n x 40 KB = 8 MB)
    server.close_stage()
    exact = sum(inputs(i).astype(np.float64) for i in range(n)) / n
    assert np.max(np.abs(server.aggregate().mean - exact)) < 1e-9

"""How fast the primitives are whose tests count their work instead of timing it.

    python benchmarks/primitives.py [--repeats R] [--write]

The tests assert exact counts (tests/test_no_clocks.py keeps clocks out of them): the graph
finder's tails and terms at a million clients, one keystream draw for a 10,000-client Harary
table, 4 + 2 window operations to pack and unpack 20-bit values, one modular inversion per
Shamir reconstruction, a few dozen vector draws for 100,000 DP noise samples, 17 Hadamard
passes per direction at 2**17 values, one gradient per minibatch. The speeds those counts
stand for are measured here: the median of R repeats of each, beside the bound its timed test
used to assert and the ratio of the two (the headroom a loaded machine ate into).
``--write`` replaces this benchmark's section of BENCHMARKS.md (or appends it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import sections

from secagg.dp.calibrate import DpConfig, calibrate
from secagg.dp.noise import Mechanism, sample
from secagg.dp.pipeline import encode
from secagg.dp.rotation import rotate, unrotate
from secagg.fl.data import load_digits_split
from secagg.fl.fedavg import TrainingConfig, local_update
from secagg.fl.model import ModelSpec
from secagg.hazmat import shamir
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.ring import Ring
from secagg.schemes.masking import graph
from secagg.schemes.masking.graph import ServerModel

MARKER = "## Primitives: the speeds the tests count instead of timing"
SEED = bytes(range(32))


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def rng(label: str) -> DeterministicRandomness:
    return DeterministicRandomness(hashlib.sha256(label.encode()).digest())


def cases() -> list[tuple[str, str, float, Callable[[], object]]]:
    """(what, size, the bound its timed test asserted in seconds, the action)."""
    found: list[tuple[str, str, float, Callable[[], object]]] = []

    for rates, model in (
        ((0.05, 0.33), ServerModel.SEMI_HONEST),
        ((0.3, 0.3), ServerModel.SEMI_MALICIOUS),
    ):

        def find(rates: tuple[float, float] = rates, model: ServerModel = model) -> object:
            graph._find.cache_clear()
            return graph.find_secagg_plus_parameters(
                1_000_000,
                adversarial_rate=rates[0],
                dropout_rate=rates[1],
                server_model=model,
            )

        found.append((f"graph finder, {rates[0]} / {rates[1]}, {model}", "n=1,000,000", 1.0, find))

    n, degree = 10_000, graph.find_secagg_plus_parameters(10_000).degree

    def table() -> object:
        graph._ring.cache_clear()
        return graph.harary_neighbours(n, degree, SEED)

    found.append(("Harary neighbour table", f"n=10,000, k={degree}", 0.5, table))

    ring = Ring(20)
    values = np.random.default_rng(0).integers(0, ring.modulus, 100_000).astype(np.uint32)
    packed = ring.pack(values)
    found.append(("ring pack, 20 bits", "100,000 values", 0.03, lambda: ring.pack(values)))
    found.append(
        ("ring unpack, 20 bits", "100,000 values", 0.03, lambda: ring.unpack(packed, 100_000))
    )

    secret = bytes(range(100, 132))
    xs = list(range(1, 101))
    shares = shamir.split(secret, xs, 34, rng("shamir"))

    def combine() -> object:
        shamir._lagrange_at_cached.cache_clear()
        return shamir.combine(shares[:34], 34)

    found.append(
        ("Shamir split", "100 holders, t=34", 0.02, lambda: shamir.split(secret, xs, 34, rng("s")))
    )
    found.append(("Shamir combine (uncached)", "100 holders, t=34", 0.02, combine))

    for mechanism, parameter in (
        (Mechanism.SKELLAM, 1.0),
        (Mechanism.SKELLAM, 1e6),
        (Mechanism.DISCRETE_GAUSSIAN, 1.0),
        (Mechanism.DISCRETE_GAUSSIAN, 1e3),
    ):

        def noise(m: Mechanism = mechanism, p: float = parameter) -> object:
            return sample(m, p, 100_000, rng("noise"))

        found.append((f"DP noise, {mechanism.value} {parameter:g}", "100,000 samples", 0.5, noise))

    plan = calibrate(
        DpConfig(
            dim=100_000, l2_clip=2.0, bits=20, min_clients=100, max_clients=200, delta=1e-5,
            target_epsilon=3.0,
        )
    )  # fmt: skip
    x = np.random.default_rng(3).normal(0.0, 0.01, 100_000)
    found.append(
        ("DP encode (rotate, round, noise)", "100,000 values", 0.5,
         lambda: encode(plan, x, SEED, rng("encode"))),
    )  # fmt: skip
    found.append(
        ("rotate + unrotate", "100,000 values", 0.5,
         lambda: unrotate(rotate(x, SEED), SEED, len(x))),
    )  # fmt: skip

    split = load_digits_split(10, seed=0)
    spec = ModelSpec(split.features, split.classes)
    data = max(split.clients, key=len)
    params = spec.init(0)
    found.append(
        ("FedAvg local update (2 epochs)", f"{len(data)} digits", 0.05,
         lambda: local_update(spec, params, data, TrainingConfig(), round_index=0, client_index=0)),
    )  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = []
    for what, size, bound, action in cases():
        action()  # warm up (imports, caches outside the measured call)
        seconds = median_seconds(action, args.repeats)
        rows.append((what, size, seconds, bound))
        print(f"{what:42} {size:22} {seconds * 1e3:9.2f} ms   bound {bound * 1e3:6.0f} ms   "
              f"bound / median {bound / seconds:6.1f}")  # fmt: skip
    load = os.getloadavg()[0]
    lines = [
        MARKER,
        "",
        f"Command: `python benchmarks/primitives.py --repeats {args.repeats} --write`. The tests "
        "of these primitives count their work (exact operations, vector draws, passes) instead "
        "of timing it; their speed is measured here, medians of "
        f"{args.repeats}, beside the bound the timed test used to assert. "
        f"Load average at the end of the run: {load:.1f}.",
        "",
        "| what | size | median ms | former test bound ms | bound / median |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {what} | {size} | {seconds * 1e3:.2f} | {bound * 1e3:.0f} | {bound / seconds:.1f} |"
        for what, size, seconds, bound in rows
    ]
    if args.write:
        sections.write_section(MARKER, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""A refactor must not make a round slower: the same simulated round from this checkout and
from another, alternately, in one run.

    python benchmarks/refactor_round.py --against OTHER_CHECKOUT/src [--repeats 7]

Each sample is a fresh process that imports secagg from one tree and runs one round of 100
clients x 100,000 values with 10% of them dropping at random stages (after a warm-up round
in the same process), printing the simulator's own round seconds. The trees alternate, one
sample each per repeat and with the same seed, so a change in the machine's load falls on
both alike. Prints the medians and after / before. No test times anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_ROUND = """
import sys
try:
    from secagg.schemes.masking.parameters import Params
except ImportError:  # a tree from before masking had a package of its own
    from secagg.params import Params
from secagg.simulate import (
    SEMI_HONEST_STAGES, DropSchedule, random_inputs, root_randomness, simulate_round,
)
n, dim, seed = 100, 100_000, int(sys.argv[1])
params = Params(dim=dim, max_clients=n)
drops = DropSchedule.random(n, 0.1, root_randomness(seed, "dropout"), stages=SEMI_HONEST_STAGES)
simulate_round(params, n, random_inputs(dim, seed), drops=drops, seed=seed)
report = simulate_round(params, n, random_inputs(dim, seed), drops=drops, seed=seed).report
assert report.outcome == "completed", report.abort_reason
print(report.seconds)
"""


def _round_seconds(source: str, seed: int) -> float:
    env = dict(os.environ, PYTHONPATH=source)
    done = subprocess.run(
        [sys.executable, "-c", _ROUND, str(seed)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"the round failed with {source}: {done.stderr.strip()[-400:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the other checkout's src directory")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent / "src")
    before: list[float] = []
    after: list[float] = []
    for seed in range(1, args.repeats + 1):
        before.append(_round_seconds(args.against, seed))
        after.append(_round_seconds(here, seed))
        print(f"seed {seed}: against {before[-1]:.3f} s, this checkout {after[-1]:.3f} s")
    b, a = statistics.median(before), statistics.median(after)
    print(f"median: against {b:.3f} s, this checkout {a:.3f} s, this / against {a / b:.2f}x")
    print(f"load: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

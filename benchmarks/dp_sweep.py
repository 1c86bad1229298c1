"""Privacy against utility: FedAvg on the digits with distributed DP at several epsilons.

Each round every client trains locally from the global model (the demo's task), then one
secure-aggregation round (SecAgg+, in process) reveals the noisy mean of the updates, each
client having added its own Skellam noise before masking; the noise is calibrated so that the
whole training run is (epsilon, delta)-DP for any revealed sum of at least the minimum cohort.
Beside it: the same training without DP (the exact unweighted mean of the same updates).

    python benchmarks/dp_sweep.py                       # prints the table
    python benchmarks/dp_sweep.py --write               # and docs/dp_privacy_utility.png,
                                                        # benchmarks/dp_sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import sections

from secagg.dp.calibrate import DpConfig, epsilon_spent
from secagg.fl.data import load_digits_split
from secagg.fl.digits import demo_model, digits_median_update_norm, digits_task
from secagg.fl.fedavg import apply_update
from secagg.schemes.masking.parameters import Params
from secagg.simulate import DropSchedule, root_randomness, simulate_round

ROOT = Path(__file__).resolve().parent.parent
MARKER = "## Distributed DP: privacy against utility on the digits"


def train(
    epsilon: float | None,
    *,
    clients: int,
    rounds: int,
    min_cohort: int,
    dropout: float,
    l2_clip: float,
    bits: int,
    delta: float,
    seed: int,
) -> dict[str, Any]:
    split = load_digits_split(clients, seed=seed)
    spec = demo_model(split)
    tasks = [digits_task(c, clients, seed) for c in range(clients)]
    model = spec.init(seed)
    params = None
    if epsilon is not None:
        dp = DpConfig(
            dim=spec.dim,
            l2_clip=l2_clip,
            bits=bits,
            min_clients=min_cohort,
            max_clients=clients,
            delta=delta,
            target_epsilon=epsilon,
            rounds=rounds,
        )
        params = Params(dim=spec.dim, max_clients=clients, min_cohort=min_cohort, dp=dp)
    accuracy = [spec.accuracy(model, split.test)]
    epsilons: list[float] = []
    included: list[int] = []
    started = time.perf_counter()
    for step in range(rounds):
        updates = np.stack([np.asarray(t(model, step)[0], dtype=np.float32) for t in tasks])
        drops = DropSchedule.random(
            clients,
            dropout,
            root_randomness(seed * 1000 + step, "sweep/dropout"),
            stages=["advertise", "share", "masked-input"],
        )
        if params is None:
            # No DP: the exact unweighted mean of the clients that would have been included.
            leaving = {c for ids in drops.at.values() for c in ids}
            kept = [c for c in range(clients) if c not in leaving]
            mean = updates[kept].astype(np.float64).mean(axis=0)
        else:
            result = simulate_round(
                params,
                clients,
                updates.__getitem__,
                drops=drops,
                seed=seed * 1000 + step,
                baseline=False,
            )
            assert result.aggregate is not None, result.report.abort_reason
            mean = result.aggregate
            assert result.report.epsilon is not None
            epsilons.append(result.report.epsilon)
            included.append(len(result.report.included))
        model = apply_update(model, mean)
        accuracy.append(spec.accuracy(model, split.test))
    plan = None if params is None else params.dp_plan
    return {
        "epsilon_target": epsilon,
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1],
        "epsilon_per_round_achieved": epsilons,
        "noise_multiplier": None if plan is None else plan.noise_multiplier,
        # What the run actually spent, for the sums it revealed (at most the target).
        "epsilon_spent": None if plan is None else epsilon_spent(plan, included),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-cohort", type=int, default=80)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilons", default="1,2,4,8,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    # Clip at the median first-round update norm: half the clients are scaled down a little.
    clip = digits_median_update_norm(args.clients, args.seed)
    common = dict(
        clients=args.clients,
        rounds=args.rounds,
        min_cohort=args.min_cohort,
        dropout=args.dropout,
        l2_clip=clip,
        bits=args.bits,
        delta=args.delta,
        seed=args.seed,
    )
    runs = [train(None, **common)]  # type: ignore[arg-type]
    for eps in (float(e) for e in args.epsilons.split(",")):
        runs.append(train(eps, **common))  # type: ignore[arg-type]
    print(
        f"{args.clients} clients per round, {args.rounds} rounds, min cohort {args.min_cohort}, "
        f"dropout {args.dropout}, L2 clip {clip:.4f} (median update norm), {args.bits} bits, "
        f"delta {args.delta}"
    )
    lines = [
        MARKER,
        "",
        f"Command: `python benchmarks/dp_sweep.py --write`. FedAvg on scikit-learn's digits "
        f"(the demo's model and local training), {args.clients} clients per round "
        f"({args.dropout:.0%} dropping at random stages), minimum cohort {args.min_cohort}, "
        f"{args.rounds} rounds, SecAgg+ in process with every client adding Skellam noise "
        f"before masking; L2 clip {clip:.4f} (the median first-round update norm), "
        f"{args.bits} bits per coordinate, delta {args.delta:g}. The target epsilon is for the "
        "whole run; 'spent' is what the sums actually revealed cost (more inputs than the "
        "minimum cohort carry more noise). Beside it, the same training with the exact mean.",
        "",
        "| target epsilon (whole run) | spent | noise multiplier | final accuracy "
        "| epsilon per round |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        eps, noise = run["epsilon_target"], run["noise_multiplier"]
        achieved = run["epsilon_per_round_achieved"]
        target = "no DP" if eps is None else f"{eps:g}"
        multiplier = "-" if noise is None else f"{noise:.2f}"
        per_round = "-" if not achieved else f"{min(achieved):.3f}..{max(achieved):.3f}"
        spent = "-" if run["epsilon_spent"] is None else f"{run['epsilon_spent']:.3f}"
        lines.append(
            f"| {target} | {spent} | {multiplier} | {100 * run['final_accuracy']:.1f}% "
            f"| {per_round} |"
        )
    lines += ["", "![privacy against utility](docs/dp_privacy_utility.png)", ""]
    print("\n".join(lines))
    if args.write:
        out = {"args": vars(args), "l2_clip": clip, "runs": runs}
        (ROOT / "benchmarks" / "dp_sweep.json").write_text(json.dumps(out, indent=1) + "\n")
        plot(runs, args, clip)
        sections.write_section(MARKER, "\n".join(lines))


def plot(runs: list[dict[str, Any]], args: argparse.Namespace, clip: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        eps = run["epsilon_target"]
        label = "no DP" if eps is None else f"epsilon = {eps:g}"
        left.plot(range(len(run["accuracy"])), run["accuracy"], marker="o", label=label)
    left.set_xlabel("round")
    left.set_ylabel("test accuracy")
    left.legend()
    private = [r for r in runs if r["epsilon_target"] is not None]
    right.plot(
        [r["epsilon_target"] for r in private],
        [r["final_accuracy"] for r in private],
        marker="o",
        label="distributed DP (Skellam)",
    )
    right.axhline(runs[0]["final_accuracy"], color="grey", linestyle="--", label="no DP")
    right.set_xscale("log")
    right.set_xlabel(f"epsilon over {args.rounds} rounds (delta {args.delta:g})")
    right.set_ylabel("final test accuracy")
    right.legend()
    figure.suptitle(
        f"FedAvg on digits, {args.clients} clients per round, min cohort {args.min_cohort}, "
        f"L2 clip {clip:.3f}, {args.bits} bits"
    )
    figure.tight_layout()
    path = ROOT / "docs" / "dp_privacy_utility.png"
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

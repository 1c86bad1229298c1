"""Privacy against utility: FedAvg on the digits with distributed DP at several epsilons,
beside central DP and no DP, over several seeds.

Each round every client trains locally from the global model (the demo's task), then one
secure-aggregation round (SecAgg+, in process) reveals the noisy mean of the updates, each
client having added its own Skellam noise before masking; the noise is calibrated so that the
whole training run is (epsilon, delta)-DP for any revealed sum of at least the minimum cohort.
Beside it, over the same clients each round:

- central DP, the baseline distributed DP is measured against: a trusted curator clips the
  same updates to the same L2 clip and adds Gaussian noise to their exact mean, its noise
  multiplier spending the same target epsilon over the same rounds at the same delta by the
  same accountant (``secagg.dp.central``), its noise drawn from cryptographic randomness
  (``secagg.dp.central_noise``);
- no DP: the exact unweighted mean of the same (unclipped) updates.

The data split, the local training and the initial model are fixed by ``--seed`` (the task);
each of ``--seeds`` runs draws its own dropouts and noise (run seed = seed, seed + 1, ...), so
the spread is the noise's and the dropouts', not the data's. Each distributed run also states
the noise multiplier its revealed sums actually carried (its sums held more inputs than the
minimum cohort it is calibrated for) and the epsilon it actually spent.

    python benchmarks/dp_sweep.py --seeds 3             # prints the table
    python benchmarks/dp_sweep.py --seeds 3 --write     # and docs/dp_privacy_utility.png,
                                                        # benchmarks/dp_sweep.json, BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import sections

from secagg.dp.calibrate import DpConfig, carried_noise_multiplier, epsilon_spent
from secagg.dp.central import CentralPlan, central_plan
from secagg.dp.central_noise import central_grid, clip_to_l2, noisy_mean
from secagg.fl.data import load_digits_split
from secagg.fl.digits import demo_model, digits_median_update_norm, digits_task
from secagg.fl.fedavg import apply_update
from secagg.schemes.masking.parameters import Params
from secagg.simulate import DropSchedule, root_randomness, simulate_round

ROOT = Path(__file__).resolve().parent.parent
MARKER = "## Distributed DP: privacy against utility on the digits"
SERIES = ("no DP", "central DP", "distributed DP")
COLOURS = {"no DP": "#888888", "central DP": "#d62728", "distributed DP": "#9467bd"}


def train(
    series: str,
    *,
    params: Params | None,
    central: CentralPlan | None,
    clients: int,
    rounds: int,
    dropout: float,
    seed: int,
    run_seed: int,
) -> dict[str, Any]:
    """One training run of ``series`` (no DP, central DP or distributed DP)."""
    split = load_digits_split(clients, seed=seed)
    spec = demo_model(split)
    tasks = [digits_task(c, clients, seed) for c in range(clients)]
    model = spec.init(seed)
    accuracy = [spec.accuracy(model, split.test)]
    epsilons: list[float] = []
    carried: list[float] = []
    included: list[int] = []
    started = time.perf_counter()
    for step in range(rounds):
        updates = np.stack([np.asarray(t(model, step)[0], dtype=np.float32) for t in tasks])
        # The same clients drop in every series of a run seed.
        drops = DropSchedule.random(
            clients,
            dropout,
            root_randomness(run_seed * 1000 + step, "sweep/dropout"),
            stages=["advertise", "share", "masked-input"],
        )
        leaving = {c for ids in drops.at.values() for c in ids}
        kept = [c for c in range(clients) if c not in leaving]
        if series == "no DP":
            mean = updates[kept].astype(np.float64).mean(axis=0)
        elif series == "central DP":
            assert central is not None
            total = np.zeros(spec.dim, dtype=np.float64)
            for c in kept:
                total += clip_to_l2(updates[c], central.l2_clip)
            rng = root_randomness(run_seed * 1000 + step, "sweep/central-dp")
            mean = noisy_mean(central, total, len(kept), rng)
            included.append(len(kept))
        else:
            assert params is not None and params.dp_plan is not None
            result = simulate_round(
                params,
                clients,
                updates.__getitem__,
                drops=drops,
                seed=run_seed * 1000 + step,
                baseline=False,
            )
            assert result.aggregate is not None, result.report.abort_reason
            assert sorted(result.report.included) == kept
            mean = result.aggregate
            assert result.report.epsilon is not None
            epsilons.append(result.report.epsilon)
            included.append(len(result.report.included))
            carried.append(carried_noise_multiplier(params.dp_plan, len(result.report.included)))
        model = apply_update(model, mean)
        accuracy.append(spec.accuracy(model, split.test))
    run: dict[str, Any] = {
        "series": series,
        "run_seed": run_seed,
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1],
        "included": included,
        "seconds": time.perf_counter() - started,
    }
    if series == "central DP":
        assert central is not None
        run |= {
            "noise_multiplier": central.noise_multiplier,
            "noise_multiplier_carried": central_grid(central, spec.dim).noise_multiplier,
            "epsilon_per_round": central.epsilon_per_round,
            "epsilon_spent": central.epsilon_spent(rounds),
        }
    elif series == "distributed DP":
        assert params is not None and params.dp_plan is not None
        run |= {
            "noise_multiplier": params.dp_plan.noise_multiplier,  # planned, minimum cohort
            "noise_multiplier_carried": carried,
            "epsilon_per_round_achieved": epsilons,
            # What the run actually spent, for the sums it revealed (at most the target).
            "epsilon_spent": epsilon_spent(params.dp_plan, included),
        }
    return run


def spread(values: list[float], scale: float = 100.0) -> str:
    """The mean and the range of ``values`` (x ``scale``): ``83.8 (83.1-84.5)``."""
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values) * scale:.1f}-{max(values) * scale:.1f})"


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (series, epsilon): the final accuracies over the seeds, their mean, min, max, std."""
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["series"], run["epsilon_target"]), []).append(run)
    out = []
    for (series, epsilon), group in groups.items():
        finals = [r["final_accuracy"] for r in group]
        out.append(
            {
                "series": series,
                "epsilon_target": epsilon,
                "seeds": len(group),
                "final_accuracy": finals,
                "mean": statistics.fmean(finals),
                "min": min(finals),
                "max": max(finals),
                "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "mean_curve": np.mean([r["accuracy"] for r in group], axis=0).tolist(),
                "min_curve": np.min([r["accuracy"] for r in group], axis=0).tolist(),
                "max_curve": np.max([r["accuracy"] for r in group], axis=0).tolist(),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-cohort", type=int, default=80)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilons", default="1,2,4,8,16")
    parser.add_argument("--seed", type=int, default=0, help="the data split and initial model")
    parser.add_argument("--seeds", type=int, default=3, help="runs per series and epsilon")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    # Clip at the median first-round update norm: half the clients are scaled down a little.
    clip = digits_median_update_norm(args.clients, args.seed)
    dim = demo_model(load_digits_split(args.clients, seed=args.seed)).dim
    epsilons = [float(e) for e in args.epsilons.split(",")]
    run_seeds = range(args.seed, args.seed + args.seeds)
    common = dict(clients=args.clients, rounds=args.rounds, dropout=args.dropout, seed=args.seed)
    runs: list[dict[str, Any]] = []

    def run_all(series: str, epsilon: float | None, **plans: Any) -> None:
        for run_seed in run_seeds:
            run = train(series, **plans, **common, run_seed=run_seed)  # type: ignore[arg-type]
            runs.append({"epsilon_target": epsilon, **run})
            print(
                f"  {series}, epsilon {epsilon}, run seed {run_seed}: "
                f"{100 * run['final_accuracy']:.1f}% ({run['seconds']:.1f} s)",
                flush=True,
            )

    run_all("no DP", None, params=None, central=None)
    for eps in epsilons:
        config = DpConfig(
            dim=dim,
            l2_clip=clip,
            bits=args.bits,
            min_clients=args.min_cohort,
            max_clients=args.clients,
            delta=args.delta,
            target_epsilon=eps,
            rounds=args.rounds,
        )
        params = Params(dim=dim, max_clients=args.clients, min_cohort=args.min_cohort, dp=config)
        assert params.dp_plan is not None
        central = central_plan(params.dp_plan)
        run_all("central DP", eps, params=None, central=central)
        run_all("distributed DP", eps, params=params, central=None)
    seconds = time.perf_counter() - started
    stats = summary(runs)
    lines = table(runs, stats, args, clip)
    print("\n".join(lines))
    if args.write:
        out = {
            "args": vars(args),
            "l2_clip": clip,
            "seconds": seconds,
            "load_average": os.getloadavg(),
            "commit": _commit(),
            "summary": [{k: v for k, v in s.items() if not k.endswith("_curve")} for s in stats],
            "runs": runs,
        }
        (ROOT / "benchmarks" / "dp_sweep.json").write_text(json.dumps(out, indent=1) + "\n")
        plot(stats, runs, args, clip)
        sections.write_section(MARKER, "\n".join(lines))


def table(
    runs: list[dict[str, Any]], stats: list[dict[str, Any]], args: argparse.Namespace, clip: float
) -> list[str]:
    by = {(s["series"], s["epsilon_target"]): s for s in stats}
    no_dp = by[("no DP", None)]
    seeds = f"{args.seeds} run seed{'s' if args.seeds != 1 else ''}"
    lines = [
        MARKER,
        "",
        f"Command: `python benchmarks/dp_sweep.py --seeds {args.seeds} --write`. FedAvg on "
        f"scikit-learn's digits (the demo's model and local training), {args.clients} clients "
        f"per round ({args.dropout:.0%} dropping at random stages), {args.rounds} rounds, L2 "
        f"clip {clip:.4f} (the median first-round update norm), delta {args.delta:g}; the "
        f"data split and initial model fixed (seed {args.seed}), {seeds} each drawing its own "
        "dropouts and noise. Three series over the same clients each round: distributed DP "
        f"(SecAgg+ in process, every client adding Skellam noise before masking, {args.bits} "
        f"bits per coordinate, calibrated for a minimum cohort of {args.min_cohort}); central "
        "DP (a trusted curator's Gaussian noise on the exact mean of the same clipped updates, "
        "its noise multiplier spending the same target over the same rounds by the same "
        "accountant, drawn from cryptographic randomness); and no DP (the exact mean). "
        "Accuracy is the final test accuracy, the mean over the run seeds and (in brackets) "
        "their range. The target epsilon is for the whole run; 'spent' is what the run "
        "actually cost: the central run spends the target; the distributed run, calibrated "
        "for its minimum cohort, spends less because its sums held more inputs, which also "
        "carried more noise than planned ('carried', against 'planned' at the minimum cohort "
        "and the curator's 'z').",
        "",
        f"No DP: {spread(no_dp['final_accuracy'])}%.",
        "",
        "| target epsilon (whole run) | central DP accuracy % | distributed DP accuracy % "
        "| central - distributed (points) | epsilon spent: central / distributed "
        "| noise multiplier: central z / distributed carried (planned) |",
        "|---|---|---|---|---|---|",
    ]
    epsilons = sorted({r["epsilon_target"] for r in runs if r["epsilon_target"] is not None})
    for eps in epsilons:
        central, distributed = by[("central DP", eps)], by[("distributed DP", eps)]
        c_runs = [r for r in runs if r["series"] == "central DP" and r["epsilon_target"] == eps]
        d_runs = [r for r in runs if r["series"] == "distributed DP" and r["epsilon_target"] == eps]
        gap = 100 * (central["mean"] - distributed["mean"])
        d_spent = [r["epsilon_spent"] for r in d_runs]
        carried = [m for r in d_runs for m in r["noise_multiplier_carried"]]
        carried_text = (
            f"{min(carried):.2f}"
            if f"{min(carried):.2f}" == f"{max(carried):.2f}"
            else f"{min(carried):.2f}-{max(carried):.2f}"
        )
        d_spent_text = (
            f"{min(d_spent):.3g}"
            if f"{min(d_spent):.3g}" == f"{max(d_spent):.3g}"
            else f"{min(d_spent):.3g}-{max(d_spent):.3g}"
        )
        lines.append(
            f"| {eps:g} | {spread(central['final_accuracy'])} "
            f"| {spread(distributed['final_accuracy'])} | {gap:+.1f} "
            f"| {c_runs[0]['epsilon_spent']:.3g} / {d_spent_text} "
            f"| {c_runs[0]['noise_multiplier']:.2f} / {carried_text} "
            f"({d_runs[0]['noise_multiplier']:.2f}) |"
        )
    d_all = [r for r in runs if r["series"] == "distributed DP"]
    held = [n for r in d_all for n in r["included"]]
    ratios = [c / r["noise_multiplier"] for r in d_all for c in r["noise_multiplier_carried"]]
    overlap = [
        eps
        for eps in epsilons
        if by[("central DP", eps)]["min"] <= by[("distributed DP", eps)]["max"]
        and by[("distributed DP", eps)]["min"] <= by[("central DP", eps)]["max"]
    ]
    apart = [eps for eps in epsilons if eps not in overlap]

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:g}" for v in values) or "none"

    z_of = {r["epsilon_target"]: r["noise_multiplier"] for r in runs if r["series"] == "central DP"}
    planned_of = {r["epsilon_target"]: r["noise_multiplier"] for r in d_all}
    planned_vs_z = [planned_of[eps] / z_of[eps] for eps in epsilons]
    if not apart:
        resolved = f"overlap at every epsilon: the gap is within the spread of {seeds}"
    elif not overlap:
        resolved = f"are apart at every epsilon, over {seeds}"
    else:
        resolved = (
            f"overlap at epsilon {listed(overlap)} (there the gap is within the spread of "
            f"{seeds}) and are apart at {listed(apart)}"
        )
    lines += [
        "",
        f"The distributed run's revealed sums held {min(held)} to {max(held)} inputs against "
        f"the minimum cohort of {args.min_cohort} it is calibrated for, so they carried "
        f"{min(ratios):.3f}x to {max(ratios):.3f}x the noise multiplier planned, and spent "
        f"less than the target; the planned multiplier is {min(planned_vs_z):.3f}x to "
        f"{max(planned_vs_z):.3f}x the curator's z (randomised rounding to {args.bits} bits "
        "widens the sensitivity, and Skellam's RDP has a term beyond the Gaussian's). The "
        f"two DP series' accuracy ranges {resolved}.",
        "",
        "A target for later, not claimed here: distributed DP within 0.5 point of central DP "
        "at epsilon 2, 4 and 8, over at least 10 seeds (the noise that would close the "
        "minimum-cohort gap is being designed separately: docs/XNOISE.md).",
        "",
        "![privacy against utility](docs/dp_privacy_utility.png)",
        "",
    ]
    return lines


def plot(
    stats: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    clip: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    by = {(s["series"], s["epsilon_target"]): s for s in stats}
    epsilons = sorted({r["epsilon_target"] for r in runs if r["epsilon_target"] is not None})
    no_dp = by[("no DP", None)]
    left.axhline(no_dp["mean"], color=COLOURS["no DP"], linestyle="--", label="no DP")
    left.axhspan(no_dp["min"], no_dp["max"], color=COLOURS["no DP"], alpha=0.15)
    for offset, series in ((0.97, "central DP"), (1.03, "distributed DP")):
        rows = [by[(series, eps)] for eps in epsilons]
        means = np.array([s["mean"] for s in rows])
        low = means - np.array([s["min"] for s in rows])
        high = np.array([s["max"] for s in rows]) - means
        label = series + (" (Skellam, SecAgg+)" if series == "distributed DP" else " (Gaussian)")
        left.errorbar(
            [eps * offset for eps in epsilons],  # side by side, not on top of each other
            means,
            yerr=[low, high],
            marker="o",
            capsize=4,
            color=COLOURS[series],
            label=label,
        )
    left.set_xscale("log")
    left.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    left.set_xlabel(f"target epsilon over {args.rounds} rounds (delta {args.delta:g})")
    left.set_ylabel(f"final test accuracy (mean, min-max over {args.seeds} seeds)")
    left.legend(loc="lower right")
    # The rounds at one epsilon in the middle of the sweep, each series' mean and range.
    middle = epsilons[len(epsilons) // 2]
    for series, epsilon in (
        ("no DP", None),
        ("central DP", middle),
        ("distributed DP", middle),
    ):
        s = by[(series, epsilon)]
        xs = range(len(s["mean_curve"]))
        right.plot(xs, s["mean_curve"], marker="o", color=COLOURS[series], label=series)
        right.fill_between(xs, s["min_curve"], s["max_curve"], color=COLOURS[series], alpha=0.2)
    right.set_xlabel("round")
    right.set_ylabel("test accuracy")
    right.set_title(f"at epsilon {middle:g}: mean and min-max over {args.seeds} seeds")
    right.legend(loc="lower right")
    figure.suptitle(
        f"FedAvg on digits, {args.clients} clients per round, {args.dropout:.0%} dropout, "
        f"min cohort {args.min_cohort}, L2 clip {clip:.3f}, {args.bits} bits"
    )
    figure.tight_layout()
    path = ROOT / "docs" / "dp_privacy_utility.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip()


if __name__ == "__main__":
    main()

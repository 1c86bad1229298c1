"""The session agreement's stages at a large cohort, in CPU seconds per process (issue 23).

    python benchmarks/agreement_stages.py [--clients 20000] [--workers 2] [--commit C]
        [--write | --report-only]

One round's commit, reveal and advertise stages as ``secagg simulate`` runs them (SecAgg+,
semi-honest, 33% tolerated dropout, 5% of the clients dropping at random stages, seed 1, the
clients in ``--workers`` forked processes), stopped when the share stage opens: these stages
do not depend on the update's length, so the update has 10 values. Each stage is timed as
the round engine times it (its deliveries, the clients' answers and the server's close), and
for each process (the driver with the server, each worker) the CPU seconds it spent in the
stage are read from /proc. On a machine shared with other jobs the wall seconds stretch with
the load; the CPU seconds much less, and they bound what the stage would take alone on two
cores: at least the busiest process's and half the total, at most the total (the processes
one after another). It reaches into the simulator's internals (its delivery mapping, the
cohort's worker processes) to stop after the advertise stage; it prints one JSON object per
line. ``--commit`` names the tree measured (default: this checkout's HEAD; give it when
``PYTHONPATH`` points at another tree's ``src``); ``--write`` keeps each run in
``benchmarks/agreement_results.json`` (one per commit and cohort) and rewrites the section of
BENCHMARKS.md from every kept run; ``--report-only`` only rewrites the section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sections

from secagg.backends import Backend, open_cohort
from secagg.cohort import ClientGroup, Cohort
from secagg.hazmat.randomness import forked
from secagg.parallel import MaskApplier
from secagg.protocol.runner import RoundRun
from secagg.schemes.masking.parameters import Params
from secagg.simulate import DropSchedule, _Deliveries, random_inputs, root_randomness

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
MARKER = "## Session agreement at 20,000 clients: the commit and advertise stages alone"
RESULTS = ROOT / "benchmarks" / "agreement_results.json"
TARGET_SECONDS = 30.0  # issue 23: each of the two stages under 30 s


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(n: int, workers: int, dim: int = 10) -> dict[str, Any]:
    params = Params(dim=dim, max_clients=n, dropout_rate=0.33)
    root = root_randomness(1, "round")
    scheme = params.simulated(range(n), root, apply_masks=MaskApplier(1))
    config = scheme.round_config(range(n), nonce=root.bytes(16))
    inputs = random_inputs(dim, 1)
    stages = [s.value for s in scheme.stages]
    drops = DropSchedule.random(n, 0.05, root_randomness(1, "dropout"), stages=stages)

    def group_of(ids: Sequence[int]) -> ClientGroup:
        clients = {}
        for i in ids:
            scheme.check(config, i)
            clients[i] = scheme.client(config, i, forked(root, f"client/{i}"))
        return ClientGroup(clients, inputs, [1] * n, np.ones(n), dim, scheme.reference)

    server = scheme.server(config)
    started, cpu = time.perf_counter(), time.process_time()
    cohort = open_cohort(Backend.PROCESS, group_of, tuple(range(n)), workers)
    assert isinstance(cohort, Cohort)
    report: dict[str, Any] = {
        "clients": n,
        "workers": workers,
        "degree": config.degree,
        "setup_wall": round(time.perf_counter() - started, 2),
        "setup_driver_cpu": round(time.process_time() - cpu, 2),
    }
    pids = [process.pid for process, _ in cohort._workers]
    per: dict[str, dict[str, Any]] = {}
    with cohort:
        engine = RoundRun(server)
        last: tuple[str, float, float, list[float]] | None = None
        for stage, outgoing in engine.stages():
            now = time.perf_counter(), time.process_time(), [_cpu(p) for p in pids]
            if last is not None:
                name, wall, driver, each = last
                d = per.setdefault(
                    name, {"wall": 0.0, "driver_cpu": 0.0, "worker_cpu": [0.0] * len(pids)}
                )
                d["wall"] += now[0] - wall
                d["driver_cpu"] += now[1] - driver
                d["worker_cpu"] = [
                    a + b - c for a, b, c in zip(d["worker_cpu"], now[2], each, strict=True)
                ]
            if stage.value == "share":
                break
            last = (stage.value, *now)
            deliveries = _Deliveries(
                {i: m for i, m in outgoing.items() if drops.stage_of(i) != stage.value},
                engine.meter,
            )
            for i, data, _ in cohort.answer(deliveries):
                if data is not None:
                    server.receive(i, data)
    report["stages"] = {
        name: {
            "wall": round(d["wall"], 2),
            "driver_cpu": round(d["driver_cpu"], 2),
            "worker_cpu": [round(x, 2) for x in d["worker_cpu"]],
        }
        for name, d in per.items()
    }
    report["load_average"] = round(os.getloadavg()[0], 1)
    return report


def _bounds(stage: dict[str, Any]) -> tuple[float, float]:
    """What the stage would take alone on two cores, from its processes' CPU seconds."""
    each = [stage["driver_cpu"], *stage["worker_cpu"]]
    total = sum(each)
    return max(max(each), total / 2), total


def section(runs: list[dict[str, Any]]) -> str:
    lines = [
        MARKER,
        "",
        "One round's commit, reveal and advertise stages as `secagg simulate` runs them "
        "(SecAgg+, semi-honest, 5% of the clients dropping at random stages, seed 1, the "
        "clients in two forked workers; these stages do not depend on the update's length), "
        "stopped when the share stage opens. Wall seconds stretch with the machine's load; the "
        "CPU seconds of each process (the driver with the server, each worker) much less, and "
        "bound what the stage would take alone on two cores: at least the busiest process's "
        "and half the total, at most the total. A stage's time includes the server's close "
        "(the advertise stage: every client's neighbours' keys). Issue 23's target is each "
        "stage under 30 s.",
        "",
        "| commit | clients | stage | wall s | driver CPU s | worker CPU s | alone, 2 cores "
        "| load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["clients"], r["order"])):
        for name, stage in r["stages"].items():
            low, high = _bounds(stage)
            workers = " / ".join(f"{x:.1f}" for x in stage["worker_cpu"])
            lines.append(
                f"| {r['commit']} | {r['clients']:,} | {name} | {stage['wall']:.1f} "
                f"| {stage['driver_cpu']:.1f} | {workers} | {low:.1f} to {high:.1f} s "
                f"| {r['load_average']} |"
            )
    lines.append("")
    for r in sorted(runs, key=lambda r: (r["clients"], r["order"])):
        verdicts = []
        for name in ("commit", "advertise"):
            low, high = _bounds(r["stages"][name])
            said = (
                "under"
                if high < TARGET_SECONDS
                else "over"
                if low >= TARGET_SECONDS
                else "not surely under"
            )
            verdicts.append(f"{name} {said} 30 s ({low:.1f} to {high:.1f} s alone)")
        lines.append(
            f"- Commit {r['commit']}, {r['clients']:,} clients: {'; '.join(verdicts)}; set-up "
            f"(the clients made and checked before the round) {r['setup_driver_cpu']:.1f} "
            f"CPU s in the driver."
        )
    lines += [
        "",
        "Command: `python benchmarks/agreement_stages.py --clients 20000 --write` (with "
        "`PYTHONPATH=OTHER/src --commit C` for another tree; kept runs are in "
        "`benchmarks/agreement_results.json`). The whole round at 20,000 x 100,000 is the "
        "Ray backend section's process row.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[20_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    kept: dict[str, dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.report_only:
        commit = (
            args.commit
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        )
        for n in args.clients:
            result = {"commit": commit, "order": len(kept), **run(n, args.workers)}
            print(json.dumps(result), flush=True)
            if args.write:  # read again: another run may have kept one meanwhile
                kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            kept[f"{commit}/{n}/{args.workers}"] = result
            if args.write:
                RESULTS.write_text(json.dumps(kept, indent=1) + "\n")
                sections.write_section(MARKER, section(list(kept.values())))
    else:
        sections.write_section(MARKER, section(list(kept.values())))


if __name__ == "__main__":
    main()

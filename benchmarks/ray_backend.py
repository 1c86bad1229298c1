"""The Ray backend beside the process backend: `secagg simulate` as a user runs it.

    .venv/bin/python benchmarks/ray_backend.py [--clients 1000 20000] [--dim 100000]
        [--dropout 0.05] [--seed 1] [--backends process ray] [--write | --report-only]

Each run is the command line ``secagg simulate --backend B --clients N --dim D --dropout P
--seed S --json --save-aggregate FILE`` in a process of its own, so Ray's cluster (started
by the run) and every worker it forks are the run's own. A sampler reads the proportional set
size (PSS: a page shared between processes counts once, split between them) of the run's whole
process tree every second: its peak is what a user needs free. The machine's used memory is
sampled too and kept in the results file only (a run that starts while the previous run's
processes are still exiting reads low).
The saved aggregate is hashed: the same seed must give the same bytes on every backend.
``--write`` keeps each run in ``benchmarks/ray_results.json`` (one per backend, cohort, size,
dropout and seed) and rewrites the "Ray backend" section of BENCHMARKS.md from every kept run;
``--report-only`` only rewrites the section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sections
from memory import meminfo, process_tree, pss_bytes

ROOT = Path(__file__).resolve().parent.parent
MARKER = "## Ray backend"
RESULTS = ROOT / "benchmarks" / "ray_results.json"
MIB = 2**20


def _used() -> int:
    info = meminfo()
    return info["MemTotal"] - info["MemAvailable"]


class _Sampler:
    """Peaks of a process tree's PSS and of the machine's used memory, once a second."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.base = _used()
        self.peak_tree = self.peak_root = self.peak_used = self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:  # a sample at once, then every second: a short run is not read as 0
            tree = process_tree(self.root)
            total = sum(pss_bytes(pid) for pid in tree)
            if total > self.peak_tree:
                self.peak_tree, self.processes = total, len(tree)
            self.peak_root = max(self.peak_root, pss_bytes(self.root))
            self.peak_used = max(self.peak_used, _used() - self.base)
            if self._stop.wait(1.0):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _command(backend: str, clients: int, dim: int, dropout: float, seed: int) -> list[str]:
    return [
        "secagg", "simulate", "--backend", backend, "--clients", str(clients),
        "--dim", str(dim), "--dropout", str(dropout), "--seed", str(seed),
    ]  # fmt: skip


def run_one(backend: str, clients: int, dim: int, dropout: float, seed: int) -> dict[str, Any]:
    secagg = Path(sys.executable).parent / "secagg"
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "aggregate.npy"
        argv = _command(backend, clients, dim, dropout, seed)
        argv[0] = str(secagg)
        # Ray lowers its workers' priority by default; here they are the work being measured.
        env = {**os.environ, "RAY_worker_niceness": "0"}
        started = time.perf_counter()
        process = subprocess.Popen(
            [*argv, "--json", "--save-aggregate", str(saved)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        sampler = _Sampler(process.pid)
        out, _ = process.communicate()
        sampler.stop()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited with {process.returncode}")
        report = json.loads(out.strip().splitlines()[-1])
        digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    return {
        "backend": backend,
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "seed": seed,
        "command": " ".join(_command(backend, clients, dim, dropout, seed)),
        "outcome": report["outcome"],
        "wall_seconds": round(wall, 1),
        "round_seconds": round(report["seconds"], 1),
        "stage_seconds": {k: round(v, 1) for k, v in report["stage_seconds"].items()},
        "inputs_in_sum": report["inputs_in_sum"],
        "degree": report["degree"],
        "threshold": report["threshold"],
        "max_abs_error": report["max_abs_error"],
        "error_bound": report["error_bound"],
        "aggregate_sha256": digest,
        "peak_pss_all_MiB": round(sampler.peak_tree / MIB),
        "peak_pss_driver_MiB": round(sampler.peak_root / MIB),
        "peak_machine_used_MiB": round(sampler.peak_used / MIB),
        "processes_at_peak": sampler.processes,
        "load_average": round(os.getloadavg()[0], 1),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }


def _key(run: dict[str, Any]) -> str:
    return f"{run['backend']}/{run['clients']}/{run['dim']}/{run['dropout']}/{run['seed']}"


def section(runs: list[dict[str, Any]]) -> str:
    lines = [
        MARKER,
        "",
        "`secagg simulate` on the process backend (one worker process per core) and on Ray "
        "(a local Ray cluster started by the run, batches of clients as actors, the "
        "unmasking sharded over vector ranges), SecAgg+ semi-honest, clients dropping at random "
        "stages. Each row is the command as a user types it (plus `--json --save-aggregate`), "
        "in a process of its own; memory is the peak proportional set size of the run's whole "
        "process tree (Ray's daemons and workers included, its object store in shared memory "
        "counted once), sampled every second. The aggregate's sha256 is over "
        "the saved float32 file: the same seed gives the same bytes on both backends. 'wall s' is "
        "the whole command (start-up, the round, and the plaintext round over the same "
        "clients that the report compares against); 'round s' is the secure round alone.",
        "",
        "| command | outcome | inputs in sum | k / t | wall s | round s | peak PSS all MiB "
        "| aggregate sha256 | max error (bound) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(runs, key=lambda r: (r["clients"], r["dim"], r["dropout"], r["backend"]))
    for r in ordered:
        lines.append(
            f"| `{r['command']}` | {r['outcome']} | {r['inputs_in_sum']:,} "
            f"| {r['degree']} / {r['threshold']} | {r['wall_seconds']:,} "
            f"| {r['round_seconds']:,} | {r['peak_pss_all_MiB']:,} "
            f"| {r['aggregate_sha256'][:16]} "
            f"| {r['max_abs_error']:.1e} ({r['error_bound']:.0e}) |"
        )
    lines.append("")
    pairs: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in ordered:
        pairs.setdefault((r["clients"], r["dim"], r["dropout"], r["seed"]), {})[r["backend"]] = r
    for (clients, dim, _, _), by in pairs.items():
        if {"process", "ray"} <= by.keys():
            p, q = by["process"], by["ray"]
            same = (
                "the same aggregate, bit for bit"
                if (p["aggregate_sha256"] == q["aggregate_sha256"])
                else "**different aggregates**"
            )
            if p.get("commit") != q.get("commit"):
                # A ratio between two commits' runs measures the commits, not the backends.
                lines.append(
                    f"- {clients:,} clients x {dim:,} values: the two backends' kept runs are of "
                    f"different commits ({p.get('commit')}, {q.get('commit')}): no ratio; "
                    f"{same}."
                )
                continue
            lines.append(
                f"- {clients:,} clients x {dim:,} values: Ray's wall time is "
                f"{q['wall_seconds'] / p['wall_seconds']:.2f}x the process backend's, "
                f"its peak memory {q['peak_pss_all_MiB'] / p['peak_pss_all_MiB']:.2f}x; {same}."
            )
    for r in ordered:
        stages = ", ".join(f"{k} {v} s" for k, v in r["stage_seconds"].items())
        lines.append(
            f"- `{r['command']}`: stages {stages}; {r['processes_at_peak']} processes at the "
            f"peak; load average {r['load_average']} at the end; commit "
            f"{r.get('commit') or 'not recorded'}."
        )
    for r in ordered:
        if (r["clients"], r["dim"], r["backend"]) == TARGET_RUN:
            lines.append(_against_target(r))
    lines += [
        "",
        "Command: `python benchmarks/ray_backend.py --clients 1000 20000 --backends process ray "
        "--write` (a row per backend and size it was given; kept runs are in "
        "`benchmarks/ray_results.json`). On several hosts, `ray start --head` on one and `ray "
        "start --address HEAD:6379` on the others, then the same `secagg simulate --backend ray` "
        "with `RAY_ADDRESS=HEAD:6379` (README, 'Simulating on Ray: one machine or many').",
    ]
    return "\n".join(lines) + "\n"


# Issue 23's target: one round (one-shot) of 20,000 clients x 100,000 values on this machine
# under 10 minutes wall, its commit and advertise stages each under 30 s.
TARGET_RUN = (20_000, 100_000, "process")
TARGET_WALL_SECONDS = 600.0
TARGET_STAGE_SECONDS = 30.0


def _against_target(run: dict[str, Any]) -> str:
    """One line: whether ``run`` meets issue 23's target, and by how much it misses."""
    stages = run["stage_seconds"]
    checks = [
        ("wall", run["wall_seconds"], TARGET_WALL_SECONDS),
        ("commit", stages.get("commit", 0.0), TARGET_STAGE_SECONDS),
        ("advertise", stages.get("advertise", 0.0), TARGET_STAGE_SECONDS),
    ]
    missed = [f"{name} {value:,} s against {limit:,.0f} s" for name, value, limit in checks
              if value >= limit]  # fmt: skip
    said = (
        "met" if not missed else "**missed**: " + "; ".join(missed)
    ) + f" (load average {run['load_average']} at the end)"
    return (
        "- Issue 23's target (one round of 20,000 clients x 100,000 values under 10 minutes "
        f"wall, commit and advertise under 30 s each) on commit {run.get('commit')}: {said}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000])
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["process", "ray"])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    kept: dict[str, dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.report_only:
        for clients in args.clients:
            for backend in args.backends:
                run = run_one(backend, clients, args.dim, args.dropout, args.seed)
                print(json.dumps(run), flush=True)
                kept[_key(run)] = run
                if args.write:  # after every run: a long sweep keeps what it has measured
                    RESULTS.write_text(json.dumps(kept, indent=1) + "\n")
                    sections.write_section(MARKER, section(list(kept.values())))
    if args.report_only:
        sections.write_section(MARKER, section(list(kept.values())))


if __name__ == "__main__":
    main()

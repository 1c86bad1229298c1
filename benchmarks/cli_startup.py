"""How long ``secagg --help`` and each ``secagg <command> --help`` take, beside ``python -c
pass`` on the same interpreter (issue 22: under 0.3 s median on this machine).

    python benchmarks/cli_startup.py --write [--against OTHER_CHECKOUT/src]

Each is a fresh process (``python -m secagg``, the console script's entry point); the runs
go round-robin, one of each per repeat, so that a change in the machine's load falls on all
of them alike, after one warm-up round (the file cache). The children import the secagg this
script imports; with ``--against``, the same rows of another checkout's sources (its
``src``, say the commit before the ``cli/`` package) go in the same round-robin, a column
beside. ``--write`` replaces this benchmark's section of BENCHMARKS.md (or appends
it). No test times anything: ``tests/test_cli_startup.py`` holds what ``--help`` imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sections
import typer

import secagg
from secagg.cli import app

MARKER = "## Command-line start-up: `--help` beside `python -c pass`"
TARGET_S = 0.3


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _seconds(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def _runs(source: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """What to run, keyed by what a user types: argv and the environment that imports
    secagg from ``source``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    commands = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    runs = {"python -c pass": ([sys.executable, "-c", "pass"], env)}
    runs["secagg --help"] = ([sys.executable, "-m", "secagg", "--help"], env)
    for name in commands:
        runs[f"secagg {name} --help"] = ([sys.executable, "-m", "secagg", name, "--help"], env)
    return runs


def measure(repeats: int, sources: list[str]) -> list[dict[str, float]]:
    """Median seconds of each invocation for each source tree, keyed by what a user types."""
    runs = [_runs(source) for source in sources]
    samples: list[dict[str, list[float]]] = [{what: [] for what in r} for r in runs]
    for repeat in range(repeats + 1):
        for tree, tree_runs in enumerate(runs):
            for what, (argv, env) in tree_runs.items():
                seconds = _seconds(argv, env)
                if repeat:  # the first round warms the file cache
                    samples[tree][what].append(seconds)
    return [{what: statistics.median(t) for what, t in s.items()} for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--against", help="another checkout's src directory, measured beside")
    args = parser.parse_args()
    here = str(Path(secagg.__file__).resolve().parent.parent)
    before = _uptime()
    measured = measure(args.repeats, [here, *([args.against] if args.against else [])])
    after = _uptime()
    medians = measured[0]
    other = measured[1] if args.against else None
    floor = medians["python -c pass"]
    slowest = max(s for what, s in medians.items() if what != "python -c pass")
    lines = [
        MARKER,
        "",
        f"Command: `python benchmarks/cli_startup.py --repeats {args.repeats} --write"
        + (f" --against {args.against}" if args.against else "")
        + "`. Each "
        "row is a fresh process (`python -m secagg ...`, as the `secagg` console script runs "
        f"it), the median of {args.repeats} runs taken round-robin after one warm-up round; "
        "the ratio is to `python -c pass` on the same interpreter in the same run. The target "
        f"is under {TARGET_S} s for every row; the slowest here is {slowest:.3f} s "
        f"({'met' if slowest < TARGET_S else 'NOT met'}). What `--help` may import is a test "
        "(`tests/test_cli_startup.py`), not a clock.",
        "",
        f"Machine: {sys.platform}, Python {sys.version.split()[0]}, {os.cpu_count()} cores. "
        f"`uptime` before: `{before}`; after: `{after}`.",
        "",
    ]
    if other is None:
        lines += ["| what | median s | / python -c pass |", "|---|---|---|"]
        lines += [f"| `{what}` | {s:.3f} | {s / floor:.1f} |" for what, s in medians.items()]
    else:
        lines += [
            f"| what | median s | / python -c pass | `{args.against}` s | its / python -c pass |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{what}` | {s:.3f} | {s / floor:.1f} | {other.get(what, float('nan')):.3f} | "
            f"{other.get(what, float('nan')) / other['python -c pass']:.1f} |"
            for what, s in medians.items()
        ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        sections.write_section(MARKER, section)


if __name__ == "__main__":
    main()

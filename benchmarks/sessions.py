"""Sessions that span rounds beside one-shot rounds and plaintext, in one run.

    .venv/bin/python benchmarks/sessions.py [--quick] [--clients 100] [--dim 100000]
        [--dropout 0.1] [--rounds 4] [--repeats 5] [--no-flower] [--write]

Each repeat runs, one after the other and in a rotating order: a session of ``--rounds``
rounds (set-up once, then two messages a round), ``--rounds`` one-shot rounds, and
``--rounds`` plaintext FedAvg rounds, every one through ``secagg.simulate.rounds`` (the same
in-process simulator, every message encoded and metered), over the same cohort and the same
inputs, which change every round. Clients drop at ``--dropout`` a round, each at a random
stage of the round it is in (set-up stages for the first round of a session and for every
one-shot round): a session's departed members stay out of it (rule S4), so its later rounds
have fewer clients in the sum (the table gives the median included per kind).

Reported, as medians over every round of a kind: a session's round 2..R, its set-up+round 1,
the set-up alone, a one-shot round and a plaintext round; the ratios between them; bytes
and messages per client per round; and, unless ``--no-flower``, Flower 1.42's own SecAgg+
round at the same size in its simulation engine (benchmarks/flower_peer.py, the last of its
rounds), the issue's yardstick. ``--quick`` is 20 clients x 10,000 values, 3 rounds, 3
repeats, no Flower. ``--write`` rewrites the "Sessions" section of BENCHMARKS.md and keeps
the figures in ``benchmarks/sessions_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import flower_peer
import sections

from secagg.schemes.masking.parameters import Params, ServerModel
from secagg.schemes.plaintext import PlaintextScheme
from secagg.simulate.rounds import (
    DropPlan,
    RoundKind,
    RunResult,
    random_round_inputs,
    simulate_rounds,
)

ROOT = Path(__file__).resolve().parent.parent
MARKER = "## Sessions: a session's round beside a one-shot round and plaintext (same run)"
RESULTS = ROOT / "benchmarks" / "sessions_results.json"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rounds(result: RunResult, kind: RoundKind) -> list[Any]:
    return [r for r in result.report.rounds if r.kind is kind and r.completed]


def measure(
    clients: int, dim: int, dropout: float, rounds: int, repeats: int, active: bool
) -> dict[str, Any]:
    """Medians over ``repeats`` runs of each mode, in a rotating order."""
    params = Params(
        dim=dim,
        max_clients=clients,
        server_model=ServerModel.SEMI_MALICIOUS if active else ServerModel.SEMI_HONEST,
    )
    plain = PlaintextScheme(dim=dim)
    samples: dict[str, list[Any]] = {"session": [], "one-shot": [], "plaintext": []}
    for repeat in range(repeats):
        inputs = random_round_inputs(dim, repeat)
        modes = ["session", "one-shot", "plaintext"]
        modes = modes[repeat % 3 :] + modes[: repeat % 3]
        for mode in modes:
            result = simulate_rounds(
                plain if mode == "plaintext" else params,
                clients,
                inputs,
                rounds,
                session=mode == "session",
                drops=DropPlan(rate=dropout, seed=repeat) if mode != "plaintext" else None,
                seed=repeat,
                baseline=False,
            )
            samples[mode].append(result)
            print(
                f"  repeat {repeat + 1}/{repeats} {mode}: "
                + ", ".join(
                    f"{r.kind.value} {r.report.seconds:.3f} s ({len(r.report.included)} in)"
                    for r in result.report.rounds
                ),
                flush=True,
            )
    session_rounds = [r for res in samples["session"] for r in _rounds(res, RoundKind.SESSION)]
    first_rounds = [
        r for res in samples["session"] for r in _rounds(res, RoundKind.SETUP_AND_ROUND)
    ]
    setups = [s for res in samples["session"] for s in res.report.setups if s.members]
    one_shot = [r for res in samples["one-shot"] for r in _rounds(res, RoundKind.ONE_SHOT)]
    plaintext = [r for res in samples["plaintext"] for r in _rounds(res, RoundKind.ONE_SHOT)]
    aborted = {
        mode: sum(len(res.report.rounds) - res.report.completed for res in runs)
        for mode, runs in samples.items()
    }

    def kind(rows: list[Any]) -> dict[str, Any]:
        return {
            "rounds": len(rows),
            "seconds": _median([r.report.seconds for r in rows]),
            "seconds_all": [r.report.seconds for r in rows],
            "included": _median([float(len(r.report.included)) for r in rows]),
            "upload_bytes_per_client": _median([r.report.upload_bytes_per_client for r in rows]),
            "download_bytes_per_client": _median(
                [r.report.download_bytes_per_client for r in rows]
            ),
            "stages": _median([float(r.stages) for r in rows]),
            "messages_up_per_client": _median([r.messages_up_per_client for r in rows]),
            "messages_down_per_client": _median([r.messages_down_per_client for r in rows]),
            "stage_seconds": {
                s: _median([r.report.stage_seconds.get(s, 0.0) for r in rows])
                for s in (rows[0].report.stage_seconds if rows else {})
            },
        }

    first = samples["session"][0].report
    out: dict[str, Any] = {
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "rounds": rounds,
        "repeats": repeats,
        "server_model": params.server_model.value,
        "degree": first.facts.degree,
        "threshold": first.facts.threshold,
        "ring_bits": first.facts.ring_bits,
        "plaintext_bytes_per_client": 4 * dim,
        "session_round": kind(session_rounds),
        "setup_and_round": kind(first_rounds),
        "one_shot_round": kind(one_shot),
        "plaintext_round": kind(plaintext),
        "setup": {
            "setups": len(setups),
            "seconds": _median([s.seconds for s in setups]),
            "members": _median([float(len(s.members)) for s in setups]),
            "upload_bytes_per_client": _median([s.upload_bytes_per_client for s in setups]),
            "download_bytes_per_client": _median([s.download_bytes_per_client for s in setups]),
            "messages_up_per_client": _median([s.messages_up_per_client for s in setups]),
            "messages_down_per_client": _median([s.messages_down_per_client for s in setups]),
            "stage_seconds": {
                s: _median([x.stage_seconds.get(s, 0.0) for x in setups])
                for s in (setups[0].stage_seconds if setups else {})
            },
        },
        "aborted_rounds": aborted,
        "max_error_over_bound": max(
            (r.report.max_abs_error or 0.0) / r.report.error_bound
            for runs in (samples["session"], samples["one-shot"])
            for res in runs
            for r in res.report.rounds
            if r.completed
        ),
    }
    s, o, p = (out[k]["seconds"] for k in ("session_round", "one_shot_round", "plaintext_round"))
    out["one_shot_over_session"] = o / s
    out["session_over_plaintext"] = s / p
    out["one_shot_over_plaintext"] = o / p
    out["session_upload_vs_float32"] = out["session_round"]["upload_bytes_per_client"] / (4 * dim)
    return out


def flower(clients: int, dim: int, dropout: float) -> dict[str, Any] | None:
    if not flower_peer.available():
        print("Flower peer harness not found: set SECAGG_FLOWER_PEER", file=sys.stderr)
        return None
    results = {r["mode"]: r for r in flower_peer.run(clients, dim, dropout, mode="both")}
    return results


def _per_included(kind: dict[str, Any]) -> float:
    return float(kind["seconds"]) / float(kind["included"])


def _per_client(kind: dict[str, Any]) -> str:
    return f"{1000 * _per_included(kind):.1f} ms"


def _setup_part(kind: dict[str, Any]) -> float:
    """The median seconds a one-shot round spent in its set-up stages."""
    return float(
        sum(kind["stage_seconds"].get(s, 0.0) for s in ("commit", "reveal", "advertise", "share"))
    )


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip() or "?"


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def markdown(runs: list[dict[str, Any]], command: str) -> str:
    lines = [
        MARKER,
        "",
        "A session sets its cohort up once (commit, reveal, advertise, set-up shares) and then "
        "costs each client two messages a round (three in active mode); a one-shot round pays "
        "the set-up every round (docs/SESSIONS.md). Each row is the median over every round of "
        "its kind in all repeats, one after the other in one run, over the same cohort and the "
        "same inputs (fresh every round); clients drop at the stated rate each round, at random "
        "stages. A session's departed members stay out of it, so its later rounds sum fewer "
        "clients ('in sum'). A session's first round runs its set-up (commit, reveal, "
        "advertise, share), whose last message opens the round; the set-up's row is those "
        "stages alone.",
        "",
    ]
    for run in runs:
        n, d = run["clients"], run["dim"]
        lines += [
            f"**{n} clients x {d:,} values, {run['dropout']:.0%} dropout a round, "
            f"{run['server_model']}, k={run['degree']} t={run['threshold']}, "
            f"{run['ring_bits']}-bit ring; {run['repeats']} runs of {run['rounds']} rounds per "
            f"mode.** Command: `{run['command']}`; machine: {run['machine']}; load average "
            f"before / after: {run['load_before']} / {run['load_after']}; commit "
            f"{run['commit']}.",
            "",
            "| round | rounds | in sum | seconds (median) | vs plaintext | stages | messages "
            "up / down per client | upload B/client | vs float32 | download B/client |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        p = run["plaintext_round"]["seconds"]
        names = (
            ("session round (2..R)", "session_round"),
            ("session round 1, its set-up included", "setup_and_round"),
            ("one-shot round", "one_shot_round"),
            ("plaintext FedAvg round", "plaintext_round"),
        )
        for name, key in names:
            k = run[key]
            lines.append(
                f"| {name} | {k['rounds']} | {k['included']:.0f} | {_s(k['seconds'])} | "
                f"{k['seconds'] / p:.1f}x | {k['stages']:.0f} | "
                f"{k['messages_up_per_client']:.0f} / {k['messages_down_per_client']:.0f} | "
                f"{k['upload_bytes_per_client']:,.0f} | "
                f"{k['upload_bytes_per_client'] / (4 * d):.3f}x | "
                f"{k['download_bytes_per_client']:,.0f} |"
            )
        setup = run["setup"]
        lines.append(
            f"| round 1's set-up stages alone | {setup['setups']} | "
            f"{setup['members']:.0f} members | "
            f"{_s(setup['seconds'])} | {setup['seconds'] / p:.1f}x | 4 | "
            f"{setup['messages_up_per_client']:.0f} / {setup['messages_down_per_client']:.0f} | "
            f"{setup['upload_bytes_per_client']:,.0f} | - | "
            f"{setup['download_bytes_per_client']:,.0f} |"
        )
        lines.append("")
        bullets = [
            f"A session round is **{run['one_shot_over_session']:.2f}x** faster than a one-shot "
            f"round, **{run['session_over_plaintext']:.1f}x** a plaintext round (one-shot: "
            f"{run['one_shot_over_plaintext']:.1f}x); its upload is "
            f"**{run['session_upload_vs_float32']:.3f}x** plaintext float32. Per client in the "
            f"sum (the session's rounds sum fewer): {_per_client(run['session_round'])} against "
            f"{_per_client(run['one_shot_round'])}, "
            f"{_per_included(run['one_shot_round']) / _per_included(run['session_round']):.2f}x.",
            "Stages (median s): session round "
            + ", ".join(f"{s} {t:.3f}" for s, t in run["session_round"]["stage_seconds"].items())
            + "; one-shot round "
            + ", ".join(f"{s} {t:.3f}" for s, t in run["one_shot_round"]["stage_seconds"].items())
            + "; set-up "
            + ", ".join(f"{s} {t:.3f}" for s, t in run["setup"]["stage_seconds"].items())
            + ".",
            f"Aborted rounds: {run['aborted_rounds']}; largest error / its bound over every "
            f"completed round: {run['max_error_over_bound']:.2f}.",
            "Where the time goes: a session round skips the one-shot round's set-up stages "
            f"(commit to share, {_setup_part(run['one_shot_round']):.3f} s of its "
            f"{run['one_shot_round']['seconds']:.3f} s here), but each client seals its shares "
            "under keys fresh for the round and opens its neighbours' the same way (three X25519 "
            f"exchanges per neighbour and round, against two; k = {run['degree']}), and opening "
            "them moves into its unmask stage. In process a stage costs no network latency, so "
            "the two come out about even; what a session saves is stages (2 against 6, 3 "
            "against 7 in active mode), which is what a deployment's round trips and an "
            "engine's polling charge for.",
        ]
        fl = run.get("flower")
        if fl:
            sec = fl["secagg+"]
            plain = fl.get("plain")
            ratio = sec["round_s"] / run["session_round"]["seconds"]
            bullets.append(
                f"Flower 1.42 SecAgg+ in its simulation engine, same size and dropout, same run: "
                f"**{sec['round_s']:.2f} s** a round (k={sec.get('num_shares')}, "
                f"t={sec.get('threshold')}, upload {sec['up_bytes_per_surviving_client']:,} "
                f"B/client); a session round is **{ratio:.1f}x** faster (issue 23's target: 30x)"
                + (f"; Flower's plaintext FedAvg round {plain['round_s']:.2f} s." if plain else ".")
            )
        lines += [f"- {b}" for b in bullets]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 x 10,000, 3 rounds, 3 repeats")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--active", action="store_true", help="semi-malicious (active) mode")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the section from the kept results"
    )
    args = parser.parse_args()
    if args.report_only:
        kept = json.loads(RESULTS.read_text())
        sections.write_section(MARKER, markdown(kept, ""))
        return
    if args.quick:
        args.clients, args.dim, args.rounds, args.repeats, args.no_flower = 20, 10_000, 3, 3, True
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.clients} x {args.dim:,}, {args.rounds} rounds x {args.repeats}", flush=True)
    run = measure(args.clients, args.dim, args.dropout, args.rounds, args.repeats, args.active)
    if not args.no_flower:
        run["flower"] = flower(args.clients, args.dim, args.dropout)
    run["load_before"] = load_before
    run["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    run["machine"] = f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores"
    run["commit"] = _commit()
    run["command"] = "python benchmarks/sessions.py " + " ".join(sys.argv[1:])
    summary = {k: v for k, v in run.items() if not isinstance(v, dict)}
    print(json.dumps(summary, indent=1))
    if args.write:
        kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        key = (run["clients"], run["dim"], run["server_model"])
        kept = [r for r in kept if (r["clients"], r["dim"], r["server_model"]) != key] + [run]
        kept.sort(key=lambda r: (r["server_model"], r["clients"] * r["dim"]))
        RESULTS.write_text(json.dumps(kept, indent=1) + "\n")
        section = markdown(kept, run["command"])
        sections.write_section(MARKER, section)
        print(section)
    else:
        print(markdown([run], run["command"]))


if __name__ == "__main__":
    main()

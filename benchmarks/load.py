"""Load: many clients against one coordinator over TLS on loopback.

    .venv/bin/python benchmarks/load.py [--clients 1000] [--dim 100000] [--processes 4]
        [--window 64] [--dropout 0.05] [--stage-timeout 600] [--write | --report-only]

The coordinator runs as its own process (`secagg serve --json`), so its peak memory is its
own; the clients run as asyncio tasks spread over a few processes (`load_clients.py`).
``--dropout`` makes that fraction of the clients vanish, each at a stage drawn at random
(from a fixed seed), from training to unmasking. The aggregate the coordinator committed to
its ledger is checked against the exact weighted mean of the clients it says it included.
The figures: round time, time per stage, the coordinator's resident memory after each stage
and its peak within it (its own log), its peak over the whole run, bytes per client.
``--write`` keeps this run in ``benchmarks/load_results.json`` (one run per cohort size and
dropout) and rewrites the "Load" section of BENCHMARKS.md from every kept run;
``--report-only`` only rewrites the section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sections
from memory import meminfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secagg.ledger import Ledger  # noqa: E402
from secagg.schemes.masking.parameters import Params  # noqa: E402
from secagg.service.config import DeploymentConfig  # noqa: E402
from secagg.service.credentials import create_deployment  # noqa: E402
from secagg.service.tasks import random_update, random_weight  # noqa: E402

MARKER = "## Load: one coordinator, many clients"
RESULTS = ROOT / "benchmarks" / "load_results.json"
# Where a client may vanish: as it trains, or as it is about to answer a stage.
DROP_STAGES = ("train", "commit", "reveal", "advertise", "share", "masked-input", "unmask")
SEED = b"secagg/benchmarks/load"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _draw(label: str, index: int, modulus: int) -> int:
    """A fixed pseudo-random draw (the schedule of failures, nothing secret)."""
    digest = hashlib.sha256(SEED + f"/{label}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulus


def drop_schedule(clients: int, dropout: float) -> dict[int, str]:
    """Exactly round(dropout x clients) clients, each with the stage it vanishes at."""
    count = round(dropout * clients)
    order = sorted(range(clients), key=lambda c: _draw("who", c, 2**62))
    return {c: DROP_STAGES[_draw("when", c, len(DROP_STAGES))] for c in sorted(order[:count])}


def run(
    clients: int,
    dim: int,
    processes: int,
    workdir: Path,
    *,
    window: int,
    dropout: float,
    stage_timeout: float,
) -> dict[str, Any]:
    deployment = create_deployment(workdir, clients)
    params = Params(dim=dim, max_clients=clients, max_weight=3)
    port = _free_port()
    config_path = DeploymentConfig.write(
        workdir,
        deployment,
        params,
        port=port,
        min_clients=clients,
        stage_timeout=stage_timeout,
        cohort_wait=max(900.0, clients * 0.05),
    )
    config = DeploymentConfig.load(config_path)
    drops = drop_schedule(clients, dropout)
    started = time.perf_counter()
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secagg",
            "serve",
            "--config",
            str(config_path),
            "--rounds",
            "1",
            "--upload-window",
            str(window),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=open(workdir / "coordinator.log", "wb"),  # noqa: SIM115
        text=True,
    )
    workers = []
    for p in range(processes):
        ids = list(range(p, clients, processes))
        mine = ",".join(f"{c}:{drops[c]}" for c in ids if c in drops)
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "load_clients.py"),
                    "--config",
                    str(config_path),
                    "--ids",
                    ",".join(map(str, ids)),
                    "--identities",
                    str(workdir / "clients"),
                    "--target",
                    f"127.0.0.1:{port}",
                    "--drops",
                    mine,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(workdir / f"clients-{p}.log", "wb"),  # noqa: SIM115
            )
        )
    try:
        _wait_watching_memory(coordinator)
    except MemoryError:
        for process in (coordinator, *workers):
            process.kill()
        raise
    out, _ = coordinator.communicate(timeout=60)
    # The coordinator is the only child reaped so far: these are its CPU seconds.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    coordinator_cpu = usage.ru_utime + usage.ru_stime
    for w in workers:
        try:
            w.wait(timeout=120)
        except subprocess.TimeoutExpired:
            w.kill()
    log = (workdir / "coordinator.log").read_text()
    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not rounds:
        raise RuntimeError(log[-3000:])
    result = rounds[-1]
    result["memory_mib"] = _memory(log)
    result["coordinator_cpu_seconds"] = coordinator_cpu
    result["wall_seconds_including_startup"] = time.perf_counter() - started
    result.update(
        clients=clients,
        dim=dim,
        client_processes=processes,
        upload_window=window,
        dropout=dropout,
        scheduled_drops=len(drops),
        stage_timeout=stage_timeout,
        ring_bits=params.ring_bits,
        degree=params.graph(clients).degree,
        threshold=params.graph(clients).threshold,
        load_average=os.getloadavg()[0],
    )
    if result["outcome"] == "completed":
        result.update(_check_aggregate(config, result["round_id"], dim))
    return result


# The machine is shared: stop the run rather than let the kernel's OOM killer pick a victim.
MIN_AVAILABLE_MIB = 1536


def _available_mib() -> int:
    return meminfo().get("MemAvailable", 1 << 50) >> 20


def _wait_watching_memory(coordinator: subprocess.Popen[str]) -> None:
    """Until the coordinator exits; ``MemoryError`` if the machine runs short of memory."""
    while True:
        try:
            coordinator.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            available = _available_mib()
            if available < MIN_AVAILABLE_MIB:
                raise MemoryError(
                    f"stopped: {available} MiB left on the machine (below {MIN_AVAILABLE_MIB})"
                ) from None


def _memory(log: str) -> list[list[Any]]:
    """[stage, resident MiB after it, peak MiB within it], from the coordinator's log."""
    rows: list[list[Any]] = []
    for line in log.splitlines():
        start = re.search(r"round \d+: \w+, cohort of \d+.*\(resident memory (\d+) MiB\)", line)
        if start:
            rows.append(["round start", int(start[1]), int(start[1])])
        stage = re.search(
            r"round \d+: (\S+) took .*\(resident memory (\d+) MiB, peak (\d+) MiB\)", line
        )
        if stage:
            rows.append([stage[1], int(stage[2]), int(stage[3])])
    return rows


def _check_aggregate(config: DeploymentConfig, round_id: int, dim: int) -> dict[str, Any]:
    """The committed aggregate against the exact weighted mean of the included clients."""
    with Ledger.open_readonly(config.ledger) as ledger:
        record = ledger.round(round_id)
        aggregate = ledger.aggregate(round_id)
    total = np.zeros(dim)
    weights = 0
    for c in record.included:
        w = random_weight(c)
        # The clients send their update as float16 (load_clients.py).
        total += w * random_update(c, dim, 0, 0).astype(np.float16).astype(np.float64)
        weights += w
    exact = total / weights
    error = float(np.max(np.abs(aggregate - exact)))
    return {"max_error": error, "included_ids_checked": len(record.included)}


def _row(r: dict[str, Any]) -> str:
    exact = f"{r['max_error']:.1e} (bound {r['error_bound']:.0e})" if "max_error" in r else "-"
    peak_stage = max(row[2] for row in r["memory_mib"]) if r["memory_mib"] else 0
    return (
        f"| {r['clients']:,} | {r['dim']:,} | {r['upload_window']} | {r['dropout']:.0%} | "
        f"{r['degree']} / {r['threshold']} | {r['outcome']} | {r['included']:,} | {exact} | "
        f"{r['seconds']:.0f} | {peak_stage:,} | {r['peak_rss_bytes'] / 2**20:,.0f} | "
        f"{r['upload_bytes_per_client']:,.0f} | {r['download_bytes_per_client']:,.0f} |"
    )


def _details(r: dict[str, Any]) -> list[str]:
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stage_seconds"].items())
    memory = ", ".join(f"{s} {after:,} / {peak:,}" for s, after, peak in r["memory_mib"])
    seconds = r.get("coordinator_cpu_seconds")
    cpu = "" if seconds is None else f" The coordinator used {seconds:.0f} CPU seconds."
    return [
        f"**{r['clients']:,} clients x {r['dim']:,} values, window {r['upload_window']}, "
        f"{r['dropout']:.0%} dropping.** Command: `{r['command']}` (load average "
        f"{r['load_average']:.1f} at the end).",
        "",
        f"- Stages: {stages}.{cpu}",
        f"- Coordinator resident memory after / peak within each stage (MiB): {memory}.",
        f"- {r['scheduled_drops']} clients were scheduled to vanish (at random stages); "
        f"{len(r['dropped'])} were dropped, {r['included']:,} inputs are in the sum, whose "
        f"largest error against the exact weighted mean of those clients is "
        f"{r.get('max_error', float('nan')):.1e} (the encoding's bound "
        f"{r['error_bound']:.1e}).",
        "",
    ]


def write_markdown(results: list[dict[str, Any]]) -> None:
    results = sorted(results, key=lambda r: (r["clients"], r["dim"], r["dropout"]))
    section = [
        MARKER,
        "",
        "The coordinator is its own process (`secagg serve --json`); the clients are asyncio "
        "tasks in a few processes on the same 2-core machine, every one with its own TLS "
        "connection over loopback, so clients and coordinator share the two cores (and the "
        "clients' own memory is not the coordinator's). Flow control (docs/SCALING.md): at most "
        "W clients are sent a model-sized message at once (the model, or the shares that make "
        "them upload their masked input); the others are told they are queued. 'peak in a "
        "stage' is the largest resident memory the coordinator sampled during any stage; "
        "'peak RSS' is the process's peak over its whole life (ru_maxrss), start-up included.",
        "",
        "| clients | dim | W | dropout | k / t | outcome | included | max error | round s | "
        "peak in a stage MiB | peak RSS MiB | upload B/client | download B/client |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in results),
        "",
    ]
    for r in results:
        section += _details(r)
    section += [
        "What the memory is made of (docs/SCALING.md has the model). The window holds the "
        "model-sized part to W frames: before flow control the coordinator of the 1,000-client "
        "round peaked at 1,026 MiB, because every client was sent the model and uploaded its "
        "masked input at about the same moment and every connection kept its last frame. What "
        "remains grows with the clients, not with what they upload: gRPC over TLS costs about "
        "84 KiB per connection while idle (10,000 idle connections: 913 MiB, measured here), "
        "and its buffers keep about 26 KiB more per connection once it has carried a model "
        "down and about 30 KiB more once it has carried an upload (the commit and masked-input "
        "rows: they stay after the stage, and neither glibc's trimming nor gRPC's read-chunk "
        "options give them back); the protocol's routing state (each client's keys and the "
        "sealed shares for its k neighbours, as Python objects) adds about 500 bytes per client "
        "and neighbour (the advertise and share rows). At 10,000 clients that is 0.9 + 0.55 + "
        "0.4 GiB, "
        "well above the 512 MiB this issue aimed for: one process cannot hold 10,000 "
        "clients' TLS connections in 512 MiB with gRPC, whatever the window (docs/SCALING.md "
        "says what a deployment does instead).",
        "",
        "The 10,000-client round's time is the clients' own work on the machine's two cores: "
        "the advertise stage (878 s) is every client checking the commit-reveal contributions "
        "list, one SHA-256 per participant (10^8 in all); the coordinator's share was its "
        "CPU seconds above.",
        "",
    ]
    sections.write_section(MARKER, "\n".join(section))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--stage-timeout", type=float, default=600.0)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    saved: list[dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.report_only:
        with tempfile.TemporaryDirectory(prefix="secagg-load-") as tmp:
            result = run(
                args.clients,
                args.dim,
                args.processes,
                Path(tmp),
                window=args.window,
                dropout=args.dropout,
                stage_timeout=args.stage_timeout,
            )
        result["command"] = " ".join(["python", "benchmarks/load.py", *sys.argv[1:]])
        print(json.dumps(result, indent=1))
        if not args.write:
            return
        key = (result["clients"], result["dim"], result["dropout"])
        saved = [r for r in saved if (r["clients"], r["dim"], r["dropout"]) != key]
        saved.append(result)
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    if saved:
        write_markdown(saved)


if __name__ == "__main__":
    main()

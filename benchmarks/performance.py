"""The performance figures beyond one round: every core, Shamir and key agreement at 1,000
clients, bandwidth in Bonawitz et al.'s own metric, scaling plots, Flower at three sizes.

Called by run.py (one command runs everything); each function returns plain figures and
``markdown`` renders them.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import floor
from memory import tree_pss_bytes

from secagg.hazmat.keys import X25519KeyPair
from secagg.hazmat.randomness import DeterministicRandomness, SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import combine, split
from secagg.schemes.masking.parameters import Params
from secagg.simulate import DropSchedule, random_inputs, root_randomness, simulate_round

ROOT = Path(__file__).resolve().parent.parent


def _floor_rate(_: int) -> float:
    return 1.0 / floor.floor_ns_per_element(repeats=3)


def all_core_floor_ns(workers: int) -> float:
    """ns per element when every core runs the fused floor at once (aggregate rate)."""
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        rates = pool.map(_floor_rate, range(workers))
    return 1.0 / sum(rates)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def shamir_and_key_agreement(n: int, dim: int, floor_ns: float) -> dict[str, Any]:
    """A whole round's secret sharing, reconstruction and key agreement at n clients,
    against the masking work of the same round (n x (k+1) x dim at the floor)."""
    graph = Params(dim=dim, max_clients=n).graph(n)
    k, t = graph.degree, graph.threshold
    rng = DeterministicRandomness(hashlib.sha256(b"bench/shamir").digest())
    secret = rng.bytes(32)
    holders = list(range(1, k + 1))
    per_split = _median_time(lambda: split(secret, holders, t, rng), 30)
    # Every owner's holders differ (its own neighbourhood): time combinations that no cache
    # of Lagrange coefficients has seen.
    combine_times = []
    for trial in range(40):
        xs = list(range(1 + trial * t, 1 + (trial + 1) * t))
        shares = split(secret, xs, t, rng)
        t0 = time.perf_counter()
        combine(shares, t)
        combine_times.append(time.perf_counter() - t0)
    per_combine = statistics.median(combine_times)
    a = X25519KeyPair.generate(SystemRandomness())
    b = X25519KeyPair.generate(SystemRandomness()).public
    per_exchange = _median_time(lambda: a.exchange(b), 200)
    sharing = n * 2 * per_split  # every client shares its seed and its mask key
    reconstruction = n * per_combine  # about one secret per client comes back
    key_agreement = n * 2 * k * per_exchange  # two keys per pair, computed by each side
    masking = n * (k + 1) * (dim + 1) * floor_ns * 1e-9
    return {
        "clients": n,
        "degree": k,
        "threshold": t,
        "dim": dim,
        "split_ms": per_split * 1e3,
        "combine_ms": per_combine * 1e3,
        "x25519_us": per_exchange * 1e6,
        "sharing_s": sharing,
        "reconstruction_s": reconstruction,
        "key_agreement_s": key_agreement,
        "masking_floor_s": masking,
        "shamir_over_masking": (sharing + reconstruction) / masking,
        "key_agreement_over_masking": key_agreement / masking,
    }


def bonawitz_expansion(n: int = 1024, values: int = 2**20, bits: int = 16) -> dict[str, Any]:
    """Bonawitz et al.'s metric: bytes a client sends / the 16-bit values sent in the clear.

    Everything but the masked vector (keys, shares, framing, unmask answers) does not depend
    on the vector's length: it is measured in a real round with a short vector, and the
    bit-packed vector of ``values`` elements is added at its exact size.
    """
    small = 1024
    params = Params(dim=small, max_clients=n, value_bits=bits)
    report = simulate_round(params, n, random_inputs(small, 1), seed=1).report
    ring = Ring(params.ring_bits)
    overhead = report.upload_bytes_per_client - ring.packed_size(small + 1)
    total = overhead + ring.packed_size(values + 1)
    clear = values * bits / 8
    return {
        "clients": n,
        "values": values,
        "value_bits": bits,
        "ring_bits": params.ring_bits,
        "degree": report.degree,
        "overhead_bytes": overhead,
        "upload_bytes": total,
        "expansion": total / clear,
        "ring_growth": params.ring_bits / bits,
        "beyond_ring_growth": total / clear / (params.ring_bits / bits) - 1,
    }


def round_seconds(n: int, dim: int, dropout: float, repeats: int) -> float:
    params = Params(dim=dim, max_clients=n)
    samples = []
    for r in range(repeats):
        drops = DropSchedule.random(n, dropout, root_randomness(r, "dropout"))
        report = simulate_round(params, n, random_inputs(dim, r), drops=drops, seed=r).report
        assert report.outcome == "completed", report.abort_reason
        samples.append(report.seconds)
    return statistics.median(samples)


def scaling(repeats: int) -> dict[str, Any]:
    clients = [(n, round_seconds(n, 100_000, 0.1, repeats)) for n in (50, 100, 200, 400)]
    dims = [(d, round_seconds(100, d, 0.1, repeats)) for d in (10_000, 100_000, 1_000_000)]
    return {"vs_clients": clients, "vs_dim": dims}


def plot(scaling_out: dict[str, Any], flower_points: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*scaling_out["vs_clients"], strict=True)
    ax.plot(xs, ys, "o-", label="secagg (SecAgg+, simulator)")
    if flower_points:
        ax.plot(
            [p["clients"] for p in flower_points],
            [p["flower_s"] for p in flower_points],
            "s--",
            label="Flower 1.42 SecAgg+",
        )
    ax.set_xlabel("clients")
    ax.set_ylabel("round seconds (median)")
    ax.set_yscale("log")
    ax.set_title("One round, 100,000 values, 10% dropout (Flower at 50 clients: none)")
    ax.legend()
    fig.tight_layout()
    path = ROOT / "docs" / "bench_clients.png"
    fig.savefig(path, dpi=100)
    paths.append(str(path.relative_to(ROOT)))
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*scaling_out["vs_dim"], strict=True)
    ax.plot(xs, ys, "o-", label="secagg (SecAgg+, simulator)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("values per update")
    ax.set_ylabel("round seconds (median)")
    ax.set_title("One round, 100 clients, 10% dropout")
    ax.legend()
    fig.tight_layout()
    path = ROOT / "docs" / "bench_dim.png"
    fig.savefig(path, dpi=100)
    paths.append(str(path.relative_to(ROOT)))
    plt.close("all")
    return paths


def markdown(out: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    su = out.get("server_unmasking_all_cores")
    if su:
        lines += [
            "",
            "## Every core",
            "",
            f"All-core floor (the fused loop on {su['workers']} cores at once): "
            f"**{out['all_core_floor_ns']:.3f} ns per element**.",
            "",
            "| what | size | ours | all-core floor | floor / ours |",
            "|---|---|---|---|---|",
            f"| server unmasking, {su['workers']} processes over vector ranges | "
            f"n={su['clients']}, m={su['dim']:,}, {su['dropped']} dropped, "
            f"{su['mask_expansions']} masks | {su['ours_ms']:.1f} ms | {su['floor_ms']:.1f} ms | "
            f"{su['floor_over_ours']:.2f} |",
        ]
    sk = out.get("shamir_and_key_agreement")
    if sk:
        lines += [
            "",
            f"## Shamir and key agreement at {sk['clients']:,} clients (k={sk['degree']}, "
            f"t={sk['threshold']})",
            "",
            "| per round, all clients | seconds | vs masking work of the round |",
            "|---|---|---|",
            f"| masking at the floor ({sk['clients']:,} x {sk['degree'] + 1} masks x "
            f"{sk['dim']:,}) | {sk['masking_floor_s']:.2f} | 1.00 |",
            f"| Shamir sharing (2 secrets per client, {sk['split_ms']:.2f} ms each) + "
            f"reconstruction ({sk['combine_ms']:.2f} ms per secret) | "
            f"{sk['sharing_s'] + sk['reconstruction_s']:.2f} | {sk['shamir_over_masking']:.2f} |",
            f"| X25519 key agreement (2 per pair and side, {sk['x25519_us']:.0f} us each) | "
            f"{sk['key_agreement_s']:.2f} | {sk['key_agreement_over_masking']:.2f} |",
        ]
    bw = out.get("bonawitz_expansion")
    if bw:
        lines += [
            "",
            "## Bandwidth in Bonawitz et al.'s metric",
            "",
            f"{bw['clients']:,} clients, {bw['values']:,} values of {bw['value_bits']} bits "
            f"(k={bw['degree']}): a client uploads {bw['upload_bytes']:,.0f} bytes, "
            f"**{bw['expansion']:.3f}x** the values in the clear (the paper reports 1.73x). "
            f"The ring's growth alone is {bw['ring_bits']}/{bw['value_bits']} = "
            f"{bw['ring_growth']:.3f}x; keys, shares, framing and unmask answers "
            f"({bw['overhead_bytes']:,.0f} bytes, measured in a real round) add "
            f"**{100 * bw['beyond_ring_growth']:.2f}%** on top.",
        ]
    fl = out.get("flower_points")
    if fl:
        lines += [
            "",
            "## Against Flower's SecAgg+ at three sizes (same run)",
            "",
            "| clients | dim | dropout | secagg s (k/t) | Flower s (k/t) | secagg faster by | "
            "secagg on Flower's graph size | upload B/client secagg | Flower |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in fl:
            lines.append(
                f"| {p['clients']} | {p['dim']:,} | {p['dropout']} | {p['ours_s']:.3f} "
                f"({p['degree']}/{p['threshold']}) | {p['flower_s']:.2f} "
                f"({p['flower_k']}/{p['flower_t']}) | **{p['speedup']:.1f}x** | "
                f"{p['ours_same_graph_s']:.3f} s, k={p['same_graph_degree']}: "
                f"{p['speedup_same_graph']:.1f}x | {p['ours_up']:,.0f} | {p['flower_up']:,} |"
            )
    if fl:
        lines += [
            "",
            "Flower's degree is its default 2*ceil(log2 n)+1 shares (itself included), chosen "
            "without a security analysis; ours comes from the sigma=40 / eta=20 finder, so at "
            "these sizes every secagg client masks against more neighbours. The column 'on "
            "Flower's graph size' runs secagg with Flower's degree and threshold to compare "
            "equal work. Both simulators use the machine's two cores (Flower through Ray, "
            "secagg through one client process per core).",
        ]
    sc = out.get("scaling")
    if sc:
        lines += [
            "",
            "## Scaling",
            "",
            "Round time (median) vs clients at 100,000 values: "
            + ", ".join(f"{n}: {s:.2f} s" for n, s in sc["vs_clients"])
            + "; vs values at 100 clients: "
            + ", ".join(f"{d:,}: {s:.2f} s" for d, s in sc["vs_dim"])
            + ".",
            "",
        ]
        for path in out.get("plots", []):
            lines.append(f"![{Path(path).stem}]({path})")
    return lines


def big_cohort(clients: int = 10_000, dim: int = 100_000, dropout: float = 0.05) -> dict[str, Any]:
    """The CLI round at 10,000 clients: wall time and the peak memory of all its processes."""
    import json
    import subprocess
    import sys
    import tempfile

    command = [
        sys.executable,
        "-m",
        "secagg",
        "simulate",
        "--clients",
        str(clients),
        "--dim",
        str(dim),
        "--protocol",
        "secagg+",
        "--dropout",
        str(dropout),
        "--seed",
        "1",
        "--json",
    ]
    t0 = time.perf_counter()
    # The report lists every included id: far more than a pipe holds while we only poll.
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_pss_bytes(process.pid))
            time.sleep(0.5)
        out.seek(0)
        report = json.loads(out.read())
    return {
        "command": "secagg " + " ".join(command[3:]),
        "clients": clients,
        "dim": dim,
        "outcome": report["outcome"],
        "seconds": report["seconds"],
        "wall_seconds": time.perf_counter() - t0,
        "stage_seconds": report["stage_seconds"],
        "peak_rss_bytes": peak,
        "degree": report["degree"],
        "threshold": report["threshold"],
    }


def big_cohort_markdown(b: dict[str, Any]) -> list[str]:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in b["stage_seconds"].items())
    return [
        "",
        f"## {b['clients']:,} clients",
        "",
        f"`{b['command']}`: {b['outcome']} in **{b['wall_seconds']:.0f} s** wall "
        f"({b['seconds']:.0f} s in the round: {stages}), k={b['degree']}, t={b['threshold']}; "
        f"peak memory of all its processes **{b['peak_rss_bytes'] / 2**30:.2f} GiB** "
        "(proportional set size, so pages a forked worker shares with its parent count once; "
        "sampled every 0.5 s). Clients run in one worker process per core and stream their "
        "replies; no process holds every client's vector or every pairwise key.",
    ]

"""secagg's benchmark: every figure beside its reference, measured in the same run.

    .venv/bin/python benchmarks/run.py [--write] [--repeats R] [--no-flower]

Figures (medians of R repeats; ratios, since machines here are shared and noisy):

1. the fused AES-CTR expand-and-add floor, in ns per element on one core;
2. client masking (quantise, self mask, k pairwise masks, bit-pack) as floor / ours;
3. server unmasking (reconstruct, regenerate and remove masks) as floor / ours;
4. a whole simulated round at 100 clients x 100,000 values with 10% dropout, beside Flower's
   SecAgg+ round in its own simulator (../shared/peers/flower/), and bytes per client.

``--write`` replaces BENCHMARKS.md with this run's table and the exact command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor
import flower_peer
import performance
import sections

from secagg.hazmat.randomness import DeterministicRandomness
from secagg.parallel import MaskApplier, usable_cores
from secagg.protocol.codec import Message
from secagg.protocol.runner import RoundRun
from secagg.protocol.stages import DROP_STAGES, Stage
from secagg.schemes.masking.client import Client
from secagg.schemes.masking.messages import PeerShares
from secagg.schemes.masking.parameters import Params, ServerModel
from secagg.schemes.masking.server import Server
from secagg.simulate import (
    SEMI_HONEST_STAGES,
    DropSchedule,
    random_inputs,
    root_randomness,
    simulate_round,
)

ROOT = Path(__file__).resolve().parent.parent


# A round stopped at its masked-input stage: the server, the clients, the engine's stages
# (resuming them closes the stage) and the shares each client is sent to mask with.
_AtMaskedInput = tuple[
    Server, dict[int, Client], Iterator[tuple[Stage, dict[int, Message]]], dict[int, PeerShares]
]


def _round_to_masking(
    params: Params, n: int, seed: int, *, applier: MaskApplier | None = None
) -> _AtMaskedInput:
    """A round run by the round engine up to its masked-input stage, every client answering
    through its one entry point. ``applier`` regenerates the server's masks (one core when
    None)."""
    rng = DeterministicRandomness(hashlib.sha256(f"bench/{seed}".encode()).digest())
    config = params.round_config(range(n), nonce=rng.bytes(16))
    server = Server(config) if applier is None else Server(config, apply_masks=applier)
    clients = {i: Client(config, i, rng.fork(f"c{i}")) for i in config.client_ids}
    stages = RoundRun(server).stages()
    for stage, outgoing in stages:
        if stage is Stage.MASKED_INPUT:
            shares = {i: m for i, m in outgoing.items() if isinstance(m, PeerShares)}
            return server, clients, stages, shares
        for i, message in outgoing.items():
            server.receive(i, clients[i].receive(message))
    raise AssertionError(f"the round ended before its masked input: {server.abort_reason}")


def client_masking(dim: int, degree: int, samples: int, floor_ns: float) -> dict[str, Any]:
    """Time the masked-input answer of ``samples`` clients, each with exactly ``degree``
    pairwise masks (the input is given beforehand, as a driver does)."""
    params = Params(dim=dim, max_clients=degree + 1, degree=degree, threshold=degree // 3 + 1)
    _, clients, _, shares = _round_to_masking(params, degree + 1, seed=dim)
    values = random_inputs(dim, seed=1)(0)
    times = []
    for i in list(clients)[:samples]:
        clients[i].set_input(values, 1)
        t0 = time.perf_counter()
        clients[i].receive(shares[i])
        times.append(time.perf_counter() - t0)
    ours = statistics.median(times)
    floor_s = (degree + 1) * (dim + 1) * floor_ns * 1e-9
    return {
        "dim": dim,
        "degree": degree,
        "ours_ms": ours * 1e3,
        "floor_ms": floor_s * 1e3,
        "floor_over_ours": floor_s / ours,
    }


def server_unmasking(
    n: int,
    dim: int,
    dropped: int,
    floor_ns: float,
    repeats: int,
    *,
    applier: MaskApplier | None = None,
) -> dict[str, Any]:
    """Time the server's unmask stage after ``dropped`` clients missed the masked input
    (on one core, or with ``applier`` as the driver's choice of mask regeneration)."""
    params = Params(dim=dim, max_clients=n)
    samples = []
    expansions = 0
    degree = 0
    for r in range(repeats):
        server, clients, stages, shares = _round_to_masking(
            params, n, seed=1000 + r, applier=applier
        )
        degree = server.config.degree
        values = random_inputs(dim, seed=2)(0)
        for i, m in shares.items():
            if i >= dropped:
                clients[i].set_input(values, 1)
                server.receive(i, clients[i].receive(m))
        stage, requests = next(stages)  # the masked-input stage closes
        assert stage is Stage.UNMASK, stage
        for i, request in requests.items():
            server.receive(i, clients[i].receive(request))
        included = set(requests)
        expansions = len(included) + sum(
            sum(1 for v in server.masked_with(u) if v in included) for u in range(dropped)
        )
        t0 = time.perf_counter()
        assert next(stages, None) is None  # the unmask stage closes: the round's last
        samples.append(time.perf_counter() - t0)
        assert server.stage is Stage.COMPLETED, server.abort_reason
    ours = statistics.median(samples)
    floor_s = expansions * (dim + 1) * floor_ns * 1e-9
    return {
        "clients": n,
        "dim": dim,
        "dropped": dropped,
        "degree": degree,
        "workers": 1 if applier is None else applier.workers,
        "mask_expansions": expansions,
        "ours_ms": ours * 1e3,
        "floor_ms": floor_s * 1e3,
        "floor_over_ours": floor_s / ours,
    }


def whole_round(
    n: int,
    dim: int,
    dropout: float,
    repeats: int,
    stage: str | None,
    *,
    active: bool = False,
    graph: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Median seconds of a simulated round; drops at random stages, or all at ``stage``.

    ``active`` runs the malicious-server mode; ``graph`` forces (degree, threshold).
    """
    params = Params(
        dim=dim,
        max_clients=n,
        server_model=ServerModel.SEMI_MALICIOUS if active else ServerModel.SEMI_HONEST,
        degree=None if graph is None else graph[0],
        threshold=None if graph is None else graph[1],
    )
    stages = DROP_STAGES if active else SEMI_HONEST_STAGES
    samples, reports = [], []
    for r in range(repeats):
        if stage is None:
            drops = DropSchedule.random(n, dropout, root_randomness(r, "dropout"), stages=stages)
        else:
            drops = DropSchedule({stage: frozenset(range(round(dropout * n)))})
        result = simulate_round(params, n, random_inputs(dim, r), drops=drops, seed=r)
        assert result.report.outcome == "completed", result.report.abort_reason
        samples.append(result.report.seconds)
        reports.append(result.report)
    report = reports[0]
    return {
        "clients": n,
        "dim": dim,
        "dropout": dropout,
        "drop_stage": stage or "random",
        "degree": report.degree,
        "threshold": report.threshold,
        "ring_bits": report.ring_bits,
        "seconds_median": statistics.median(samples),
        "seconds_all": samples,
        "upload_bytes_per_client": report.upload_bytes_per_client,
        "download_bytes_per_client": report.download_bytes_per_client,
        "plaintext_bytes_per_client": report.plaintext_bytes_per_client,
        "max_abs_error": max(r.max_abs_error or 0.0 for r in reports),
        "error_bound": report.error_bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower peer")
    parser.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md")
    parser.add_argument(
        "--big", action="store_true", help="also the 10,000-client round (about 5 minutes)"
    )
    args = parser.parse_args()

    out: dict[str, Any] = {"machine": f"{platform.machine()}, {platform.python_version()}"}
    floor_ns = floor.floor_ns_per_element(repeats=args.repeats)
    out["floor_ns_per_element"] = floor_ns
    print(f"floor: {floor_ns:.3f} ns per element (fused AES-CTR expand + add, one core)")

    out["client_masking"] = [
        client_masking(100_000, 28, args.repeats, floor_ns),
        client_masking(1_000_000, 100, args.repeats, floor_ns),
    ]
    for row in out["client_masking"]:
        print(
            f"client masking m={row['dim']:,} k={row['degree']}: {row['ours_ms']:.1f} ms, "
            f"floor {row['floor_ms']:.1f} ms -> {row['floor_over_ours']:.2f}x of floor"
        )

    out["server_unmasking"] = server_unmasking(100, 100_000, 10, floor_ns, args.repeats)
    row = out["server_unmasking"]
    print(
        f"server unmasking 100 x 100,000, 10 dropped: {row['ours_ms']:.1f} ms for "
        f"{row['mask_expansions']} mask expansions, floor {row['floor_ms']:.1f} ms -> "
        f"{row['floor_over_ours']:.2f}x of floor"
    )

    out["round_random_stages"] = whole_round(100, 100_000, 0.1, args.repeats, None)
    out["round_drop_before_masked_input"] = whole_round(
        100, 100_000, 0.1, args.repeats, "masked-input"
    )
    semi = out["round_random_stages"]
    out["round_active"] = whole_round(100, 100_000, 0.1, args.repeats, None, active=True)
    out["round_active_same_graph"] = whole_round(
        100,
        100_000,
        0.1,
        args.repeats,
        None,
        active=True,
        graph=(semi["degree"], semi["threshold"]),
    )
    for key in ("round_active", "round_active_same_graph"):
        out[key]["vs_semi_honest"] = out[key]["seconds_median"] / semi["seconds_median"]
    for key in (
        "round_random_stages",
        "round_drop_before_masked_input",
        "round_active",
        "round_active_same_graph",
    ):
        r = out[key]
        print(
            f"round 100 x 100,000, 10% dropout ({r['drop_stage']}): {r['seconds_median']:.3f} s, "
            f"upload {r['upload_bytes_per_client']:,.0f} B/client "
            f"({r['upload_bytes_per_client'] / r['plaintext_bytes_per_client']:.3f}x float32)"
        )

    if not args.no_flower and flower_peer.available():
        flower = {r["mode"]: r for r in flower_peer.run(100, 100_000, 0.1)}
        out["flower"] = flower
        fl = flower["secagg+"]
        ours = out["round_drop_before_masked_input"]["seconds_median"]
        out["speedup_vs_flower"] = fl["round_s"] / ours
        out["speedup_vs_flower_random_stages"] = (
            fl["round_s"] / out["round_random_stages"]["seconds_median"]
        )
        print(
            f"Flower SecAgg+ round: {fl['round_s']:.2f} s (k={fl.get('num_shares')}, "
            f"t={fl.get('threshold')}), upload {fl['up_bytes_per_surviving_client']:,} B/client; "
            f"ours is {out['speedup_vs_flower']:.1f}x faster"
        )
    elif not args.no_flower:
        print("Flower peer harness not found: set SECAGG_FLOWER_PEER", file=sys.stderr)

    workers = usable_cores()
    out["all_core_floor_ns"] = performance.all_core_floor_ns(workers)
    out["server_unmasking_all_cores"] = server_unmasking(
        100, 1_000_000, 10, out["all_core_floor_ns"], 3, applier=MaskApplier(workers)
    )
    print("server unmasking on every core:", out["server_unmasking_all_cores"])
    out["shamir_and_key_agreement"] = performance.shamir_and_key_agreement(1000, 100_000, floor_ns)
    print("shamir and key agreement:", out["shamir_and_key_agreement"])
    out["bonawitz_expansion"] = performance.bonawitz_expansion()
    print("bonawitz expansion:", out["bonawitz_expansion"])
    out["scaling"] = performance.scaling(3)
    print("scaling:", out["scaling"])
    if "flower" in out:
        points = []
        for n, dropout in ((50, 0.0), (100, 0.1), (200, 0.1)):
            if n == 100:
                fl = out["flower"]["secagg+"]
            else:
                fl = {r["mode"]: r for r in flower_peer.run(n, 100_000, dropout, mode="secagg")}[
                    "secagg+"
                ]
            ours = whole_round(n, 100_000, dropout, args.repeats, None)
            # Flower's num_shares counts the client itself: its neighbours number one fewer.
            flower_degree = int(fl.get("num_shares", 0)) - 1
            same = (
                whole_round(
                    n,
                    100_000,
                    dropout,
                    args.repeats,
                    None,
                    graph=(flower_degree - flower_degree % 2, int(fl["threshold"])),
                )
                if flower_degree >= 2
                else ours
            )
            points.append(
                {
                    "clients": n,
                    "dim": 100_000,
                    "dropout": dropout,
                    "ours_s": ours["seconds_median"],
                    "degree": ours["degree"],
                    "threshold": ours["threshold"],
                    "ours_up": ours["upload_bytes_per_client"],
                    "flower_s": fl["round_s"],
                    "flower_k": fl.get("num_shares"),
                    "flower_t": fl.get("threshold"),
                    "flower_up": fl["up_bytes_per_surviving_client"],
                    "speedup": fl["round_s"] / ours["seconds_median"],
                    "ours_same_graph_s": same["seconds_median"],
                    "same_graph_degree": same["degree"],
                    "speedup_same_graph": fl["round_s"] / same["seconds_median"],
                }
            )
            print("vs Flower:", points[-1])
        out["flower_points"] = points
    out["plots"] = performance.plot(out["scaling"], out.get("flower_points", []))
    if args.big:
        out["big_cohort"] = performance.big_cohort()
        print("10,000 clients:", out["big_cohort"])

    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    if args.write:
        write_markdown(out, " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]))


def write_markdown(out: dict[str, Any], command: str) -> None:
    cm = out["client_masking"]
    su = out["server_unmasking"]
    rr, rm = out["round_random_stages"], out["round_drop_before_masked_input"]
    lines = [
        "# Benchmarks",
        "",
        "Latest run of the benchmark suite. Machines here are shared and noisy: figures are",
        "medians of repeats, and every comparison is a ratio measured side by side in one run.",
        "",
        f"Command: `{command}` (after `make test` has created `.venv`; `make bench` runs it).",
        f"Machine: {out['machine']}, 2 cores. Raw figures: `benchmarks/results.json`.",
        "",
        "## Against the hardware floor",
        "",
        f"Floor: fused AES-128-CTR expand-and-add into a cache-sized buffer, "
        f"**{out['floor_ns_per_element']:.2f} ns per element** on one core (measured in this run).",
        "",
        "| what | size | ours | floor | floor / ours |",
        "|---|---|---|---|---|",
    ]
    for row in cm:
        lines.append(
            f"| client masking (quantise, k+1 masks, pack) | m={row['dim']:,}, k={row['degree']} "
            f"| {row['ours_ms']:.1f} ms | {row['floor_ms']:.1f} ms | {row['floor_over_ours']:.2f} |"
        )
    lines.append(
        f"| server unmasking (reconstruct + remove {su['mask_expansions']} masks) "
        f"| n={su['clients']}, m={su['dim']:,}, {su['dropped']} dropped "
        f"| {su['ours_ms']:.1f} ms | {su['floor_ms']:.1f} ms | {su['floor_over_ours']:.2f} |"
    )
    lines += [
        "",
        "## One round, 100 clients x 100,000 values, 10% dropout",
        "",
        "| implementation | drops | k / t | round s (median) | upload B/client | vs float32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in (rr, rm):
        lines.append(
            f"| secagg (SecAgg+, in-process simulator) | {r['drop_stage']} | "
            f"{r['degree']} / {r['threshold']} | {r['seconds_median']:.3f} | "
            f"{r['upload_bytes_per_client']:,.0f} | "
            f"{r['upload_bytes_per_client'] / r['plaintext_bytes_per_client']:.3f}x |"
        )
    if "flower" in out:
        fl = out["flower"]["secagg+"]
        plain = out["flower"].get("plaintext-fedavg", {})
        lines.append(
            f"| Flower 1.42 SecAgg+ (its simulator) | after share-keys | "
            f"{fl.get('num_shares')} / {fl.get('threshold')} | {fl['round_s']:.2f} | "
            f"{fl['up_bytes_per_surviving_client']:,} | "
            f"{fl['up_bytes_per_surviving_client'] / fl['plaintext_vector_bytes']:.3f}x |"
        )
        if plain:
            lines.append(
                f"| Flower 1.42 plaintext FedAvg | - | - | {plain['round_s']:.2f} | "
                f"{plain['up_bytes_per_surviving_client']:,} | "
                f"{plain['up_bytes_per_surviving_client'] / plain['plaintext_vector_bytes']:.3f}x |"
            )
        lines += [
            "",
            f"**secagg's round is {out['speedup_vs_flower']:.1f}x faster than Flower's SecAgg+** "
            f"with the same drops (after share-keys), and "
            f"{out['speedup_vs_flower_random_stages']:.1f}x with drops at random stages "
            "(which Flower cannot recover from before share-keys).",
            "",
            "Notes: Flower's k is its default 2*ceil(log2 n)+1, chosen without a security "
            "analysis; ours comes from the sigma=40 / eta=20 finder (k=28, t=6 at n=100), so our "
            "round does more masking work per client. Byte counts are serialized messages "
            "without transport framing, for both.",
        ]
    ra, rs = out["round_active"], out["round_active_same_graph"]
    lines += [
        "",
        "## Active mode (malicious server), same round",
        "",
        "| mode | k / t | round s (median) | vs semi-honest | upload B/client |",
        "|---|---|---|---|---|",
        f"| semi-honest | {rr['degree']} / {rr['threshold']} | {rr['seconds_median']:.3f} | 1.00x "
        f"| {rr['upload_bytes_per_client']:,.0f} |",
        f"| active, semi-malicious parameters | {ra['degree']} / {ra['threshold']} | "
        f"{ra['seconds_median']:.3f} | {ra['vs_semi_honest']:.2f}x | "
        f"{ra['upload_bytes_per_client']:,.0f} |",
        f"| active, same graph as semi-honest | {rs['degree']} / {rs['threshold']} | "
        f"{rs['seconds_median']:.3f} | {rs['vs_semi_honest']:.2f}x | "
        f"{rs['upload_bytes_per_client']:,.0f} |",
        "",
        "Active mode adds signed keys (one Ed25519 signature per client, k verifications) and "
        "the consistency round (one signature per client, t verifications). On the same graph "
        "that is the whole difference. With the parameters the semi-malicious model requires "
        f"at n = 100 (k = {ra['degree']} instead of {rr['degree']}: a server that may lie "
        "about dropouts needs larger neighbourhoods, per Bell et al.'s bounds), every client "
        f"masks against {ra['degree'] + 1} instead of {rr['degree'] + 1} keys, and the round "
        "costs what that masking costs.",
    ]
    lines += performance.markdown(out)
    if "big_cohort" in out:
        lines += performance.big_cohort_markdown(out["big_cohort"])
    lines += [
        "",
        f"Max abs error of the secure mean: {max(rr['max_abs_error'], rm['max_abs_error']):.2e} "
        f"(quantisation bound {rr['error_bound']:.2e}).",
        "",
    ]
    path = ROOT / "BENCHMARKS.md"
    # The other benchmarks own their sections (benchmarks/sections.py): keep them.
    kept = sections.owned_sections(path.read_text()) if path.exists() else ""
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


if __name__ == "__main__":
    main()

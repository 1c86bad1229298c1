"""What active mode's survivor certificate costs a client (docs/SURVIVOR_CERTIFICATE.md).

    python benchmarks/survivor_certificate.py --write

For cohorts of 1,000 and 10,000 clients at the deployment's default rates (5% corrupt, 33%
dropout) and at 10% dropout, with the finder's own degree and threshold: the quorum Q, the
bytes of the certificate each client downloads, the time to verify Q Ed25519 signatures and
to check the survivor set's ring windows, measured here (medians of 5), beside the client's
masking work for a 100,000-value update at the AES-CTR floor ((k + 1) x m ns, DESIGN.md).
Beside it, the aggregate-signature alternative: one BLS signature (96 bytes) over the same
set plus a bitmap of the n signers, verified with ``fast_aggregate_verify`` over Q public keys,
measured with Chia's ``blspy`` when it is installed (``pip install blspy==2.0.3``; it is not a
dependency of secagg). ``--write`` replaces this benchmark's section of BENCHMARKS.md (or
appends it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sections

from secagg.hazmat.keys import Ed25519SigningKey, ed25519_verify
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.schemes.masking.graph import thin_window
from secagg.schemes.masking.parameters import Params

MARKER = "## Active mode: the survivor certificate's cost per client"
DIM = 100_000
FLOOR_NS_PER_VALUE_AND_MASK = 1.0  # fused expand-and-add, DESIGN.md section 6


def median_seconds(action: object, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(n: int, dropout: float) -> dict[str, object]:
    params = Params(dim=DIM, max_clients=n, server_model="semi-malicious", dropout_rate=dropout)
    graph = params.graph(n)
    rule = params.survivor_rule(n, graph.degree)
    rng = DeterministicRandomness(b"secagg/benchmarks/survivor-certificate/" + bytes(8))
    key = Ed25519SigningKey.generate(rng)
    payload = rng.bytes(64)
    signature = key.sign(payload)

    def verify_quorum() -> None:
        for _ in range(rule.quorum):
            ed25519_verify(key.public, payload, signature)

    survivors = frozenset(range(0, n, 1)) - frozenset(range(0, n, 10))  # 10% dropped, spread
    seed = rng.bytes(32)

    def check_windows() -> None:
        thin_window(n, seed, survivors, rule)

    verify = median_seconds(verify_quorum)
    windows = median_seconds(check_windows)
    bls = bls_verify_seconds(rule.quorum)
    masking = (graph.degree + 1) * DIM * FLOOR_NS_PER_VALUE_AND_MASK * 1e-9
    return {
        "n": n,
        "dropout": dropout,
        "k": graph.degree,
        "t": graph.threshold,
        "Q": rule.quorum,
        "window": rule.window,
        "least": rule.least_in_window,
        "bytes": rule.quorum * (4 + 64),
        "verify_s": verify,
        "windows_s": windows,
        "masking_s": masking,
        "bls_s": bls,
        "bls_bytes": 96 + (n + 7) // 8,
    }


def bls_verify_seconds(signers: int) -> float | None:
    """``fast_aggregate_verify`` of one aggregate over ``signers`` keys (None: no blspy)."""
    try:
        from blspy import PopSchemeMPL  # type: ignore[import-not-found]
    except ImportError:
        return None
    message = os.urandom(64)
    keys = [PopSchemeMPL.key_gen(os.urandom(32)) for _ in range(signers)]
    publics = [key.get_g1() for key in keys]
    aggregate = PopSchemeMPL.aggregate([PopSchemeMPL.sign(key, message) for key in keys])
    return median_seconds(lambda: PopSchemeMPL.fast_aggregate_verify(publics, message, aggregate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = [measure(n, d) for n in (1_000, 10_000) for d in (0.1, 0.33)]
    load = os.getloadavg()[0]
    lines = [
        MARKER,
        "",
        "Command: `python benchmarks/survivor_certificate.py`. A client in an active-mode round "
        "on the sparse graph verifies signatures on the survivor set from a quorum Q = "
        "floor((n + A)/2) + 1 of the cohort before it unmasks (two certified sets then share an "
        "honest signer), and checks that every window of k/2 ring slots holds at least the "
        "listed number of survivors (docs/SURVIVOR_CERTIFICATE.md). Bytes: Q signatures of 64 "
        "bytes and a 4-byte signer id, downloaded by every client (the server sends the same "
        "certificate to each). Times are medians of 5 on this machine, beside the client's "
        f"masking of a {DIM:,}-value update at the AES-CTR floor ((k + 1) x m ns). Load "
        f"average at the end of the run: {load:.1f}.",
        "",
        "| n | dropout | k | t | Q | window: least | certificate bytes | verify Q s | windows s |"
        " masking at the floor s | certificate / masking | BLS bytes | BLS verify s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (r["verify_s"] + r["windows_s"]) / r["masking_s"]  # type: ignore[operator]
        lines.append(
            f"| {r['n']:,} | {r['dropout']:.0%} | {r['k']} | {r['t']} | {r['Q']:,} | "
            f"{r['window']}: {r['least']} | {r['bytes']:,} | {r['verify_s']:.3f} | "
            f"{r['windows_s']:.4f} | {r['masking_s']:.3f} | {ratio:.2f} | {r['bls_bytes']:,} | "
            + ("not installed" if r["bls_s"] is None else f"{r['bls_s']:.4f}")
            + " |"
        )
    lines += [
        "",
        "The server's side: it forwards the same certificate to every asked client, n x Q x 68 "
        "bytes in all (about 36 MB at 1,000 clients and 3.6 GB at 10,000). Liveness: a round "
        "needs Q signers among the honest survivors, so it completes while fewer than "
        "(1 - 3A/n)/2 of the cohort drop (42.5% at 5% corrupt), and a set with a thin window "
        "is refused (under random dropout at the finder's rates, a chance below 2e-9 a round). "
        "An aggregate BLS signature would cut the certificate to 96 bytes and a bitmap and its "
        "check to milliseconds, at the price of a second identity key (BLS12-381, with proof "
        "of possession) per client and a pairing library as a dependency; not built.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        sections.write_section(MARKER, section)


if __name__ == "__main__":
    main()

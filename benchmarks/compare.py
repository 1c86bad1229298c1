"""The schemes side by side (``secagg compare``), recorded in BENCHMARKS.md.

python benchmarks/compare.py --write      # 20 clients x 100,000 values, 10% dropout,
                                          # sweeps over clients and dimension; the plots
                                          # go to docs/compare/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sections

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secagg.compare import CompareOptions, CompareReport, run_compare, write_plots  # noqa: E402

MARKER = "## Comparing schemes: masking beside CKKS and plaintext (same run)"


def markdown(report: CompareReport, command: str) -> str:
    o = report.options
    lines = [
        MARKER,
        "",
        f"Command: `{command}` (the same as `secagg compare --clients {o.clients} --dim "
        f"{o.dim} --dropout {o.dropout:g}`). Every scheme aggregates the same updates; the same "
        "clients drop out, each at a random stage of that scheme's round; one process, so "
        "client and server times are comparable. Times are per client and for the server's "
        "whole round; bytes are what one client sends and receives, against float32.",
        "",
        "| scheme | included | client s | server s | upload B/client | x float32 | "
        "download B/client | max error (bound) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        r = row.report
        error = "-" if r.max_abs_error is None else f"{r.max_abs_error:.1e} ({r.error_bound:.0e})"
        lines.append(
            f"| {row.scheme} | {len(r.included)}/{r.clients} | {r.client_seconds:.4f} | "
            f"{r.server_seconds:.4f} | {r.upload_bytes_per_client:,.0f} | "
            f"{r.upload_bytes_per_client / r.plaintext_bytes_per_client:.2f} | "
            f"{r.download_bytes_per_client:,.0f} | {error} |"
        )
    lines += [
        "",
        "| scheme | the server learns | to see one client's update | tolerates |",
        "|---|---|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.scheme} | {row.server_learns} | {row.to_see_one_update} | {row.tolerates} |"
        )
    lines += [
        "",
        "CKKS uploads about 57 bytes per parameter, as NVFlare measured (14.9x float32 here, the "
        "last ciphertext partly empty); masking sends each value at the ring's width (0.66x). "
        "CKKS's error is smaller than masking's quantisation step, but it is approximate and "
        "its key is shared by every client (docs/THREAT_MODEL.md).",
        "",
        "![comparison](docs/compare/compare.png)",
        "![over clients](docs/compare/compare_clients.png)",
        "![over dimension](docs/compare/compare_dim.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    report = run_compare(
        CompareOptions(clients=args.clients, dim=args.dim, dropout=args.dropout),
        sweep_clients=(10, 20, 50),
        sweep_dim=(1_000, 10_000, 100_000),
        progress=lambda text: print(text, file=sys.stderr),
    )
    text = markdown(report, " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]))
    print(text)
    if args.write:
        write_plots(report, ROOT / "docs" / "compare")
        sections.write_section(MARKER, text)


if __name__ == "__main__":
    main()

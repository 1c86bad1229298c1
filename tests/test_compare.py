"""`secagg compare`: the same updates and dropouts through every scheme, side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.compare import SCHEMES, CompareOptions, run_compare
from secagg.simulate import DropSchedule, root_randomness

pytest.importorskip("tenseal")


def test_every_scheme_aggregates_the_same_updates_within_its_own_bound() -> None:
    report = run_compare(CompareOptions(clients=8, dim=3000, dropout=0.25, seed=2))
    rows = {row.scheme: row for row in report.rows}
    assert tuple(rows) == SCHEMES
    for row in rows.values():
        r = row.report
        assert r.outcome == "completed", (row.scheme, r.abort_reason)
        assert r.max_abs_error is not None and r.max_abs_error <= r.error_bound
    # The same two clients drop in every scheme, each at a random stage of that scheme: a
    # client that drops after its input is in (masking's unmask, CKKS's decrypt when it holds
    # no key to decrypt with) is still included; no one else is ever left out.
    scheduled = DropSchedule.random(8, 0.25, root_randomness(2, "compare/dropout"))
    leaving = {c for ids in scheduled.at.values() for c in ids}
    assert len(leaving) == 2
    for row in rows.values():
        assert set(range(8)) - leaving <= set(row.report.included)
    assert set(rows["plaintext"].report.included) == set(range(8)) - leaving


def test_the_comparison_states_what_each_scheme_discloses_and_costs() -> None:
    report = run_compare(CompareOptions(clients=6, dim=2000, seed=1))
    by = {row.scheme: row for row in report.rows}
    assert by["plaintext"].server_learns == "everything"
    assert by["secagg+"].server_learns == "the sum"
    assert "key holder" in by["ckks"].to_see_one_update
    ratio = {s: r.to_json()["upload_vs_float32"] for s, r in by.items()}
    assert ratio["secagg"] < 1.0 < ratio["plaintext"] + 0.1 < ratio["ckks"]


def test_the_command_prints_json_and_writes_plots(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg",
            "compare",
            "--clients",
            "5",
            "--dim",
            "500",
            "--schemes",
            "plaintext,secagg+,ckks",
            "--sweep-dim",
            "100,1000",
            "--plots",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert [row["scheme"] for row in figures["rows"]] == ["plaintext", "secagg+", "ckks"]
    assert {p["dim"] for p in figures["sweeps"]["dim"]} == {100, 1000}
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert (tmp_path / "compare_dim.png").stat().st_size > 1000


def test_an_unknown_scheme_is_one_line_of_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secagg", "compare", "--schemes", "rot13"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown scheme" in done.stderr and "Traceback" not in done.stderr

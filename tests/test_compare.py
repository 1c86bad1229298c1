"""`secagg compare`: the same updates and dropouts through every scheme, side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from secagg.cli import app
from secagg.compare import (
    CENTRAL_DP_SCHEME,
    DP_SCHEME,
    SCHEMES,
    CompareOptions,
    run_compare,
    write_plots,
)
from secagg.dp.settings import DpSettings
from secagg.errors import ConfigurationError
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


# ----------------------------------------------------------------- distributed DP


def test_with_dp_settings_a_secagg_plus_dp_row_states_its_epsilon_and_the_others_none() -> None:
    pytest.importorskip("dp_accounting")
    options = CompareOptions(
        clients=10,
        dim=300,
        dropout=0.2,
        seed=4,
        schemes=("plaintext", "secagg+", "ckks"),
        dp=DpSettings(target_epsilon=4.0),
    )
    report = run_compare(options)
    rows = {row.scheme: row for row in report.rows}
    assert tuple(rows) == ("plaintext", "secagg+", "ckks", DP_SCHEME, CENTRAL_DP_SCHEME)
    for name in ("plaintext", "secagg+", "ckks"):
        assert rows[name].privacy == "none" and rows[name].to_json()["epsilon"] is None
        assert rows[name].to_json()["dp_noise_multiplier_carried"] is None
    dp = rows[DP_SCHEME]
    r = dp.report
    assert r.outcome == "completed", r.abort_reason
    # The same two clients drop as in the other rows; the sum of the rest meets the target.
    assert set(r.included) == set(rows["plaintext"].report.included)
    assert r.epsilon is not None and r.epsilon <= 4.0
    assert dp.privacy == f"epsilon {r.epsilon:.3g} (delta 1e-05)"
    assert "DP noise" in dp.server_learns
    # Its error is the noise's, against the unweighted mean of the updates clipped to L2
    # norm 1, within the bound it states (with probability 1 - 1e-9 and the wrap bound).
    assert r.max_abs_error is not None and r.max_abs_error <= r.error_bound
    assert r.max_abs_error > 100 * rows["secagg+"].report.error_bound  # noise, not rounding
    figures = report.to_json()
    assert figures["dp"]["target_epsilon"] == 4.0 and figures["dp"]["l2_clip"] == 1.0
    # The noise the revealed sum of 8 inputs carried: more than planned for the minimum
    # cohort of 7 (all but the third of 10 the graph tolerates), by sqrt(8 / 7).
    assert r.facts.min_cohort == 7
    assert dp.planned_noise_multiplier == r.facts.dp.noise_multiplier  # type: ignore[union-attr]
    assert dp.noise_multiplier == pytest.approx(dp.planned_noise_multiplier * (8 / 7) ** 0.5)
    assert figures["rows"][3]["dp_noise_multiplier_carried"] == dp.noise_multiplier


def test_the_central_dp_row_adds_gaussian_noise_to_the_exact_mean_of_the_same_clipped_updates() -> (
    None
):
    pytest.importorskip("dp_accounting")
    from secagg.dp.central import EPSILON_TOLERANCE

    options = CompareOptions(
        clients=10,
        dim=300,
        dropout=0.2,
        seed=4,
        schemes=("plaintext", "secagg+"),
        dp=DpSettings(target_epsilon=4.0, rounds=5),
    )
    rows = {row.scheme: row for row in run_compare(options).rows}
    assert tuple(rows) == ("plaintext", "secagg+", DP_SCHEME, CENTRAL_DP_SCHEME)
    distributed, central = rows[DP_SCHEME], rows[CENTRAL_DP_SCHEME]
    r = central.report
    # The same clients, the same clip; nothing dropped from the curator's round.
    assert r.outcome == "completed" and r.included == distributed.report.included
    assert r.clients == 10 and r.facts.clip == 1.0
    assert r.clipped_values == distributed.report.clipped_values
    # The whole run (5 rounds) spends the target exactly; one round, this row's epsilon, less.
    dp = r.facts.dp
    assert dp is not None and dp.mechanism == "gaussian (central)" and dp.delta == 1e-5
    assert 4.0 * (1 - EPSILON_TOLERANCE) <= dp.epsilon_target <= 4.0
    assert r.epsilon is not None and r.epsilon < dp.epsilon_target
    assert central.privacy == f"epsilon {r.epsilon:.3g} (delta 1e-05)"
    # The distributed round, calibrated for its minimum cohort, spends less than the target
    # per round and carries more noise than the curator's z.
    assert distributed.report.epsilon is not None and distributed.report.epsilon < r.epsilon
    assert central.planned_noise_multiplier == dp.noise_multiplier
    assert central.noise_multiplier is not None and distributed.noise_multiplier is not None
    assert dp.noise_multiplier < central.noise_multiplier <= dp.noise_multiplier * 1.01
    assert central.noise_multiplier < distributed.noise_multiplier
    # Its error is the noise's, against the exact mean of the clipped updates, within the
    # bound it states (probability 1 - 1e-9).
    assert r.max_abs_error is not None and 0 < r.max_abs_error <= r.error_bound
    assert r.max_abs_error > 100 * rows["secagg+"].report.error_bound
    # The curator sees every update: it costs what a plaintext round costs.
    assert central.server_learns.startswith("everything")
    assert r.upload_bytes_per_client == rows["plaintext"].report.upload_bytes_per_client
    # The noise comes from the seeded run's own stream: the same seed, the same row.
    again = {row.scheme: row for row in run_compare(options).rows}[CENTRAL_DP_SCHEME]
    assert again.report.max_abs_error == r.max_abs_error


def test_the_central_dp_row_follows_the_distributed_row_wherever_it_is_named() -> None:
    dp = DpSettings(target_epsilon=4.0)
    named = CompareOptions(schemes=(CENTRAL_DP_SCHEME, DP_SCHEME, "plaintext"), dp=dp)
    assert named.schemes == (DP_SCHEME, CENTRAL_DP_SCHEME, "plaintext")
    assert CompareOptions(schemes=("plaintext",), dp=dp).schemes == (
        "plaintext",
        DP_SCHEME,
        CENTRAL_DP_SCHEME,
    )


def test_the_dp_row_needs_dp_settings() -> None:
    with pytest.raises(ConfigurationError, match="needs distributed DP settings"):
        CompareOptions(schemes=("secagg+", DP_SCHEME))
    with pytest.raises(ConfigurationError, match="central-dp row needs distributed DP"):
        CompareOptions(schemes=("secagg+", CENTRAL_DP_SCHEME))


def test_the_command_adds_the_dp_row_to_the_table_json_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("dp_accounting")
    command = [
        sys.executable, "-m", "secagg", "compare", "--clients", "6", "--dim", "200",
        "--schemes", "plaintext,secagg+", "--dp-epsilon", "8", "--seed", "1",
    ]  # fmt: skip
    done = subprocess.run(
        [*command, "--json", "--plots", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert [row["scheme"] for row in figures["rows"]] == [
        "plaintext",
        "secagg+",
        DP_SCHEME,
        CENTRAL_DP_SCHEME,
    ]
    assert [row["epsilon"] is None for row in figures["rows"]] == [True, True, False, False]
    assert (tmp_path / "compare.png").stat().st_size > 1000
    # The table and a refusal, in this process (the same command, without the imports).
    table = CliRunner().invoke(app, command[3:])
    assert table.exit_code == 0, table.output
    assert "privacy" in table.stdout and "secagg+-dp" in table.stdout
    assert "central-dp" in table.stdout
    # Under the table, each DP row's privacy as it was got: the multiplier its sum carried
    # (six inputs, the minimum cohort five) and the epsilon the round spent.
    text = " ".join(table.stdout.split())
    dp_row, central_row = figures["rows"][2], figures["rows"][3]
    assert (
        f"note: secagg+-dp: the sum of 6 inputs carried noise multiplier "
        f"{dp_row['dp_noise_multiplier_carried']:.3g} "
        f"({dp_row['dp_noise_multiplier_planned']:.3g} planned for the minimum cohort of 5); "
        f"the round spent epsilon {dp_row['epsilon']:.3g} at delta 1e-05 (the target: 8 over "
        "1 round)"
    ) in text
    assert (
        f"note: central-dp: a trusted curator's Gaussian noise on the exact mean of the same 6 "
        f"clipped updates carried noise multiplier "
        f"{central_row['dp_noise_multiplier_carried']:.3g}"
    ) in text
    assert "the round spent epsilon 8 at delta 1e-05 (the target: 8 over 1 round)" in text
    bad = CliRunner().invoke(app, [*command[3:-2], "--dp-bits", "4"])
    assert bad.exit_code == 2 and "raise --dp-bits" in bad.output


# ----------------------------------------------------------------- what it shows


def test_the_table_never_cuts_a_scheme_s_name() -> None:
    # Twelve columns in the 150 the table gets off a terminal: the scheme's column was cut
    # to "secagg-ac…"; the other columns wrap instead.
    table = CliRunner().invoke(app, ["compare", "--clients", "6", "--dim", "20"])
    assert table.exit_code == 0, table.output
    names = [
        line.split("│")[1].strip() for line in table.stdout.splitlines() if line.startswith("│ ")
    ]
    assert [name for name in names if name] == list(SCHEMES)


def test_the_plots_show_what_each_scheme_protects_and_the_sweeps_their_fixed_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from matplotlib.table import Table
    from matplotlib.text import Text

    texts: dict[str, list[str]] = {}
    save = Figure.savefig

    def read_then_save(figure: Figure, path: Path, **options: Any) -> None:
        shown = [text.get_text() for text in figure.findobj(Text)]
        for table in figure.findobj(Table):  # its cells' texts are not among its children
            shown += [cell.get_text().get_text() for cell in table.get_celld().values()]
        texts[Path(path).name] = shown
        save(figure, path, **options)

    monkeypatch.setattr(Figure, "savefig", read_then_save)
    options = CompareOptions(
        clients=4, dim=50, dropout=0.25, schemes=("plaintext", "secagg+", "ckks")
    )
    report = run_compare(options, sweep_clients=(4, 5), sweep_dim=(20, 50))
    write_plots(report, tmp_path)
    shown = texts["compare.png"]
    assert "who must collude to see one update" in shown
    for row in report.rows:
        for cell in (row.tolerates, row.server_learns, row.to_see_one_update, row.privacy):
            assert cell in shown, (row.scheme, cell)
    assert (
        "Over the number of clients, at 50 values, dropout 0.25 (random updates)"
        in (texts["compare_clients.png"])
    )
    assert (
        "Over the dimension, at 4 clients, dropout 0.25 (random updates)"
        in (texts["compare_dim.png"])
    )

"""`secagg simulate`: the options the issue names, a JSON report, exit code 2 on bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from secagg.cli import app

runner = CliRunner()


def _json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_json_report_has_every_promised_field() -> None:
    report = _json(["--clients", "30", "--dim", "100", "--dropout", "0.2", "--seed", "1"])
    for key in (
        "protocol",
        "clients",
        "dim",
        "included",
        "dropped",
        "threshold",
        "degree",
        "ring_bits",
        "clipped_values",
        "seconds",
        "stage_seconds",
        "upload_bytes_per_client",
        "download_bytes_per_client",
        "plaintext_bytes_per_client",
        "max_abs_error",
    ):
        assert key in report
    assert report["protocol"] == "secagg+"
    assert set(report["dropped"]) == {  # type: ignore[arg-type]
        "commit",
        "reveal",
        "advertise",
        "share",
        "masked-input",
        "unmask",
    }
    assert sum(len(v) for v in report["dropped"].values()) == 6  # type: ignore[union-attr]
    assert report["max_abs_error"] <= report["error_bound"]  # type: ignore[operator]


def test_inputs_weights_and_saved_aggregate(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).uniform(-1, 1, (8, 16)).astype(np.float32)
    weights = np.arange(1, 9, dtype=np.float64)
    np.save(tmp_path / "x.npy", rows)
    np.save(tmp_path / "w.npy", weights)
    out = tmp_path / "mean.npy"
    report = _json(
        [
            "--inputs",
            str(tmp_path / "x.npy"),
            "--weights",
            str(tmp_path / "w.npy"),
            "--protocol",
            "secagg",
            "--drop",
            "share=2",
            "--drop",
            "unmask=5",
            "--save-aggregate",
            str(out),
            "--seed",
            "4",
        ]
    )
    included = report["included"]
    assert included == [0, 1, 3, 4, 5, 6, 7]
    mean = np.load(out)
    assert mean.dtype == np.float32 and mean.shape == (16,)
    w = weights[included]
    exact = w @ rows[included].astype(np.float64) / w.sum()
    assert np.max(np.abs(mean - exact)) <= float(report["error_bound"]) + 1e-6  # type: ignore[arg-type]


def test_table_summary_without_json() -> None:
    result = runner.invoke(app, ["simulate", "--clients", "10", "--dim", "10", "--seed", "1"])
    assert result.exit_code == 0
    assert "secagg+ round: completed" in result.stdout
    assert "upload per client" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--clients", "2"],
        ["--dim", "0"],
        ["--dropout", "1.5"],
        ["--drop", "nowhere=1"],
        ["--drop", "share=99", "--clients", "10"],
        ["--value-bits", "40"],
        ["--threshold", "1", "--clients", "10"],
        ["--protocol", "paxos"],
        ["--inputs", "/nonexistent.npy"],
    ],
)
def test_bad_arguments_exit_with_code_2_and_one_line(args: list[str]) -> None:
    result = runner.invoke(
        app, ["simulate", *args, "--dim", "5"] if "--dim" not in args else ["simulate", *args]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_aborted_round_exits_with_code_1(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--clients",
            "6",
            "--dim",
            "4",
            "--protocol",
            "secagg",
            "--threshold",
            "4",
            "--drop",
            "masked-input=0,1,2",
            "--json",
        ],
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["outcome"] == "aborted"


def test_command_line_entry_point_runs_as_a_real_process() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg",
            "simulate",
            "--clients",
            "5",
            "--dim",
            "3",
            "--json",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "completed"
    bad = subprocess.run(
        [sys.executable, "-m", "secagg", "simulate", "--clients", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "error" in bad.stderr


def test_the_semi_malicious_server_model_runs_the_consistency_round() -> None:
    report = _json(
        [
            "--clients",
            "12",
            "--dim",
            "50",
            "--server-model",
            "semi-malicious",
            "--min-cohort",
            "6",
            "--drop",
            "consistency=3",
            "--seed",
            "2",
        ]
    )
    assert report["outcome"] == "completed"
    assert "consistency" in report["stage_seconds"]  # type: ignore[operator]
    assert report["dropped"]["consistency"] == [3]  # type: ignore[index]
    assert 3 in report["included"]  # type: ignore[operator]


def test_consistency_drops_are_refused_in_semi_honest_mode() -> None:
    result = runner.invoke(
        app, ["simulate", "--clients", "8", "--dim", "5", "--drop", "consistency=1"]
    )
    assert result.exit_code == 2


def test_the_old_threat_model_spelling_is_refused_with_the_new_one_named() -> None:
    result = runner.invoke(app, ["simulate", "--threat-model", "malicious"])
    assert result.exit_code == 2
    assert "--server-model semi-malicious" in result.output


def test_under_heavy_clipping_the_error_is_against_the_clipped_mean_and_clipping_is_counted(
    tmp_path: Path,
) -> None:
    rows = np.random.default_rng(1).uniform(-0.5, 0.5, (6, 8)).astype(np.float32)
    rows[0, :3] = 1e30  # far outside the clip range: the unclipped mean is ~1.7e29
    rows[4, 5] = -7.0
    np.save(tmp_path / "x.npy", rows)
    report = _json(["--inputs", str(tmp_path / "x.npy"), "--seed", "2"])
    assert report["clipped_values"] == 4
    # Secure aggregation promises the mean of the clipped inputs, within the bound.
    assert report["max_abs_error"] <= report["error_bound"]  # type: ignore[operator]


def test_save_aggregate_into_a_missing_directory_is_refused_before_the_round_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secagg.simulate

    ran: list[int] = []
    real = secagg.simulate.simulate_round
    monkeypatch.setattr(
        secagg.simulate, "simulate_round", lambda *a, **k: ran.append(1) or real(*a, **k)
    )
    target = tmp_path / "missing" / "mean.npy"
    result = runner.invoke(
        app, ["simulate", "--clients", "5", "--dim", "4", "--save-aggregate", str(target)]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output and ran == []
    ok = runner.invoke(
        app, ["simulate", "--clients", "5", "--dim", "4", "--save-aggregate", str(tmp_path / "m")]
    )
    assert ok.exit_code == 0 and ran == [1]
    assert np.load(tmp_path / "m").shape == (4,)


def test_inputs_holding_nan_are_refused_in_one_line(tmp_path: Path) -> None:
    rows = np.zeros((4, 3), dtype=np.float32)
    rows[2, 1] = np.nan
    np.save(tmp_path / "x.npy", rows)
    result = runner.invoke(app, ["simulate", "--inputs", str(tmp_path / "x.npy")])
    assert result.exit_code == 2
    assert "row 2" in result.output


def test_simulate_runs_a_ckks_round_through_its_own_two_stages() -> None:
    pytest.importorskip("tenseal")
    report = _json(["--scheme", "ckks", "--clients", "5", "--dim", "50", "--seed", "1"])
    assert report["scheme"] == "ckks"
    assert set(report["stage_seconds"]) == {"upload", "decrypt"}  # type: ignore[arg-type]
    assert report["max_abs_error"] <= report["error_bound"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheme", "plaintext"], "no plaintext path"),
        (["--scheme", "ckks", "--server-model", "semi-malicious"], "--server-model applies"),
    ],
    ids=["plaintext", "server-model-under-ckks"],
)
def test_certs_refuses_a_scheme_the_service_cannot_run_before_writing_anything(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = runner.invoke(app, ["certs", str(tmp_path / "d"), *flags])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------- distributed DP


def _dp_json(args: list[str]) -> dict[str, Any]:
    pytest.importorskip("dp_accounting")
    return _json(args)


def test_simulate_with_dp_reports_the_epsilon_of_the_sum_revealed_down_to_the_minimum_cohort() -> (
    None
):
    common = ["--clients", "30", "--dim", "100", "--dp-epsilon", "4", "--seed", "3"]
    full = _dp_json(common)
    # Without --min-cohort the guarantee holds down to what the graph is built to survive:
    # all but a third of the clients.
    assert full["dp_min_cohort"] == 30 - 9
    assert full["epsilon"] is not None and full["epsilon"] < 4.0
    assert full["dp_epsilon_run"] == pytest.approx(4.0, rel=1e-5)
    assert full["error_within_bound"] is True
    assert full["max_abs_error"] <= full["error_bound"]
    # Random inputs in (-1, 1)^100 have L2 norms near 5.8: every client is clipped to 1.
    assert full["clipped_values"] == 30 and full["clip_rate"] == 1.0
    # Nine clients drop: the sum of 21 inputs still meets the target, with less to spare.
    dropped = _dp_json([*common, "--drop", "masked-input=0,1,2,3,4,5,6,7,8"])
    assert len(dropped["included"]) == 21
    assert full["epsilon"] < dropped["epsilon"] <= 4.0
    # One more and the round aborts rather than reveal a sum the guarantee does not cover.
    result = runner.invoke(
        app, ["simulate", *common, "--drop", "masked-input=0,1,2,3,4,5,6,7,8,9", "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["outcome"] == "aborted"


def test_simulate_prints_the_dp_guarantee_the_noise_the_clipping_and_the_wrap_bound() -> None:
    pytest.importorskip("dp_accounting")
    result = runner.invoke(
        app,
        ["simulate", "--clients", "12", "--dim", "40", "--seed", "1",
         "--dp-noise-multiplier", "1.5", "--dp-mechanism", "discrete-gaussian", "--dp-clip", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # the table may wrap long cells
    assert "with distributed DP (discrete-gaussian)" in out
    for row in ("epsilon", "noise multiplier", "clipped clients", "wrap bound"):
        assert f"│ {row} " in out, row
    assert re.search(r"noise multiplier\s+│ 1\.5 \(", out)  # the multiplier asked for
    assert "for this sum of 12 inputs" in out


def test_when_most_clients_are_clipped_the_dp_report_suggests_a_clip_near_the_median_norm() -> None:
    pytest.importorskip("dp_accounting")
    common = ["simulate", "--clients", "15", "--dim", "300", "--dp-epsilon", "8", "--seed", "2"]
    # Inputs uniform in (-1, 1)^300 have norms near sqrt(300 / 3) = 10: the default clip of 1
    # shrinks every update tenfold.
    figures = _dp_json(common[1:])
    assert figures["clip_rate"] == 1.0
    hint = figures["dp_clip_hint"]
    assert hint == pytest.approx(10.0, rel=0.1)
    assert hint == float(f"{hint:.2g}")  # two figures: a hint, not any one client's norm
    table = runner.invoke(app, common)
    assert table.exit_code == 0, table.output
    out = " ".join(table.stdout.replace("│", " ").split())  # the cell wraps over table lines
    assert (
        "clip hint most updates were longer than the L2 clip 1, so the mean is shrunk toward 0; "
        f"their median norm is about {hint:g}: try --dp-clip {hint:g}"
    ) in out
    # At that clip about half are clipped: no hint.
    figures = _dp_json([*common[1:], "--dp-clip", f"{hint:g}"])
    assert figures["clip_rate"] <= 0.5 and figures["dp_clip_hint"] is None
    table = runner.invoke(app, [*common, "--dp-clip", f"{hint:g}"])
    assert "clip hint" not in table.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp-epsilon", "4", "--dp-bits", "6"], "raise --dp-bits"),
        (["--dp-epsilon", "-1"], "--dp-epsilon must be finite and positive"),
        (["--dp-epsilon", "4", "--dp-noise-multiplier", "1"], "not both"),
        (["--dp-clip", "2"], "add --dp-epsilon or --dp-noise-multiplier"),
        (["--dp-epsilon", "4", "--scheme", "plaintext"], "drop --scheme plaintext"),
        (["--dp-epsilon", "4", "--min-cohort", "40"], "--min-cohort must be in [1, 20]"),
        (["--dp-epsilon", "4", "--dp-sampling-rate", "0"], "--dp-sampling-rate must be in"),
    ],
    ids=["bits", "epsilon", "both", "clip-alone", "scheme", "cohort", "sampling"],
)
def test_infeasible_dp_settings_are_one_line_naming_the_option(
    flags: list[str], message: str
) -> None:
    pytest.importorskip("dp_accounting")
    result = runner.invoke(app, ["simulate", "--clients", "20", "--dim", "50", *flags])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_dp_refuses_weights_its_mean_is_unweighted(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.arange(1, 11, dtype=np.float64))
    result = runner.invoke(
        app,
        ["simulate", "--clients", "10", "--dim", "5", "--weights", str(tmp_path / "w.npy"),
         "--dp-epsilon", "4"],
    )  # fmt: skip
    assert result.exit_code == 2 and "drop --weights" in result.output


def test_beyond_its_bound_a_dp_mean_is_reported_not_a_bug_while_quantisation_is_a_bug() -> None:
    pytest.importorskip("dp_accounting")
    from secagg.cli.simulate_report import error_verdict
    from secagg.dp.calibrate import DpConfig
    from secagg.schemes.masking.parameters import Params
    from secagg.simulate import random_inputs, simulate_round

    dp = DpConfig(
        dim=50, l2_clip=1.0, bits=20, min_clients=8, max_clients=10, delta=1e-5,
        target_epsilon=4.0,
    )  # fmt: skip
    params = Params(dim=50, max_clients=10, min_cohort=8, dp=dp)
    report = simulate_round(params, 10, random_inputs(50, 1), seed=1, baseline=False).report
    assert report.max_abs_error is not None and params.dp_plan is not None
    assert error_verdict(report, params.dp_plan) == (None, False)
    # The same round, had a coordinate wrapped: the error is far beyond the bound.
    wrapped = dataclasses.replace(report, max_abs_error=100 * report.error_bound)
    message, bug = error_verdict(wrapped, params.dp_plan)
    assert not bug and message is not None
    assert "high-probability bound" in message and "raise --dp-bits" in message
    message, bug = error_verdict(wrapped, None)
    assert bug and message is not None and "this is a bug" in message


def test_flower_nodes_are_made_on_each_node_and_listed_from_their_public_keys(
    tmp_path: Path,
) -> None:
    from secagg.flower.nodes import FlowerNodes, NodeIdentity

    runner = CliRunner()
    handed_out = []
    for node_id in ["7", str(2**64 - 1)]:  # on each SuperNode
        made = runner.invoke(
            app, ["flower-node-key", node_id, "--out", str(tmp_path / f"{node_id}.key")]
        )
        assert made.exit_code == 0, made.output
        handed_out.append(made.output.strip().splitlines()[-1])
    listed = runner.invoke(app, ["flower-nodes", "--out", str(tmp_path / "n"), *handed_out])
    assert listed.exit_code == 0, listed.output
    nodes = FlowerNodes.load(tmp_path / "n" / "nodes.toml")
    assert nodes.node_ids == {7, 2**64 - 1}
    for node_id in nodes.node_ids:
        identity = NodeIdentity.load(tmp_path / f"{node_id}.key")
        assert nodes.identities[node_id] == identity.signing_key.public
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["nodes.toml"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["7=" + "ab" * 32, "8"], "give every node its public key (ID=PUBLIC_KEY), or none"),
        (["7=zz"], "node 7's public key is not hex"),
        (["seven"], "'seven' is not a node id"),
        (["7=" + "ab" * 31], "an identity key is 32 bytes"),
    ],
)
def test_flower_nodes_refuses_a_bad_entry_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = CliRunner().invoke(app, ["flower-nodes", "--out", str(tmp_path / "n"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]
    assert not (tmp_path / "n").exists()

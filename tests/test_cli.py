"""`secagg simulate`: the options the issue names, a JSON report, exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    import secagg.cli

    ran: list[int] = []
    real = secagg.cli.simulate_round
    monkeypatch.setattr(
        secagg.cli, "simulate_round", lambda *a, **k: ran.append(1) or real(*a, **k)
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

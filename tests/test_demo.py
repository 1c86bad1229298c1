"""`secagg demo`, the README's main job: a real run, small, with its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")


@pytest.mark.timeout(300)
def test_demo_trains_with_secure_aggregation_as_well_as_plaintext_fedavg(tmp_path: Path) -> None:
    report_path = tmp_path / "demo.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg",
            "demo",
            "--clients",
            "5",
            "--rounds",
            "3",
            "--drop-rate",
            "0.2",
            "--seed",
            "3",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final accuracy" in done.stdout
    report = json.loads(report_path.read_text())
    secure, plain = report["secure"], report["plaintext"]
    assert len(secure["rounds"]) == len(plain["rounds"]) == 3
    for s, p in zip(secure["rounds"], plain["rounds"], strict=True):
        for key in ("accuracy", "included", "dropped", "seconds", "upload_bytes_per_client"):
            assert key in s and key in p
        assert s["included"] == p["included"]  # the baseline averages the same clients
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01
    assert report["kills"], "seed 3 kills some client processes"
    for kill in report["kills"]:
        drop = secure["rounds"][kill["round_id"] - 1]["dropped"][str(kill["client"])]
        assert drop == {"stage": kill["stage"], "reason": "disconnected"}
    for r in secure["rounds"]:
        for drop in r["dropped"].values():
            # Killed, or left without enough live neighbours by those who were.
            assert drop["reason"] in ("disconnected", "too-few-neighbours")


@pytest.mark.timeout(300)
def test_demo_trains_over_the_service_with_ckks_as_well_as_plaintext_fedavg(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tenseal")
    report_path = tmp_path / "demo-ckks.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secagg",
            "demo",
            "--scheme",
            "ckks",
            "--clients",
            "4",
            "--rounds",
            "2",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CKKS N=8192" in done.stdout  # the report says which scheme ran
    report = json.loads(report_path.read_text())
    config = report["config"]
    assert config["scheme"] == "ckks" and config["poly_modulus_degree"] == 8192
    secure, plain = report["secure"], report["plaintext"]
    assert [r["outcome"] for r in secure["rounds"]] == ["completed", "completed"]
    for s, p in zip(secure["rounds"], plain["rounds"], strict=True):
        assert s["included"] == p["included"] == [0, 1, 2, 3]
        assert set(s["stage_seconds"]) == {"upload", "decrypt"}
        # Ciphertexts: about 57 bytes per parameter against float32's 4.
        assert s["upload_bytes_per_client"] > 10 * p["upload_bytes_per_client"]
    # CKKS errs by about 1e-7 per coordinate: the same model, the same accuracy.
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01


def test_demo_refuses_the_plaintext_scheme_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secagg", "demo", "--scheme", "plaintext", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "no plaintext path" in done.stderr

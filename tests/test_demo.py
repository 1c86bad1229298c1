"""`secagg demo`, the README's main job: a real run, small, with its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")


def run_demo(tmp_path: Path, *options: str) -> tuple[str, dict[str, Any]]:
    """``secagg demo OPTIONS --json FILE`` to the end: its output and its JSON report."""
    report_path = tmp_path / "demo.json"
    done = subprocess.run(
        [sys.executable, "-m", "secagg", "demo", *options, "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(report_path.read_text())


@pytest.mark.timeout(300)
def test_demo_trains_with_secure_aggregation_as_well_as_plaintext_fedavg(tmp_path: Path) -> None:
    out, report = run_demo(
        tmp_path, "--clients", "5", "--rounds", "3", "--drop-rate", "0.2", "--seed", "3"
    )
    assert "final accuracy" in out
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
    # The coordinator runs the fixed cohort's masking rounds as sessions that span them: the
    # report says which kind each round was (a killed client leaves its session, so a round
    # may set the cohort up again).
    assert report["config"]["transport"] == "deployment"
    assert report["config"]["rounds_kind"] == "session"
    assert secure["rounds"][0]["kind"] == "set-up+round"
    assert {r["kind"] for r in secure["rounds"]} <= {"set-up+round", "session"}
    assert "rounds: sessions over the fixed cohort (over the service)" in " ".join(out.split())


@pytest.mark.timeout(300)
def test_demo_in_process_trains_the_fixed_cohort_as_one_session(tmp_path: Path) -> None:
    out, report = run_demo(
        tmp_path, "--in-process", "--clients", "6", "--rounds", "4", "--seed", "2"
    )
    config, secure, plain = report["config"], report["secure"], report["plaintext"]
    assert config["transport"] == "in-process" and config["rounds_kind"] == "session"
    assert [r["kind"] for r in secure["rounds"]] == [
        "set-up+round",
        "session",
        "session",
        "session",
    ]
    setup = secure["rounds"][0]["setup"]
    assert setup["outcome"] == "completed" and setup["members"] == 6
    assert setup["messages_up_per_client"] == 4
    assert all(r["setup"] is None for r in secure["rounds"][1:])
    for s, p in zip(secure["rounds"], plain["rounds"], strict=True):
        assert s["included"] == p["included"] == list(range(6))
    assert set(secure["rounds"][0]["stage_seconds"]) == {
        *("commit", "reveal", "advertise", "share", "masked-input", "unmask")
    }
    for s in secure["rounds"][1:]:
        assert set(s["stage_seconds"]) == {"masked-input", "unmask"}
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01
    text = " ".join(out.split())
    assert "rounds: sessions over the fixed cohort (in process), set up once" in text
    assert "in this process (simulator)" in text


@pytest.mark.timeout(300)
def test_demo_in_process_with_drops_and_dp(tmp_path: Path) -> None:
    pytest.importorskip("dp_accounting")
    _, report = run_demo(
        tmp_path,
        "--in-process", "--clients", "8", "--rounds", "3", "--drop-rate", "0.2",
        "--dp-epsilon", "50", "--seed", "4",
    )  # fmt: skip
    secure, plain = report["secure"]["rounds"], report["plaintext"]["rounds"]
    assert report["config"]["dp"] is True
    dropped = [c for r in secure for c in r["dropped"]]
    assert dropped, "seed 4 silences some clients"
    spent = 0.0
    for s, p in zip(secure, plain, strict=True):
        assert s["included"] == p["included"]
        if s["outcome"] == "completed":
            assert s["epsilon"] > 0 and s["epsilon_spent"] >= spent
            spent = s["epsilon_spent"]
    # The central-DP baseline: the same clients each round, a noise multiplier from the same
    # accountant spending the whole target over the rounds it released (the distributed run,
    # calibrated for its minimum cohort, spends less whenever a sum held more inputs).
    central = report["central"]
    minimum = report["config"]["dp_min_cohort"]
    assert [c["included"] for c in central["rounds"]] == [s["included"] for s in secure]
    assert (
        central["noise_multiplier"]
        < central["noise_multiplier_carried"]
        <= (central["noise_multiplier"] * 1.01)
    )
    released = [c for c in central["rounds"] if c["outcome"] == "completed"]
    assert len(released) == len([s for s in secure if s["outcome"] == "completed"])
    if len(released) == 3:
        assert released[-1]["epsilon_spent"] == pytest.approx(50.0, rel=1e-5)
        assert spent <= released[-1]["epsilon_spent"]
    # The multiplier a revealed sum carried grows as the square root of the inputs it held:
    # over the minimum cohort's, the same planned multiplier in every round.
    completed = [s for s in secure if s["outcome"] == "completed"]
    planned = [s["noise_multiplier"] / (len(s["included"]) / minimum) ** 0.5 for s in completed]
    assert completed and planned == pytest.approx([planned[0]] * len(planned))


@pytest.mark.timeout(300)
def test_demo_trains_over_the_service_with_ckks_as_well_as_plaintext_fedavg(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tenseal")
    out, report = run_demo(tmp_path, "--scheme", "ckks", "--clients", "4", "--rounds", "2")
    assert "CKKS N=8192" in out  # the report says which scheme ran
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


@pytest.mark.timeout(300)
def test_demo_trains_with_distributed_dp_and_reports_epsilon_per_round_and_spent(
    tmp_path: Path,
) -> None:
    pytest.importorskip("dp_accounting")
    stdout, report = run_demo(
        tmp_path, "--clients", "5", "--rounds", "2", "--dp-epsilon", "50", "--seed", "1"
    )
    out = " ".join(stdout.split())
    assert "distributed DP (skellam)" in out
    assert "note: DP with only 5 clients per round costs a lot of accuracy" in out
    config = report["config"]
    assert config["dp"] is True and config["dp_rounds"] == 2
    assert config["dp_epsilon_run"] == pytest.approx(50.0, rel=1e-5)
    assert config["dp_l2_clip_source"] == "the median norm of the clients' first-round updates"
    # All but a third of the 5 clients: the guarantee holds for sums of 4 and more.
    assert config["min_cohort"] == config["dp_min_cohort"] == 4
    secure, plain = report["secure"]["rounds"], report["plaintext"]["rounds"]
    assert [r["outcome"] for r in secure] == ["completed", "completed"]
    first, second = secure
    # Five inputs carry more noise than the minimum cohort's four: each round's sum is
    # better protected than the plan's per-round figure (at four), and the run as a whole
    # spends less than its target (RDP composition: two rounds cost less than twice one).
    assert 0 < first["epsilon"] == second["epsilon"] < config["dp_epsilon_target"]
    assert first["epsilon_spent"] == first["epsilon"]
    assert first["epsilon"] < second["epsilon_spent"] < 50.0
    assert f"{second['epsilon_spent']:.3g}" in out
    for s, p in zip(secure, plain, strict=True):
        assert s["included"] == p["included"]
        assert p["epsilon"] is None  # the baseline is not private
    # Five inputs carried sqrt(5/4) times the noise planned for the minimum cohort of four.
    for s in secure:
        assert s["noise_multiplier"] == pytest.approx(
            first["noise_multiplier"] * (len(s["included"]) / len(first["included"])) ** 0.5
        )
    assert (
        f"distributed DP: the sums revealed carried noise multiplier "
        f"{first['noise_multiplier']:.3g}" in out
    )
    # Beside it, the central-DP baseline over the same clients: the whole target spent.
    central = report["central"]
    assert [c["included"] for c in central["rounds"]] == [s["included"] for s in secure]
    assert central["rounds"][-1]["epsilon_spent"] == pytest.approx(50.0, rel=1e-5)
    assert central["epsilon_target"] == pytest.approx(50.0, rel=1e-5)
    assert first["noise_multiplier"] > central["noise_multiplier_carried"]
    assert (
        f"central DP baseline (a trusted curator's Gaussian noise on the exact mean of the same "
        f"clients' clipped updates, noise multiplier {central['noise_multiplier']:.3g} for "
        f"epsilon 50 by the same accountant): final accuracy "
        f"{100 * central['final_accuracy']:.1f}%, distributed DP "
        f"{100 * report['secure']['final_accuracy']:.1f}%; epsilon spent: central 50, "
        f"distributed {second['epsilon_spent']:.3g}"
    ) in out


@pytest.mark.timeout(300)
def test_demo_trains_with_pytorch_clients_over_the_same_service(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    _, report = run_demo(tmp_path, "--framework", "torch", "--clients", "3", "--rounds", "1")
    assert report["config"]["framework"] == "torch"
    secure, plain = report["secure"], report["plaintext"]
    assert [r["outcome"] for r in secure["rounds"]] == ["completed"]
    # The torch clients train the same model as the numpy baseline would, so the secure mean
    # matches the plaintext mean of the same updates to within quantisation.
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.02

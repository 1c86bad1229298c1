"""The service commands: `secagg certs` writes a deployment; `secagg rounds` lists and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from secagg.cli import app
from secagg.dp.calibrate import DpConfig, calibrate
from secagg.ledger import Ledger, account_round
from secagg.service.config import DeploymentConfig

runner = CliRunner()


def test_certs_writes_a_deployment_both_ends_can_load(tmp_path: Path) -> None:
    result = runner.invoke(app, ["certs", str(tmp_path / "d"), "--clients", "4", "--dim", "32"])
    assert result.exit_code == 0, result.output
    config = DeploymentConfig.load(tmp_path / "d" / "deployment.toml")
    assert config.params.dim == 32 and config.tls is not None and config.allow_list is not None
    assert sorted(p.name for p in (tmp_path / "d" / "clients").iterdir()) == [
        f"client-{i}.key" for i in range(4)
    ]
    again = runner.invoke(app, ["certs", str(tmp_path / "d"), "--clients", "4"])
    assert again.exit_code == 2  # never overwrites keys


def test_rounds_lists_the_ledger_and_exports_an_aggregate(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.start_round(
            round_id=1,
            session_id=b"s" * 32,
            task_hash=b"t" * 32,
            protocol="secagg+",
            cohort=[0, 1, 2],
            degree=2,
            threshold=2,
            dim=3,
        )
        ledger.complete_round(
            1,
            included=[0, 1, 2],
            aggregate=np.array([0.5, -0.25, 1.0]),
            total_weight=3,
            upload_bytes_per_client=100.0,
            download_bytes_per_client=50.0,
        )
        ledger.start_round(
            round_id=2,
            session_id=b"u" * 32,
            task_hash=b"t" * 32,
            protocol="secagg+",
            cohort=[0, 1, 2],
            degree=2,
            threshold=2,
            dim=3,
        )
        ledger.abort_round(2, "round aborted at share: too few")
    listing = runner.invoke(app, ["rounds", "--ledger", str(path)])
    assert listing.exit_code == 0, listing.output
    assert "completed" in listing.output and "aborted" in listing.output
    out = tmp_path / "agg.npy"
    export = runner.invoke(
        app, ["rounds", "--ledger", str(path), "--export", "1", "--out", str(out)]
    )
    assert export.exit_code == 0, export.output
    np.testing.assert_array_equal(np.load(out), np.array([0.5, -0.25, 1.0], dtype=np.float32))
    refused = runner.invoke(
        app, ["rounds", "--ledger", str(path), "--export", "2", "--out", str(out)]
    )
    assert refused.exit_code == 2  # an aborted round has no aggregate
    missing = runner.invoke(app, ["rounds", "--ledger", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2


def test_rounds_shows_each_dp_rounds_epsilon_and_the_epsilon_spent(tmp_path: Path) -> None:
    pytest.importorskip("dp_accounting")
    plan = calibrate(
        DpConfig(
            dim=3, l2_clip=1.0, bits=16, min_clients=3, max_clients=4, delta=1e-5,
            target_epsilon=8.0, rounds=2,
        )
    )  # fmt: skip
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        for round_id, included in ((1, [0, 1, 2, 3]), (2, [0, 1, 2])):
            ledger.start_round(
                round_id=round_id, session_id=bytes(32), task_hash=bytes(32),
                protocol="secagg+", cohort=[0, 1, 2, 3], degree=2, threshold=2, dim=3,
            )  # fmt: skip
            privacy = account_round(ledger, plan, len(included))
            ledger.complete_round(
                round_id, included=included, aggregate=np.zeros(3), total_weight=len(included),
                upload_bytes_per_client=1.0, download_bytes_per_client=1.0, privacy=privacy,
            )  # fmt: skip
        records = ledger.rounds()
    listing = runner.invoke(app, ["rounds", "--ledger", str(path)])
    assert listing.exit_code == 0, listing.output
    assert "epsilon" in listing.output and "spent (of target)" in listing.output
    for record in records:
        assert record.privacy is not None
        assert f"{record.privacy.epsilon:.3g}" in listing.output
        assert f"{record.privacy.epsilon_spent:.3g} (8 over 2)" in listing.output


def test_serve_reports_a_dp_rounds_epsilon_and_the_epsilon_spent_in_its_line_and_json() -> None:
    from secagg.cli.report import round_json, round_line
    from secagg.dp.round_privacy import RoundPrivacy
    from secagg.protocol.runner import RoundOutcome
    from secagg.service.rounds import RoundSummary

    privacy = RoundPrivacy(bytes(32), "skellam", 1e-5, 0.84, 2.1, 8.0, 10)
    summary = RoundSummary(
        round_id=3, outcome=RoundOutcome.COMPLETED, cohort=(0, 1, 2), included=(0, 1, 2),
        dropped={}, stage_seconds={}, seconds=0.5, upload_bytes_per_client=1.0,
        download_bytes_per_client=1.0, privacy=privacy,
    )  # fmt: skip
    assert str(round_line(summary)).endswith(
        "; epsilon 0.84 for this sum, 2.1 spent of 8 over 10 rounds (delta 1e-05)"
    )
    figures = round_json(summary)
    assert (figures["epsilon"], figures["epsilon_spent"], figures["epsilon_target"]) == (
        0.84, 2.1, 8.0,
    )  # fmt: skip
    plain = round_json(RoundSummary(**{**summary.__dict__, "privacy": None}))
    assert plain["epsilon"] is None and plain["epsilon_spent"] is None

"""Distributed DP over the real service: `secagg certs --dp-epsilon` makes the deployment,
`secagg serve` and `secagg join` processes read it, every client adds its noise before
masking, and the coordinator reports and records each round's epsilon and the epsilon
spent; a client whose deployment asks more noise than the coordinator's refuses the round."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("dp_accounting")

from secagg.cli import app
from secagg.dp.calibrate import achieved_epsilon, epsilon_spent
from secagg.ledger import Ledger
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.service.config import DeploymentConfig
from secagg.service.run import make_coordinator, start_client_process
from secagg.service.tasks import random_update
from tests.ports import free_port

pytestmark = pytest.mark.timeout(180)

CLIENTS = 4
DIM = 48


def _certs(root: Path, *flags: str) -> Path:
    result = CliRunner().invoke(
        app,
        ["certs", str(root), "--clients", str(CLIENTS), "--min-clients", str(CLIENTS),
         "--dim", str(DIM), "--stage-timeout", "10", *flags],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "deployment.toml"


def _join(config: Path, client: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_client_process(
        config,
        config.parent / "clients" / f"client-{client}.key",
        f"127.0.0.1:{port}",
        log,
        task=None,  # the deployment's own task
        task_seed=None,
        rounds=2,
        max_attempts=40,
    )


def test_serve_and_join_run_dp_rounds_reporting_each_epsilon_and_the_epsilon_spent(
    tmp_path: Path,
) -> None:
    config_path = _certs(tmp_path / "d", "--dp-epsilon", "8", "--dp-rounds", "2")
    config = DeploymentConfig.load(config_path)
    plan = config.dp_plan
    assert plan is not None
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "secagg", "serve", "--config", str(config_path),
         "--port", str(port), "--rounds", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    clients = [_join(config_path, c, port, tmp_path / f"client-{c}.log") for c in range(CLIENTS)]
    out, err = serve.communicate(timeout=150)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("client-*.log")))
    for client in clients:
        assert client.wait(timeout=30) == 0, logs
    assert serve.returncode == 0, err + logs
    rounds = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in rounds] == ["completed", "completed"]
    # Each round: the epsilon of the sum it revealed, for the inputs it held, and the
    # epsilon spent over the rounds so far; the whole run within the target (two rounds,
    # each at least the minimum cohort).
    counts = [r["included"] for r in rounds]
    for i, r in enumerate(rounds):
        assert r["epsilon"] == pytest.approx(achieved_epsilon(plan, counts[i]))
        assert r["epsilon_spent"] == pytest.approx(epsilon_spent(plan, counts[: i + 1]))
        assert r["epsilon_target"] == pytest.approx(8.0, rel=1e-5) and r["target_rounds"] == 2
    assert rounds[0]["epsilon_spent"] < rounds[1]["epsilon_spent"] <= 8.0
    # What was revealed is the noisy unweighted mean of the clipped updates: within its bound.
    scheme = MaskingScheme(config.params) if isinstance(config.params, Params) else None
    assert scheme is not None
    with Ledger.open_readonly(config.ledger) as ledger:
        records = ledger.rounds()
        for step, record in enumerate(records):
            assert record.privacy is not None
            assert record.privacy.epsilon_spent == rounds[step]["epsilon_spent"]
            exact = np.mean(
                [scheme.reference(random_update(c, DIM, step, 0)) for c in record.included],
                axis=0,
            )
            error = np.max(np.abs(ledger.aggregate(record.round_id) - exact))
            assert error <= rounds[step]["error_bound"]
    listing = CliRunner().invoke(app, ["rounds", "--ledger", str(config.ledger)])
    assert listing.exit_code == 0 and "spent (of target)" in listing.output
    assert "Traceback" not in err + logs


async def _round(coordinator_config: Path, client_config: Path, root: Path) -> str:
    config = DeploymentConfig.load(coordinator_config)
    coordinator = make_coordinator(config, ledger=Ledger(":memory:"))
    port = await coordinator.start()
    clients = [_join(client_config, c, port, root / f"client-{c}.log") for c in range(CLIENTS)]
    try:
        assert await coordinator.wait_for_clients(CLIENTS, 60)
        summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    finally:
        await coordinator.stop()
        for client in clients:
            client.kill()
            client.wait()
    assert summary.outcome == "aborted" and summary.privacy is None
    return summary.abort_reason or ""


def test_a_client_refuses_a_round_with_less_noise_than_its_own_deployment_asks(
    tmp_path: Path,
) -> None:
    # The same identities and certificates; the coordinator's file asks epsilon 16 (less
    # noise), the clients' own file epsilon 8.
    theirs = _certs(tmp_path / "d", "--dp-epsilon", "8")
    ours = theirs.with_name("coordinator.toml")
    ours.write_text(re.sub(r"(?m)^epsilon = 8\.0$", "epsilon = 16.0", theirs.read_text()))
    reason = asyncio.run(_round(ours, theirs, tmp_path))
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("client-*.log")))
    assert f"{CLIENTS} clients left the round (their own abort)" in reason, reason
    assert logs.count("downgrade") >= CLIENTS, logs

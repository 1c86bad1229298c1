"""CKKS over the gRPC service: a deployment that names ``scheme = "ckks"``, its keys as
``secagg certs --scheme ckks`` provisions them, real TLS rounds with real ``secagg join``
processes, and every side refusing what its deployment does not say."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import AbortReason, ConfigurationError
from secagg.hazmat.ckks import CkksParameters
from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.schemes.ckks import CkksSettings
from secagg.schemes.masking.parameters import Params
from secagg.service.ckks_deployment import (
    SERVER_CONTEXT_FILE,
    client_context_path,
    provision_ckks_keys,
)
from secagg.service.client import SecAggClient
from secagg.service.config import CONFIG_FILE, DeploymentConfig
from secagg.service.coordinator import RoundSummary
from secagg.service.credentials import Deployment, create_deployment
from secagg.service.run import client_settings, make_coordinator, start_client_process
from secagg.service.tasks import random_task
from tests.service.conftest import DIM, TASK_SEED, expected_mean

pytest.importorskip("tenseal")
pytestmark = pytest.mark.timeout(120)

CLIENTS = 4


@dataclass
class CkksLocal:
    """A CKKS deployment on disk, and the masking deployment of the same credentials."""

    root: Path
    deployment: Deployment
    ckks: Path  # deployment.toml: scheme = "ckks"
    masking: Path  # masking.toml: the same TLS, identities and allow-list, masking rounds

    def config(self, path: Path | None = None) -> DeploymentConfig:
        return DeploymentConfig.load(path or self.ckks)


@pytest.fixture
def ckks_local(tmp_path: Path) -> Iterator[CkksLocal]:
    root = tmp_path / "deploy"
    deployment = create_deployment(root, CLIENTS)
    settings = CkksSettings(dim=DIM, max_clients=CLIENTS, max_weight=3)
    provision_ckks_keys(root, deployment.identities, settings.params)
    ckks = DeploymentConfig.write(root, deployment, settings, stage_timeout=10.0, cohort_wait=30.0)
    text = DeploymentConfig.render(
        params=Params(dim=DIM, max_clients=CLIENTS, max_weight=3),
        port=0,
        min_clients=3,
        stage_timeout=10.0,
        cohort_wait=30.0,
        ledger="masking-ledger.sqlite",
        tls=("tls/ca.pem", "tls/server.pem", "tls/server.key"),
        allow_list="allowlist.toml",
    )
    masking = root / "masking.toml"
    masking.write_text(text)
    yield CkksLocal(root, deployment, ckks, masking)


def _file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------- provisioning
def test_certs_provisions_ckks_keys_once_and_each_side_loads_only_its_own(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    command = [
        sys.executable, "-m", "secagg", "certs", str(deploy),
        "--clients", "3", "--dim", "16", "--scheme", "ckks",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "scheme ckks" in done.stdout
    config = DeploymentConfig.load(deploy / CONFIG_FILE)
    assert isinstance(config.params, CkksSettings) and config.params.dim == 16
    assert config.server_context == deploy / SERVER_CONTEXT_FILE
    contexts = [client_context_path(deploy / "clients" / f"client-{c}.key") for c in range(3)]
    assert all(_file_mode(path) == 0o600 for path in contexts)
    # One dealer: every client holds the same key.
    assert len({path.read_bytes() for path in contexts}) == 1
    before = {path: path.read_bytes() for path in (*contexts, config.server_context)}
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 2
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert "refusing to overwrite" in again.stderr
    assert {path: path.read_bytes() for path in before} == before


def test_a_coordinator_refuses_a_server_context_that_holds_the_secret_key(
    ckks_local: CkksLocal,
) -> None:
    config = ckks_local.config()
    assert config.server_context is not None
    config.server_context.unlink()
    shutil.copy(client_context_path(ckks_local.deployment.identities[0]), config.server_context)
    with pytest.raises(ConfigurationError, match="holds the secret key"):
        make_coordinator(config, ledger=Ledger(":memory:"))
    # The same through `secagg serve`: one line, exit code 2, before anything listens.
    done = subprocess.run(
        [sys.executable, "-m", "secagg", "serve", "--config", str(ckks_local.ckks)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "holds the secret key" in done.stderr


def test_a_client_refuses_a_context_without_the_secret_key_or_under_other_parameters(
    ckks_local: CkksLocal, tmp_path: Path
) -> None:
    config = ckks_local.config()
    assert config.server_context is not None
    identity = ckks_local.deployment.identities[1]
    context = client_context_path(identity)
    context.unlink()
    shutil.copy(config.server_context, context)
    with pytest.raises(ConfigurationError, match="holds no secret key"):
        client_settings(config, identity)
    # A context a dealer made for other CKKS parameters than the deployment's.
    other = create_deployment(tmp_path / "other", 3)
    provision_ckks_keys(
        tmp_path / "other",
        other.identities,
        CkksParameters(4096, (40, 20, 40), 20),
    )
    context.unlink()
    shutil.copy(client_context_path(other.identities[1]), context)
    with pytest.raises(ConfigurationError, match="expected"):
        client_settings(config, identity)


# ---------------------------------------------------------------------------- the deployment file
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('scheme = "ckks"', 'round.scheme = "plaintext" cannot be served'),
        ("min_cohort = 1", "round.value_bits is a masking parameter"),
        ("[ckks]", '[ckks] belongs to a deployment with round.scheme = "ckks"'),
        ("key_holders = 2", "key_holders must be an integer in [1, max_clients = 4]"),
        ("scale_bits = 40", "scale_bits must be in [20, 60]"),
    ],
    ids=["plaintext", "masking-key", "ckks-section-under-masking", "key-holders", "scale"],
)
def test_a_deployment_file_that_mixes_or_misnames_schemes_is_one_line_naming_the_key(
    ckks_local: CkksLocal, change: str, message: str
) -> None:
    text = ckks_local.ckks.read_text()
    replacement = {
        'scheme = "ckks"': 'scheme = "plaintext"',
        "min_cohort = 1": "min_cohort = 1\nvalue_bits = 16",
        "[ckks]": "[ckks]",
        "key_holders = 2": "key_holders = 9",
        "scale_bits = 40": "scale_bits = 70",
    }[change]
    if change == "[ckks]":
        text = text.replace('scheme = "ckks"', 'scheme = "masking"')
    path = ckks_local.root / "changed.toml"
    path.write_text(text.replace(change, replacement, 1))
    with pytest.raises(ConfigurationError) as caught:
        DeploymentConfig.load(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------- rounds
def test_a_ckks_round_over_tls_with_real_join_processes_is_exact_within_its_bound(
    ckks_local: CkksLocal,
) -> None:
    config = ckks_local.config()
    assert isinstance(config.params, CkksSettings)
    logs = ckks_local.root / "logs"
    logs.mkdir()

    async def run() -> list[RoundSummary]:
        with Ledger(config.ledger) as ledger:
            coordinator = make_coordinator(config, ledger=ledger)
            port = await coordinator.start()
            processes = [
                start_client_process(
                    ckks_local.ckks,
                    ckks_local.deployment.identities[c],
                    f"127.0.0.1:{port}",
                    logs / f"client-{c}.log",
                    task="random",
                    task_seed=TASK_SEED,
                    rounds=2,
                )
                for c in range(CLIENTS)
            ]
            try:
                assert await coordinator.wait_for_clients(CLIENTS, 60)
                model = np.zeros(DIM, dtype=np.float32)
                return [await coordinator.run_round(model, step=step) for step in range(2)]
            finally:
                await coordinator.stop(0.5)
                for process in processes:
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()

    summaries = asyncio.run(run())
    for step, summary in enumerate(summaries):
        assert summary.outcome is RoundOutcome.COMPLETED, summary.abort_reason
        assert summary.scheme == "ckks"
        assert set(summary.stage_seconds) == {"upload", "decrypt"}
        assert summary.included == tuple(range(CLIENTS))
        assert summary.aggregate is not None and summary.error_bound is not None
        error = np.max(np.abs(summary.aggregate - expected_mean(summary.included, step)))
        assert error <= summary.error_bound == config.params.error_bound
        # A ciphertext goes up, never the update: far more than its 4 * dim float32 bytes.
        assert summary.upload_bytes_per_client > 100 * 4 * DIM
    # Each round counts its own bytes: a large frame still being written as the next round
    # starts does not carry the previous rounds' totals into it.
    first, second = (s.download_bytes_per_client for s in summaries)
    assert abs(second - first) < 0.1 * first
    with Ledger.open_readonly(config.ledger) as ledger:
        record = ledger.round(summaries[1].round_id)
        stored = ledger.aggregate(record.round_id)
    assert (record.protocol, record.degree, record.threshold) == ("ckks", 0, 1)
    np.testing.assert_array_equal(stored, summaries[1].aggregate)
    text = "".join(path.read_text() for path in sorted(logs.iterdir()))
    assert "Traceback" not in text
    audit = "ckks N=8192 moduli [60, 40, 40] scale 2^40, 2 key holder(s), cohort 4, min cohort 1"
    # Every client contributed to both rounds, by its own journal.
    assert text.count(f"{audit}: contributed its encrypted update") == 2 * CLIENTS


def _mismatched_round(
    coordinator_config: Path, client_config: Path
) -> tuple[RoundSummary, list[SecAggClient]]:
    """One round of a coordinator deployed one way with clients deployed the other."""
    server_side = DeploymentConfig.load(coordinator_config)
    client_side = DeploymentConfig.load(client_config)

    async def run() -> tuple[RoundSummary, list[SecAggClient]]:
        coordinator = make_coordinator(server_side, ledger=Ledger(":memory:"))
        port = await coordinator.start()
        clients = []
        for c in range(CLIENTS):
            identity = client_config.parent / "clients" / f"client-{c}.key"
            settings = client_settings(client_side, identity, target=f"127.0.0.1:{port}")
            clients.append(SecAggClient(settings, random_task(c, DIM, TASK_SEED), rounds=1))
        tasks = [asyncio.create_task(c.run()) for c in clients]
        try:
            assert await coordinator.wait_for_clients(CLIENTS, 30)
            summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            await coordinator.stop(0.5)
        return summary, clients

    return asyncio.run(run())


@pytest.mark.parametrize("coordinator", ["masking", "ckks"])
def test_a_client_refuses_a_round_of_the_scheme_its_deployment_does_not_name(
    ckks_local: CkksLocal, coordinator: str
) -> None:
    """A masking coordinator before CKKS clients, and a CKKS coordinator before masking
    clients: every client refuses the configuration before it trains or sends anything."""
    ours, theirs = (
        (ckks_local.masking, ckks_local.ckks)
        if coordinator == "masking"
        else (ckks_local.ckks, ckks_local.masking)
    )
    summary, clients = _mismatched_round(ours, theirs)
    assert summary.outcome is RoundOutcome.ABORTED
    assert summary.included == ()
    for client in clients:
        assert client.stats.abort_reasons == [AbortReason.PARAMETER_MISMATCH]
    first_stage = "commit" if coordinator == "masking" else "upload"
    assert {stage.value for stage, _ in summary.dropped.values()} == {first_stage}
    assert summary.abort_reason is not None
    assert f"4 clients left the round (their own abort) at {first_stage}" in summary.abort_reason

"""Fixtures for the service tests: a real local deployment (TLS, identities, allow-list),
client processes started with ``python -m secagg join``, and the exact expected mean."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.schemes.masking.parameters import Params, ServerModel
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import Deployment, create_deployment
from secagg.service.run import start_client_process
from secagg.service.tasks import random_update, random_weight

DIM = 64
CLIENTS = 6
TASK_SEED = 0


@dataclass
class Local:
    """A deployment on disk and the client processes started against it."""

    root: Path
    deployment: Deployment
    config_path: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config(self) -> DeploymentConfig:
        return DeploymentConfig.load(self.config_path)

    def start_client(
        self,
        client_id: int,
        target: str,
        *,
        rounds: int | None = None,
        train_seconds: float | None = None,
    ) -> None:
        self.processes[client_id] = start_client_process(
            self.config_path,
            self.deployment.identities[client_id],
            target,
            self.root / f"client-{client_id}.log",
            task="random",
            task_seed=TASK_SEED,
            rounds=rounds,
            train_seconds=train_seconds,
        )

    def kill(self, client_id: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes[client_id]
        if process.poll() is None:
            os.kill(process.pid, sig)
            if sig == signal.SIGKILL:
                process.wait()

    def client_logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("client-*.log"))
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def write_config(
    root: Path,
    deployment: Deployment,
    *,
    stage_timeout: float = 10.0,
    min_clients: int = 3,
    port: int = 0,
    clients: int = CLIENTS,
    active: bool = False,
    session_rounds: int = 0,
) -> Path:
    # A test may rewrite its deployment; DeploymentConfig.write itself never overwrites.
    (root / "deployment.toml").unlink(missing_ok=True)
    return DeploymentConfig.write(
        root,
        deployment,
        Params(
            dim=DIM,
            max_clients=clients,
            max_weight=3,
            server_model=ServerModel.SEMI_MALICIOUS if active else ServerModel.SEMI_HONEST,
        ),
        port=port,
        min_clients=min_clients,
        stage_timeout=stage_timeout,
        cohort_wait=30.0,
        session_rounds=session_rounds,
    )


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    deployment = create_deployment(tmp_path / "deploy", CLIENTS)
    config = write_config(tmp_path / "deploy", deployment)
    env = Local(tmp_path / "deploy", deployment, config)
    yield env
    env.stop()


def expected_mean(included: tuple[int, ...] | list[int], step: int = 0) -> NDArray[np.float64]:
    weights = np.array([random_weight(c) for c in included], dtype=np.float64)
    updates = np.stack(
        [random_update(c, DIM, step, TASK_SEED).astype(np.float64) for c in included]
    )
    return np.asarray(weights @ updates / weights.sum())

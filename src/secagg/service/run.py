"""Entry points behind ``secagg serve`` and ``secagg join``: wiring config files to objects."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from secagg.errors import ConfigurationError
from secagg.policy import ClientPolicy
from secagg.service.client import ClientSettings, SecAggClient, UpdateFn
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import Coordinator, RoundSummary
from secagg.service.credentials import (
    AllowList,
    ClientIdentity,
    load_ca,
    load_tls_server_credentials,
)
from secagg.service.ledger import Ledger

__all__ = ["client_policy", "join", "make_coordinator", "serve", "start_client_process"]

log = logging.getLogger("secagg.serve")


def make_coordinator(
    config: DeploymentConfig,
    *,
    ledger: Ledger,
    on_stage: Callable[[int, str], None] | None = None,
    insecure: bool = False,
) -> Coordinator:
    if config.allow_list is None:
        raise ConfigurationError("the deployment names no allow-list ([clients] allow_list)")
    if config.tls is None and not insecure:
        raise ConfigurationError("the deployment has no [tls] section; TLS is required")
    tls = None if config.tls is None else load_tls_server_credentials(config.tls)
    return Coordinator(
        config.coordinator,
        ledger=ledger,
        allow_list=AllowList.load(config.allow_list),
        tls=tls,
        on_stage=on_stage,
    )


async def serve(
    config: DeploymentConfig,
    *,
    rounds: int,
    report: Callable[[RoundSummary], None] | None = None,
) -> list[RoundSummary]:
    """Run ``rounds`` rounds of federated averaging on a zero-initialised model."""
    summaries: list[RoundSummary] = []
    with Ledger(config.ledger) as ledger:
        coordinator = make_coordinator(config, ledger=ledger)
        await coordinator.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        model = np.zeros(config.params.dim, dtype=np.float32)
        try:
            for step in range(rounds):
                if stop.is_set():
                    break
                summary = await coordinator.run_round(model, step=step)
                summaries.append(summary)
                if report is not None:
                    report(summary)
                if summary.aggregate is not None:
                    model = (model + summary.aggregate).astype(np.float32)
        finally:
            await coordinator.stop()
    return summaries


def join(
    config: DeploymentConfig,
    identity_path: Path,
    update: Callable[[int], UpdateFn],
    *,
    target: str | None = None,
    rounds: int | None = None,
    insecure: bool = False,
) -> None:
    """Connect to the coordinator and answer rounds until ``rounds`` have ended."""
    identity = ClientIdentity.load(identity_path)
    if config.tls is None and not insecure:
        raise ConfigurationError("the deployment has no [tls] section; TLS is required")
    ca = None if config.tls is None else load_ca(config.tls.ca_cert)
    policy, pki = client_policy(config)
    settings = ClientSettings(
        target=target or f"{config.coordinator.host}:{config.coordinator.port}",
        identity=identity,
        ca_cert=ca,
        max_message_bytes=config.coordinator.max_message_bytes,
        policy=policy,
        pki=pki,
        stage_timeout=config.client_stage_timeout,
    )
    client = SecAggClient(settings, update(identity.client_id), rounds=rounds)
    asyncio.run(client.run())


def client_policy(config: DeploymentConfig) -> tuple[ClientPolicy, Mapping[int, bytes]]:
    """The client's policy and PKI from its deployment: the allow-list is required, since the
    cohort of every round must lie within it."""
    if config.allow_list is None:
        raise ConfigurationError("the deployment names no allow-list ([clients] allow_list)")
    keys = AllowList.load(config.allow_list).keys
    return ClientPolicy(config.params, frozenset(keys)), keys


def start_client_process(
    config: Path,
    identity: Path,
    target: str,
    log: Path,
    *,
    task: str = "random",
    task_seed: int = 0,
    task_clients: int | None = None,
    rounds: int | None = None,
) -> subprocess.Popen[bytes]:
    """``secagg join`` in a process of its own, its output appended to ``log``."""
    command = [
        sys.executable, "-m", "secagg", "join",
        "--config", str(config),
        "--identity", str(identity),
        "--target", target,
        "--task", task,
        "--task-seed", str(task_seed),
    ]  # fmt: skip
    if task_clients is not None:
        command += ["--task-clients", str(task_clients)]
    if rounds is not None:
        command += ["--rounds", str(rounds)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

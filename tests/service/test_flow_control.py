"""Flow control: an upload window smaller than the cohort, over TLS on loopback.

At most ``upload_window`` clients hold the message that makes them upload (masking's
``PeerShares``) without having answered; the others are told they are queued and get the very
same message as places free up. Queued clients must not hit their own deadline while they
wait, a place held by a client that never uploads must free up at that client's deadline,
and a client must still refuse to wait for ever on a coordinator that only ever says
"queued".
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import AbortReason, DropReason
from secagg.ledger import Ledger
from secagg.protocol.codec import Message, decode
from secagg.protocol.stages import Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.messages import PeerShares
from secagg.schemes.masking.parameters import Params
from secagg.service.client import ClientSettings, SecAggClient
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import Coordinator, RoundSummary
from secagg.service.credentials import AllowList, create_deployment
from secagg.service.run import client_settings, make_coordinator
from secagg.service.tasks import random_task
from secagg.service.tls import load_tls_server_credentials
from secagg.service.transport import Connection, Transport
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.wire import encode_model, task_digest
from tests.service.conftest import CLIENTS, DIM, TASK_SEED, Local, expected_mean, write_config

pytestmark = pytest.mark.timeout(120)


class _SilentAtUpload(SecAggClient):
    """A client that takes its place in the upload window and never uploads: it answers every
    stage but the masked input, and stays connected."""

    async def _answer(self, call, state, data):  # type: ignore[no-untyped-def]
        if isinstance(data, bytes) and isinstance(decode(data), PeerShares):
            return
        await super()._answer(call, state, data)


async def _one_round(coordinator: Coordinator, clients: list[SecAggClient]) -> RoundSummary:
    """Run ``clients`` (in this process) through one round of the started ``coordinator``,
    then stop it."""
    runs = [asyncio.create_task(client.run()) for client in clients]
    try:
        assert await coordinator.wait_for_clients(len(clients), 30)
        summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
        await asyncio.wait_for(asyncio.gather(*runs), 30)
    finally:
        for run in runs:
            run.cancel()
        await coordinator.stop()
    return summary


def _settings(local: Local, client: int, stage_timeout: float) -> ClientSettings:
    settings = client_settings(local.config, local.deployment.identities[client])
    return dataclasses.replace(settings, stage_timeout=stage_timeout)


async def _in_process_round(
    local: Local,
    *,
    window: int,
    stage_timeout: float,
    client_timeout: float,
    silent: frozenset[int] = frozenset(),
) -> tuple[RoundSummary, list[SecAggClient]]:
    """A round of in-process clients (``silent`` ones never upload) against the real
    coordinator, with the given upload window and deadlines. A silent client's own deadline
    is a minute: it is the coordinator's deadline that must drop it, and a busy machine must
    not let the client's own deadline win that race."""
    config = local.config.with_overrides(upload_window=window, stage_timeout=stage_timeout)
    with Ledger(config.ledger) as ledger:
        coordinator = make_coordinator(config, ledger=ledger)
        port = await coordinator.start()
        clients = []
        for c in range(CLIENTS):
            own = 60.0 if c in silent else client_timeout
            settings = dataclasses.replace(_settings(local, c, own), target=f"127.0.0.1:{port}")
            kind = _SilentAtUpload if c in silent else SecAggClient
            clients.append(kind(settings, random_task(c, DIM, TASK_SEED), rounds=1))
        summary = await _one_round(coordinator, clients)
    return summary, clients


def test_a_window_of_two_over_six_real_client_processes_gives_the_exact_mean(
    local: Local,
) -> None:
    async def scenario() -> RoundSummary:
        config = local.config.with_overrides(upload_window=2)
        with Ledger(config.ledger) as ledger:
            coordinator = make_coordinator(config, ledger=ledger)
            port = await coordinator.start()
            for c in range(CLIENTS):
                local.start_client(c, f"127.0.0.1:{port}", rounds=1)
            assert await coordinator.wait_for_clients(CLIENTS, 60), local.client_logs()
            summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
            await coordinator.stop()
            return summary

    summary = asyncio.run(scenario())
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.included == tuple(range(CLIENTS))
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summary.aggregate - expected_mean(summary.included))) <= bound
    for process in local.processes.values():
        assert process.wait(30) == 0, local.client_logs()


def test_queued_clients_outwait_their_own_deadline_and_a_stuck_window_is_dropped_at_its_deadline(
    local: Local,
) -> None:
    # A window of one, and its first two places go to clients that never upload: the other four
    # wait about two coordinator deadlines (4 s) in the queue, longer than their own deadline
    # (3 s). Each silent client is dropped two seconds after its message was written, and the
    # window moves on to the next client.
    summary, clients = asyncio.run(
        _in_process_round(
            local, window=1, stage_timeout=2.0, client_timeout=3.0, silent=frozenset({0, 1})
        )
    )
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.dropped == {
        0: (Stage.MASKED_INPUT, DropReason.MISSED_MASKED_INPUT),
        1: (Stage.MASKED_INPUT, DropReason.MISSED_MASKED_INPUT),
    }
    assert summary.included == (2, 3, 4, 5)
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summary.aggregate - expected_mean(summary.included))) <= bound
    # Two places freed at their deadlines, one after the other: the stage took both.
    assert summary.stage_seconds[Stage.MASKED_INPUT] >= 4.0
    for c in (2, 3, 4, 5):
        stats = clients[c].stats
        assert stats.aborted == 0, stats.events
        assert stats.included == 1
        assert any(event.startswith(f"round {summary.round_id}: queued") for event in stats.events)


def test_a_window_as_large_as_the_cohort_queues_nobody(local: Local) -> None:
    summary, clients = asyncio.run(
        _in_process_round(local, window=CLIENTS, stage_timeout=5.0, client_timeout=11.0)
    )
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.included == tuple(range(CLIENTS))
    for client in clients:
        assert not any("queued" in event for event in client.stats.events)


def test_under_ckks_the_task_is_what_the_window_paces_and_the_mean_is_exact(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tenseal")
    from secagg.schemes.ckks import CkksSettings
    from secagg.service.ckks_deployment import provision_ckks_keys

    clients = 4
    root = tmp_path / "deploy"
    deployment = create_deployment(root, clients)
    settings = CkksSettings(dim=DIM, max_clients=clients, max_weight=3)
    provision_ckks_keys(root, deployment.identities, settings.params)
    path = DeploymentConfig.write(root, deployment, settings, stage_timeout=10.0)
    config = DeploymentConfig.load(path).with_overrides(upload_window=1)

    async def scenario() -> tuple[RoundSummary, list[SecAggClient]]:
        with Ledger(config.ledger) as ledger:
            coordinator = make_coordinator(config, ledger=ledger)
            port = await coordinator.start()
            members = [
                SecAggClient(
                    dataclasses.replace(
                        client_settings(config, deployment.identities[c]),
                        target=f"127.0.0.1:{port}",
                    ),
                    random_task(c, DIM, TASK_SEED),
                    rounds=1,
                )
                for c in range(clients)
            ]
            summary = await _one_round(coordinator, members)
        return summary, members

    summary, members = asyncio.run(scenario())
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.included == tuple(range(clients))
    assert summary.aggregate is not None and summary.error_bound is not None
    exact = expected_mean(summary.included)
    assert np.max(np.abs(summary.aggregate - exact)) <= summary.error_bound
    assert all(member.stats.included == 1 for member in members)


# ------------------------------------------------------------- a coordinator that only queues
class _OnlyQueues:
    """A round driver that sends one client its Task, takes its commitment and then says
    nothing but "queued" for ever (the real transport underneath)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[pb.ClientFrame] = asyncio.Queue()

    def on_frame(self, conn: Connection, frame: pb.ClientFrame) -> None:
        self.frames.put_nowait(frame)

    def on_disconnect(self, conn: Connection) -> None:
        pass


def test_a_client_leaves_a_coordinator_that_keeps_it_queued_beyond_its_bound(
    tmp_path: Path,
) -> None:
    cohort = (0, 1, 2)
    client_timeout = 0.5
    deployment = create_deployment(tmp_path / "deploy", len(cohort))
    params = Params(dim=DIM, max_clients=len(cohort), max_weight=3)
    path = write_config(tmp_path / "deploy", deployment, clients=len(cohort))
    config = DeploymentConfig.load(path)
    allow_list = AllowList.load(deployment.allow_list)
    scheme = MaskingScheme(params, pki=allow_list.keys, allowed=frozenset(allow_list.keys))

    async def scenario() -> pb.ClientFrame:
        assert config.tls is not None
        transport = Transport(
            config.coordinator,
            allow_list=allow_list,
            tls=load_tls_server_credentials(config.tls),
        )
        driver = _OnlyQueues()
        transport.listener = driver
        port = await transport.start()
        settings = dataclasses.replace(
            client_settings(config, deployment.identities[0]),
            target=f"127.0.0.1:{port}",
            stage_timeout=client_timeout,
        )
        client = SecAggClient(settings, random_task(0, DIM, TASK_SEED), rounds=1)
        run = asyncio.create_task(client.run())
        try:
            assert await transport.wait_for_clients(1, 30)
            model = encode_model(np.zeros(DIM, dtype=np.float32))
            round_config: Message = scheme.round_config(
                cohort, nonce=bytes(16), round_id=1, task_hash=task_digest(model, 0)
            )
            conn = transport.connection(0)
            assert conn is not None
            conn.send(
                pb.ServerFrame(
                    task=pb.Task(
                        round_id=1, round_config=round_config.encode(), model=model, step=0
                    )
                )
            )
            commitment = await asyncio.wait_for(driver.frames.get(), 30)
            assert commitment.WhichOneof("body") == "protocol"
            # Queued every 0.2 s, well within the client's 0.5 s deadline, for ever.
            while driver.frames.empty():
                conn.send(pb.ServerFrame(queued=pb.Queued(round_id=1, position=1, window=3)))
                await asyncio.sleep(0.2)
            return driver.frames.get_nowait()
        finally:
            run.cancel()
            await transport.stop()

    abort = asyncio.run(scenario())
    assert abort.WhichOneof("body") == "abort"
    assert abort.abort.reason == AbortReason.STAGE_TIMEOUT.value
    # Not at its own deadline (each "queued" was a sign of life: leaving there would say "no
    # word from the server for 0.5 s") but at its bound: one deadline for the one window of
    # the cohort of three, plus three more, 2 s from the first "queued".
    assert abort.abort.detail.startswith("queued for ")
    assert abort.abort.detail.endswith(
        "longer than the coordinator's windows of this cohort can take (2 s)"
    )

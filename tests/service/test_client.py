"""The service client (``SecAggClient``) as an operator meets it: how it connects, retries and
gives up, and how it treats its own update callback. What it refuses from a lying coordinator
is in test_wire_attacks.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.errors import DropReason, Rejected, Unreachable
from secagg.ledger import Ledger
from secagg.service.client import ClientSettings, SecAggClient, UpdateFn
from secagg.service.credentials import (
    AllowList,
    ClientIdentity,
    generate_tls,
    load_ca,
    load_tls_server_credentials,
)
from secagg.service.run import make_coordinator
from secagg.service.scheme_sides import client_policy
from secagg.service.tasks import random_task
from secagg.service.v1 import coordinator_pb2 as pb
from tests.service.adversary import Adversary
from tests.service.conftest import DIM, TASK_SEED, Local
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _settings(local: Local, client_id: int, target: str, **overrides: object) -> ClientSettings:
    config = local.config
    assert config.tls is not None
    policy, pki = client_policy(config)
    fields: dict[str, object] = {
        "target": target,
        "identity": ClientIdentity.load(local.deployment.identities[client_id]),
        "ca_cert": load_ca(config.tls.ca_cert),
        "max_message_bytes": config.coordinator.max_message_bytes,
        "policy": policy,
        "pki": pki,
        "retry_initial": 0.05,
        "retry_max": 0.1,
    }
    fields.update(overrides)
    return ClientSettings(**fields)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------- connecting
def test_a_client_logs_every_failed_attempt_and_gives_up_after_max_attempts(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="secagg.client")
    target = f"127.0.0.1:{_closed_port()}"
    client = SecAggClient(_settings(local, 0, target, max_attempts=3), random_task(0, DIM, 0))
    with pytest.raises(Unreachable) as caught:
        asyncio.run(client.run())
    assert "after 3 attempts" in str(caught.value) and "\n" not in str(caught.value)
    attempts = [r.getMessage() for r in caplog.records if "no session with" in r.getMessage()]
    assert [f"attempt {k} of 3" in line for k, line in enumerate(attempts, 1)] == [True] * 3
    assert all(target in line for line in attempts)


def test_a_certificate_that_does_not_verify_is_fatal_at_once(local: Local, tmp_path: Path) -> None:
    """Another CA's server: retrying would only retry talking to an impostor."""
    generate_tls(tmp_path / "impostor")
    config = local.config
    assert config.tls is not None and config.allow_list is not None
    impostor = load_tls_server_credentials(type(config.tls).in_directory(tmp_path / "impostor"))
    adversary = Adversary(AllowList.load(config.allow_list), impostor, 1 << 20)
    port = adversary.start()
    try:
        client = SecAggClient(
            _settings(local, 0, f"127.0.0.1:{port}", max_attempts=5), random_task(0, DIM, 0)
        )
        with pytest.raises(Unreachable) as caught:
            asyncio.run(client.run())
        assert "certificate" in str(caught.value)
        assert client.stats.reconnects == 0
        assert adversary.hellos == 0  # it never even said who it is
    finally:
        adversary.stop()


def test_a_temporary_refusal_is_retried_and_a_final_one_is_not(local: Local) -> None:
    config = local.config
    assert config.tls is not None and config.allow_list is not None
    adversary = Adversary(
        AllowList.load(config.allow_list),
        load_tls_server_credentials(config.tls),
        config.coordinator.max_message_bytes,
    )
    port = adversary.start()
    try:
        adversary.refusals = [
            pb.Reject(reason="client 0 is already connected", retryable=True),
            pb.Reject(reason="client 0 is already connected", retryable=True),
            pb.Reject(reason="not on the allow-list"),
        ]
        client = SecAggClient(_settings(local, 0, f"127.0.0.1:{port}"), random_task(0, DIM, 0))
        with pytest.raises(Rejected) as caught:
            asyncio.run(client.run())
        assert str(caught.value) == "not on the allow-list"
        assert adversary.hellos == 3
        assert client.stats.reconnects == 2
    finally:
        adversary.stop()


def _adversary(local: Local) -> Adversary:
    config = local.config
    assert config.tls is not None and config.allow_list is not None
    return Adversary(
        AllowList.load(config.allow_list),
        load_tls_server_credentials(config.tls),
        config.coordinator.max_message_bytes,
    )


def test_a_stream_ended_with_any_status_is_a_reconnection_within_the_retry_budget(
    local: Local,
) -> None:
    """Every way a stream can end mid-session (a coordinator stopped or restarted, a proxy or
    the network resetting it: any gRPC status) is one lost connection: the client connects
    again, and the retry budget counts failures in a row, so no number of them uses it up."""
    adversary = _adversary(local)
    port = adversary.start()
    codes = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
    client = SecAggClient(
        _settings(local, 0, f"127.0.0.1:{port}", max_attempts=2), random_task(0, DIM, 0)
    )

    def welcomed_again(previous: object, run: asyncio.Task[object]) -> object:
        seen: list[object] = []

        def welcomed() -> bool:
            assert not run.done(), client.stats.events  # it gave up
            seen.append(adversary.connections.get(0))
            return seen[-1] is not None and seen[-1] is not previous

        wait_until(
            welcomed, lambda: f"the client's next connection: {client.stats.events}", interval=0.01
        )
        return seen[-1]

    async def scenario() -> None:
        run: asyncio.Task[object] = asyncio.create_task(client.run())
        conn: object = None
        try:
            for code in codes:
                conn = await asyncio.to_thread(welcomed_again, conn, run)
                await asyncio.to_thread(adversary.end_stream, 0, code, f"ended: {code.name}")
            await asyncio.to_thread(welcomed_again, conn, run)
            assert not run.done()  # (a client that gave up would have ended its run)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run

    try:
        asyncio.run(scenario())
    finally:
        adversary.stop()
    lost = [e for e in client.stats.events if e.startswith("connection lost")]
    assert len(lost) == len(codes)
    assert all(f"ended: {code.name}" in e for code, e in zip(codes, lost, strict=True))


def test_a_call_grpc_cancels_by_itself_is_a_lost_connection_and_a_stop_is_a_stop(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc-aio raises CancelledError from a call it cancelled itself: the stream is gone,
    the client is not stopped. Only a cancellation of the client's own task stops it."""
    adversary = _adversary(local)
    port = adversary.start()
    client = SecAggClient(
        _settings(local, 0, f"127.0.0.1:{port}", max_attempts=5), random_task(0, DIM, 0)
    )
    converse = client._converse
    spurious = 3

    async def cancelled_by_grpc(call: grpc.aio.StreamStreamCall) -> None:
        if len(client.stats.events) < spurious:
            raise asyncio.CancelledError  # (the client's task is not being cancelled)
        await converse(call)

    monkeypatch.setattr(client, "_converse", cancelled_by_grpc)

    class Cancelled:
        async def read(self) -> object:
            raise asyncio.CancelledError

    async def scenario() -> object:
        # A read cancelled under the pump is said to the session, never left unsaid (the
        # client would wait for ever between rounds on a stream that brings nothing).
        inbox: asyncio.Queue[pb.ServerFrame | Exception] = asyncio.Queue()
        await client._pump(Cancelled(), inbox)  # type: ignore[arg-type]
        said = inbox.get_nowait()
        run = asyncio.create_task(client.run())
        await asyncio.to_thread(adversary.wait_for, [0])
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return said

    try:
        said = asyncio.run(scenario())
    finally:
        adversary.stop()
    assert isinstance(said, ConnectionError)
    assert client.stats.events == [
        "connection lost: the stream was cancelled",
        "connection lost: the stream was cancelled",
        "connection lost: the stream was cancelled",
        "welcomed",
    ]


# ----------------------------------------------------------------- the update callback
def _round_with_callbacks(
    local: Local, callbacks: dict[int, UpdateFn]
) -> tuple[object, object, dict[int, SecAggClient]]:
    async def run() -> tuple[object, object, dict[int, SecAggClient]]:
        coordinator = make_coordinator(local.config, ledger=Ledger(":memory:"))
        port = await coordinator.start()
        clients = {
            c: SecAggClient(_settings(local, c, f"127.0.0.1:{port}"), update, rounds=2)
            for c, update in callbacks.items()
        }
        tasks = [asyncio.create_task(c.run()) for c in clients.values()]
        assert await coordinator.wait_for_clients(len(callbacks), 30)
        model = np.zeros(DIM, dtype=np.float32)
        first = await coordinator.run_round(model, step=0)
        second = await coordinator.run_round(model, step=1)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await coordinator.stop()
        return first, second, clients

    return asyncio.run(run())


def _fails_in_round_0(
    bad: Callable[[NDArray[np.float32], int], tuple[NDArray[np.floating], int]],
) -> UpdateFn:
    honest = random_task(4, DIM, TASK_SEED)

    def update(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        return bad(model, step) if step == 0 else honest(model, step)

    return update


def _raises(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
    raise RuntimeError("out of memory on the device")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_raises, "update-failed"),
        (lambda m, s: (np.zeros(DIM + 1), 1), "invalid-update"),
        (lambda m, s: (np.full(DIM, np.nan), 1), "invalid-update"),
        (lambda m, s: (np.zeros(DIM), 2.5), "invalid-update"),
        (lambda m, s: (np.zeros(DIM), 99), "invalid-update"),
        (lambda m, s: np.zeros(DIM), "invalid-update"),
    ],
    ids=["raises", "wrong-length", "nan", "float-weight", "weight-too-large", "no-weight"],
)
def test_a_bad_update_aborts_that_round_for_that_client_only(
    local: Local, bad: Callable[..., object], reason: str
) -> None:
    callbacks = {c: random_task(c, DIM, TASK_SEED) for c in range(4)}
    callbacks[4] = _fails_in_round_0(bad)  # type: ignore[arg-type]
    first, second, clients = _round_with_callbacks(local, callbacks)
    assert first.outcome == "completed"  # type: ignore[attr-defined]
    assert first.included == (0, 1, 2, 3)  # type: ignore[attr-defined]
    stage, why = first.dropped[4]  # type: ignore[attr-defined]
    assert (stage, why) == ("commit", DropReason.CLIENT_ABORTED.value)
    # The same client takes part in the next round as if nothing happened.
    assert second.included == (0, 1, 2, 3, 4)  # type: ignore[attr-defined]
    assert clients[4].stats.abort_reasons[0].value == reason
    assert clients[4].stats.rounds == 2

"""The coordinator and its clients over real TLS sockets on loopback, in one event loop.

These cover the channel's security (identities, replays, malformed and oversize frames,
duplicate ids); tests/service/test_processes.py kills real client processes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from secagg.errors import DropReason
from secagg.service.client import ClientSettings, Rejected, SecAggClient
from secagg.service.coordinator import Coordinator, RoundSummary
from secagg.service.credentials import ClientIdentity, load_ca, sign_challenge
from secagg.service.ledger import Ledger, RoundOutcome
from secagg.service.run import client_policy, make_coordinator
from secagg.service.tasks import random_task
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import channel_options
from tests.service.conftest import CLIENTS, DIM, TASK_SEED, Local, expected_mean

pytestmark = pytest.mark.timeout(120)


def _client(
    local: Local,
    client_id: int,
    port: int,
    identity: ClientIdentity | None = None,
    rounds: int | None = None,
) -> SecAggClient:
    config = local.config
    assert config.tls is not None
    policy, pki = client_policy(config)
    settings = ClientSettings(
        target=f"127.0.0.1:{port}",
        identity=identity or ClientIdentity.load(local.deployment.identities[client_id]),
        ca_cert=load_ca(config.tls.ca_cert),
        max_message_bytes=config.coordinator.max_message_bytes,
        policy=policy,
        pki=pki,
        max_attempts=3,
    )
    return SecAggClient(settings, random_task(client_id, DIM, TASK_SEED), rounds=rounds)


async def _round_with(
    local: Local,
    clients: list[int],
    *,
    rounds: int = 1,
    extra: list[asyncio.Task[object]] | None = None,
) -> tuple[list[RoundSummary], Ledger, Coordinator]:
    config = local.config
    ledger = Ledger(config.ledger)
    coordinator = make_coordinator(config, ledger=ledger)
    port = await coordinator.start()
    tasks = [asyncio.create_task(_client(local, c, port, rounds=rounds).run()) for c in clients]
    assert await coordinator.wait_for_clients(len(clients), 30)
    summaries = []
    model = np.zeros(DIM, dtype=np.float32)
    for step in range(rounds):
        summaries.append(await coordinator.run_round(model, step=step))
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await coordinator.stop()
    return summaries, ledger, coordinator


def test_full_round_over_tls_reveals_the_exact_weighted_mean(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    summaries, ledger, _ = asyncio.run(_round_with(local, list(range(CLIENTS))))
    summary = summaries[0]
    assert summary.outcome == "completed"
    assert summary.included == tuple(range(CLIENTS))
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summary.aggregate - expected_mean(summary.included))) <= bound
    record = ledger.round(summary.round_id)
    assert record.outcome is RoundOutcome.COMPLETED
    np.testing.assert_array_equal(ledger.aggregate(summary.round_id), summary.aggregate)
    # Hello, keys, sealed shares, the bit-packed vector and unmask shares: about a kilobyte.
    assert 500 < summary.upload_bytes_per_client < 2000
    assert summary.download_bytes_per_client > 0
    # Nothing that looks like key, seed or vector bytes reaches the logs.
    assert not re.search(r"[0-9a-f]{32}", caplog.text)
    assert "\\x" not in caplog.text


def test_active_mode_round_over_tls_signs_keys_and_survivor_sets(local: Local) -> None:
    from tests.service.conftest import write_config

    local.config_path = write_config(local.root, local.deployment, active=True)
    summaries, ledger, _ = asyncio.run(_round_with(local, list(range(CLIENTS))))
    summary = summaries[0]
    assert ledger.round(summary.round_id).outcome is RoundOutcome.COMPLETED
    assert summary.outcome == "completed", summary.abort_reason
    assert set(summary.stage_seconds) == {
        "commit",
        "reveal",
        "advertise",
        "share",
        "masked-input",
        "consistency",
        "unmask",
    }
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summary.aggregate - expected_mean(summary.included))) <= bound


def test_clients_take_part_in_successive_rounds_with_fresh_sessions(local: Local) -> None:
    summaries, ledger, _ = asyncio.run(_round_with(local, [0, 1, 2, 3], rounds=2))
    assert [s.outcome for s in summaries] == ["completed", "completed"]
    first, second = (ledger.round(s.round_id) for s in summaries)
    assert first.session_id != second.session_id
    assert summaries[1].aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summaries[1].aggregate - expected_mean((0, 1, 2, 3), step=1))) <= bound


async def _stranger_is_refused(local: Local) -> tuple[str, list[str]]:
    config = local.config
    coordinator = make_coordinator(config, ledger=Ledger(":memory:"))
    port = await coordinator.start()
    stranger = ClientIdentity.generate(0)  # claims id 0 with a key the allow-list lacks
    with pytest.raises(Rejected) as caught:
        await _client(local, 0, port, identity=stranger).run()
    unknown = ClientIdentity.generate(999)
    with pytest.raises(Rejected):
        await _client(local, 999, port, identity=unknown).run()
    await coordinator.stop()
    return str(caught.value), coordinator.rejections


def test_an_identity_not_on_the_allow_list_is_refused(local: Local) -> None:
    reason, rejections = asyncio.run(_stranger_is_refused(local))
    assert reason == "authentication failed"  # nothing about which ids are listed
    assert any("does not match" in r for r in rejections)
    assert any("not on the allow-list" in r for r in rejections)


async def _duplicate(local: Local) -> tuple[str, RoundSummary]:
    config = local.config
    coordinator = make_coordinator(config, ledger=Ledger(":memory:"))
    port = await coordinator.start()
    tasks = [asyncio.create_task(_client(local, c, port, rounds=1).run()) for c in range(4)]
    assert await coordinator.wait_for_clients(4, 30)
    with pytest.raises(Rejected) as caught:
        await _client(local, 2, port).run()
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await asyncio.gather(*tasks)
    await coordinator.stop()
    return str(caught.value), summary


def test_a_second_connection_with_the_same_client_id_is_refused(local: Local) -> None:
    reason, summary = asyncio.run(_duplicate(local))
    assert "already connected" in reason
    assert summary.outcome == "completed" and summary.included == (0, 1, 2, 3)


class RawClient:
    """A hand-driven client stream: authenticates, then sends whatever a test wants."""

    def __init__(self, local: Local, client_id: int, port: int) -> None:
        config = local.config
        assert config.tls is not None
        self.identity = ClientIdentity.load(local.deployment.identities[client_id])
        self.limit = config.coordinator.max_message_bytes
        creds = grpc.ssl_channel_credentials(root_certificates=load_ca(config.tls.ca_cert))
        # It may send more than the agreed cap: the coordinator must be the one to refuse.
        self.channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", creds, options=channel_options(4 * self.limit)
        )
        self.call = pb_grpc.CoordinatorStub(self.channel).Connect()

    async def hello(self) -> None:
        challenge = await self.call.read()
        await self.call.write(
            pb.ClientFrame(
                hello=pb.Hello(
                    client_id=self.identity.client_id,
                    public_key=self.identity.public_key,
                    signature=sign_challenge(self.identity, challenge.challenge.nonce),
                )
            )
        )
        welcome = await self.call.read()
        assert welcome.HasField("welcome")

    async def frames(self) -> AsyncIterator[pb.ServerFrame]:
        while True:
            frame = await self.call.read()
            if frame is grpc.aio.EOF:
                return
            yield frame


async def _misbehaving(local: Local, behaviour: str) -> tuple[RoundSummary, RoundSummary | None]:
    """Clients 0-3 are honest; client 4 is driven by hand and misbehaves in round 2."""
    config = local.config
    coordinator = make_coordinator(config, ledger=Ledger(":memory:"))
    port = await coordinator.start()
    honest = [asyncio.create_task(_client(local, c, port, rounds=2).run()) for c in range(4)]
    raw = RawClient(local, 4, port)
    await raw.hello()
    recorded: list[bytes] = []

    async def drive() -> None:
        from secagg.hazmat.randomness import SystemRandomness
        from secagg.protocol.client import Client
        from secagg.protocol.messages import RoundConfig

        rounds = 0
        client: Client | None = None
        async for frame in raw.frames():
            if frame.HasField("task"):
                rounds += 1
                config_ = RoundConfig.decode(frame.task.round_config)
                if rounds == 1:
                    # Round 1: it takes part honestly; the test keeps its commitment to replay.
                    client = Client(config_, 4, SystemRandomness())
                    client.set_input(np.zeros(DIM), 1)
                    commitment = client.start().encode()
                    recorded.append(commitment)
                    await raw.call.write(pb.ClientFrame(protocol=commitment))
                elif behaviour == "replay":
                    await raw.call.write(pb.ClientFrame(protocol=recorded[0]))
                elif behaviour == "junk":
                    await raw.call.write(pb.ClientFrame(protocol=b"\x00junk"))
                elif behaviour == "oversize":
                    await raw.call.write(pb.ClientFrame(protocol=bytes(raw.limit + 1)))
            elif frame.HasField("protocol") and rounds == 1 and client is not None:
                reply = client.receive(frame.protocol).encode()
                await raw.call.write(pb.ClientFrame(protocol=reply))
            elif frame.HasField("round_end") and rounds == 2:
                return

    driver = asyncio.create_task(drive())
    assert await coordinator.wait_for_clients(5, 30)
    model = np.zeros(DIM, dtype=np.float32)
    first = await coordinator.run_round(model, step=0)
    second = await coordinator.run_round(model, step=1)
    await asyncio.gather(*honest)
    driver.cancel()
    await raw.channel.close()
    await coordinator.stop()
    return first, second


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("replay", DropReason.WRONG_SESSION),
        ("junk", DropReason.MALFORMED),
        ("oversize", DropReason.DISCONNECTED),
    ],
)
def test_a_misbehaving_client_is_dropped_while_the_round_goes_on(
    local: Local, behaviour: str, reason: DropReason
) -> None:
    _, second = asyncio.run(_misbehaving(local, behaviour))
    assert second is not None
    assert second.outcome == "completed"
    assert second.included == (0, 1, 2, 3)
    assert second.dropped[4] == ("commit", reason.value)
    assert second.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(second.aggregate - expected_mean((0, 1, 2, 3), step=1))) <= bound

"""The coordinator and its clients over real TLS sockets on loopback, in one event loop.

These cover the channel's security (identities, replays, malformed and oversize frames,
duplicate ids); tests/service/test_processes.py kills real client processes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from secagg.cli.report import format_rounds_table, round_line
from secagg.errors import DropReason
from secagg.ledger import DropRecord, Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.service.client import ClientSettings, Rejected, SecAggClient
from secagg.service.coordinator import Coordinator, RoundSummary
from secagg.service.credentials import (
    ClientIdentity,
    create_deployment,
    load_ca,
    sign_challenge,
)
from secagg.service.metrics import CoordinatorMetrics, MetricsEndpoint, serve_metrics
from secagg.service.run import make_coordinator
from secagg.service.scheme_sides import client_policy
from secagg.service.tasks import random_task
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import channel_options
from tests.service.conftest import CLIENTS, DIM, TASK_SEED, Local, expected_mean, write_config

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


async def _superseded_before_a_round(local: Local) -> tuple[bool, RoundSummary]:
    """A stale stream of client 3 (authenticated, then silent), then client 3 restarted."""
    config = local.config
    coordinator = make_coordinator(config, ledger=Ledger(":memory:"))
    port = await coordinator.start()
    stale = RawClient(local, 3, port)
    await stale.hello()
    tasks = [asyncio.create_task(_client(local, c, port, rounds=1).run()) for c in range(4)]
    assert await coordinator.wait_for_clients(4, 30)
    # The stale stream is closed by the coordinator: it ends without a round.
    ended = await asyncio.wait_for(_ends(stale), 10)
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await stale.channel.close()
    await coordinator.stop()
    return ended, summary


async def _ends(raw: RawClient) -> bool:
    async for _ in raw.frames():
        pass
    return True


def test_a_restarted_client_supersedes_its_stale_stream_instead_of_being_refused(
    local: Local,
) -> None:
    ended, summary = asyncio.run(_superseded_before_a_round(local))
    assert ended
    assert summary.outcome == "completed" and summary.included == (0, 1, 2, 3)


async def _superseded_mid_round(local: Local) -> RoundSummary:
    """Client 4 is a silent stream in the cohort; at the share stage client 4 reconnects."""
    config = local.config
    coordinator: Coordinator | None = None
    restarted: list[asyncio.Task[object]] = []

    async def on_stage(round_id: int, stage: str) -> None:
        assert coordinator is not None
        if stage == "commit" and not restarted:
            old = coordinator.transport.connection(4)
            assert old is not None
            restarted.append(asyncio.create_task(_client(local, 4, port).run()))
            while not old.superseded:
                await asyncio.sleep(0.01)

    coordinator = make_coordinator(config, ledger=Ledger(":memory:"), on_stage=on_stage)
    port = await coordinator.start()
    honest = [asyncio.create_task(_client(local, c, port, rounds=1).run()) for c in range(4)]
    stale = RawClient(local, 4, port)
    await stale.hello()
    assert await coordinator.wait_for_clients(5, 30)
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await asyncio.wait_for(asyncio.gather(*honest), 30)
    for task in restarted:
        task.cancel()
    await stale.channel.close()
    await coordinator.stop()
    return summary


def test_a_client_superseded_mid_round_is_dropped_as_disconnected_at_once(local: Local) -> None:
    summary = asyncio.run(_superseded_mid_round(local))
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.included == (0, 1, 2, 3)
    assert summary.dropped[4] == ("commit", "disconnected")
    assert summary.drops == (
        "dropped: client 4 at commit (disconnected: connected again: its previous stream is closed)"
    )
    # "disconnected" when its stream was replaced, where a stale stream that nobody replaced
    # would have been dropped at the 10 s stage deadline, as having missed the commit stage.


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
        from secagg.schemes.masking.client import Client
        from secagg.schemes.masking.messages import RoundConfig

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


TEN = 10


async def _round_with_drops(local: Local) -> tuple[RoundSummary, Ledger]:
    """Ten clients (each with 6 neighbours: three drops never leave one below t = 2): 3 loses
    its connection at unmask (its input is in the sum, the others reveal its self mask); 4's
    update callback raises (it leaves the round with its typed reason); 5 is a stream that
    never answers; the others are honest."""
    config = local.config
    ledger = Ledger(config.ledger)
    running: dict[int, asyncio.Task[object]] = {}

    def on_stage(round_id: int, stage: str) -> None:
        if stage == "unmask":
            running[3].cancel()  # its channel closes with it

    def raises(model: object, step: int) -> tuple[np.ndarray, int]:
        raise RuntimeError("out of memory on the device")

    coordinator = make_coordinator(config, ledger=ledger, on_stage=on_stage)
    port = await coordinator.start()
    for c in (c for c in range(TEN) if c != 5):
        client = _client(local, c, port, rounds=1)
        if c == 4:
            client._update = raises
        running[c] = asyncio.create_task(client.run())
    silent = RawClient(local, 5, port)
    await silent.hello()
    assert await coordinator.wait_for_clients(TEN, 30)
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    for task in running.values():
        task.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)
    await silent.channel.close()
    await coordinator.stop()
    return summary, ledger


def test_a_completed_round_names_each_dropped_client_where_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The round's line (serve's report), its log line, its ledger rows and `secagg rounds`
    all say who dropped, at which stage, and why: a lost connection, a deadline, a client's
    own typed reason for leaving."""
    caplog.set_level(logging.INFO, logger="secagg.coordinator")
    deployment = create_deployment(tmp_path, TEN)
    config = write_config(tmp_path, deployment, stage_timeout=3.0, clients=TEN)
    summary, ledger = asyncio.run(_round_with_drops(Local(tmp_path, deployment, config)))
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.included == (0, 1, 2, 3, 6, 7, 8, 9)
    dropped = (
        "dropped: "
        "client 4 at commit (client-aborted: update-failed: the update callback raised "
        "RuntimeError), "
        "client 5 at commit (missed-commit: no answer within 3 s of its message), "
        "client 3 at unmask (disconnected: connection lost)"
    )
    assert round_line(summary).plain == (
        f"round 1: completed, 8 of 10 included, {summary.seconds:.2f} s; {dropped}"
    )
    assert f"round 1 completed: 8 included; {dropped}" in caplog.messages
    record = ledger.round(1)
    assert record.drops == (
        DropRecord(4, "commit", "client-aborted", "update-failed: the update callback raised "
                   "RuntimeError"),
        DropRecord(5, "commit", "missed-commit", "no answer within 3 s of its message"),
        DropRecord(3, "unmask", "disconnected", "connection lost"),
    )  # fmt: skip
    console = Console(width=1000, record=True)
    console.print(format_rounds_table(ledger.rounds()))
    assert dropped in console.export_text()


# ----------------------------------------------------------------- operator metrics

# Ids long enough that finding one in the scrape would mean it was exported.
METRIC_IDS = tuple(range(40001, 40007))


async def _metered_round(
    local: Local, endpoint: MetricsEndpoint, metrics: CoordinatorMetrics
) -> tuple[RoundSummary, list[str]]:
    """A round over TLS with real clients; the one with the last id vanishes at the share
    stage; the endpoint is scraped as the unmask stage starts and after the round."""
    scrapes: list[str] = []
    tasks: dict[int, asyncio.Task[object]] = {}

    async def on_stage(round_id: int, stage: str) -> None:
        if stage == "share":
            tasks[METRIC_IDS[-1]].cancel()
            await asyncio.sleep(0.2)  # its stream closes: a disconnection, not a late message
        if stage == "unmask":
            scrapes.append(await asyncio.to_thread(_scrape, endpoint))

    config = local.config
    coordinator = make_coordinator(
        config, ledger=Ledger(":memory:"), on_stage=on_stage, metrics=metrics
    )
    port = await coordinator.start()
    for c in METRIC_IDS:
        tasks[c] = asyncio.create_task(_client(local, c, port, rounds=1).run())
    assert await coordinator.wait_for_clients(len(METRIC_IDS), 30)
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    scrapes.append(await asyncio.to_thread(_scrape, endpoint))
    await coordinator.stop()
    return summary, scrapes


def _scrape(endpoint: MetricsEndpoint) -> str:
    with urllib.request.urlopen(endpoint.url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_during_and_after_a_real_round_shows_what_the_operator_needs(
    tmp_path: Path,
) -> None:
    deployment = create_deployment(tmp_path, len(METRIC_IDS), first_id=METRIC_IDS[0])
    config_path = write_config(tmp_path, deployment, clients=len(METRIC_IDS))
    local = Local(tmp_path, deployment, config_path)
    metrics = CoordinatorMetrics()
    with serve_metrics(metrics, "127.0.0.1", 0) as endpoint:
        summary, (during, after) = asyncio.run(_metered_round(local, endpoint, metrics))
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.dropped[METRIC_IDS[-1]] == ("share", "disconnected")

    now = _samples(during)
    assert now[("secagg_rounds_started_total", frozenset())] == 1
    assert now[("secagg_rounds_total", frozenset({("outcome", "completed")}))] == 0
    assert now[("secagg_connected_clients", frozenset())] == len(METRIC_IDS) - 1
    stages_so_far = {
        dict(labels)["stage"] for (name, labels) in now if name == "secagg_stage_clients"
    }
    assert stages_so_far == {"commit", "reveal", "advertise", "share", "masked-input"}

    done = _samples(after)
    assert done[("secagg_rounds_total", frozenset({("outcome", "completed")}))] == 1

    def clients(stage: str, status: str) -> float:
        return done[("secagg_stage_clients", frozenset({("stage", stage), ("status", status)}))]

    assert clients("commit", "expected") == clients("commit", "answered") == 6
    assert clients("masked-input", "expected") == 5 and clients("unmask", "answered") == 5
    drops = frozenset({("stage", "share"), ("reason", "disconnected")})
    assert done[("secagg_client_drops_total", drops)] == 1
    for stage in ("commit", "reveal", "advertise", "share", "masked-input", "unmask"):
        count = done[("secagg_stage_duration_seconds_count", frozenset({("stage", stage)}))]
        assert count == 1, stage
    assert done[("secagg_unmasking_seconds_count", frozenset())] == 1
    assert done[("secagg_shamir_reconstruction_seconds_count", frozenset())] == 1
    sent = {
        (dict(labels)["direction"], dict(labels)["type"]): v
        for (name, labels), v in done.items()
        if name == "secagg_message_bytes_total"
    }
    for kind in ("hello", "commitment", "reveal", "advertise-keys", "masked-input"):
        assert sent[("up", kind)] > 0, kind
    for kind in ("challenge", "welcome", "task", "peer-keys", "unmask-request", "round-end"):
        assert sent[("down", kind)] > 0, kind
    # The model travels in the Task frames: 4 bytes per parameter to each client.
    assert sent[("down", "task")] >= 4 * DIM * len(METRIC_IDS)

    # Never a client id, in a label or anywhere else in the text.
    for text in (during, after):
        for line in text.splitlines():
            shown = line if line.startswith("#") else line.rsplit(" ", 1)[0]
            assert not any(str(c) in shown for c in METRIC_IDS), line
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                assert not {"client", "client_id"} & set(sample.labels)

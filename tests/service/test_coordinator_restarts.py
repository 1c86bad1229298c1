"""A deployment survives its operator (issue 20, item 1).

One set of real ``secagg join`` processes lives through a coordinator (``secagg serve``)
stopped with SIGINT or SIGTERM, or killed with SIGKILL, at every point of a round: before its
tasks go out, while its clients train, and once the clients have answered each stage. The
coordinator holds its round at the chosen point (the test-only ``SECAGG_TEST_HOLD``,
``secagg.service.testhooks``), so the signal lands there however busy the machine is; then
a new coordinator starts on the same port and ledger. What the operator sees is asserted:
every client process still alive, no traceback anywhere, each interrupted round recorded
aborted (where, and why), then rounds that complete with every client and the exact mean.

A network that resets every stream at each stage (a TCP proxy between the clients and an
in-process coordinator) is the same to the clients: they reconnect and the next round takes
all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable

import numpy as np
import pytest

from secagg.ledger import RECOVERED_REASON, Ledger, LedgerRound
from secagg.protocol.runner import RoundOutcome
from secagg.service.run import make_coordinator
from secagg.service.testhooks import HELD_LINE
from tests.ports import free_port
from tests.service.conftest import CLIENTS, DIM, Local, expected_mean, write_config
from tests.service.test_processes import _serve
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

# Where the coordinator is held, in the order of a round, and the stage each point is in.
HOLDS = {
    "task": "commit",
    "training": "commit",
    "commit": "commit",
    "reveal": "reveal",
    "advertise": "advertise",
    "share": "share",
    "masked-input": "masked-input",
    "unmask": "unmask",
}
# Half the clients train for a while, so that a coordinator held at "training" is stopped
# while they are inside their update callback (the others have answered by then).
SLOW = {0: 1.0, 1: 1.0, 2: 1.0}
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


def _start_clients(local: Local, port: int) -> None:
    local.config_path = write_config(local.root, local.deployment, stage_timeout=60.0)
    for c in range(CLIENTS):
        local.start_client(c, f"127.0.0.1:{port}", train_seconds=SLOW.get(c))


def _coordinator_log(local: Local) -> str:
    path = local.root / "coordinator.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _assert_clients_alive(local: Local) -> None:
    gone = {c: p.returncode for c, p in local.processes.items() if p.poll() is not None}
    assert not gone, (gone, local.client_logs())


def _stop_at_every_point(local: Local, port: int, signals: Callable[[int], signal.Signals]) -> None:
    """A coordinator per point of ``HOLDS``, each held there and sent ``signals(i)``."""
    for i, point in enumerate(HOLDS):
        coordinator = _serve(local, port, rounds=1, hold=point)
        try:
            wait_until(
                lambda n=i: _coordinator_log(local).count(HELD_LINE) > n,
                f"held at {point}",
                timeout=180,
                interval=0.1,
            )
            sig = signals(i)
            coordinator.send_signal(sig)
            assert coordinator.wait(timeout=60) == EXIT[sig], _coordinator_log(local)
        finally:
            if coordinator.poll() is None:
                coordinator.kill()
                coordinator.wait()
        _assert_clients_alive(local)


def _finish(local: Local, port: int, rounds: int = 2) -> list[LedgerRound]:
    """A coordinator left alone: its rounds complete; the ledger's rounds."""
    coordinator = _serve(local, port, rounds=rounds)
    try:
        assert coordinator.wait(timeout=180) == 0, _coordinator_log(local)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
    _assert_clients_alive(local)
    logs = local.client_logs() + _coordinator_log(local)
    assert "Traceback" not in logs and "InvalidStateError" not in logs
    with Ledger.open_readonly(local.config.ledger) as ledger:
        records = ledger.rounds()
        for record in records[len(HOLDS) :]:
            assert record.outcome is RoundOutcome.COMPLETED, record.abort_reason
            assert record.included == tuple(range(CLIENTS)) and record.drops == ()
            # The step is the round's place in the ledger: the clients never refuse it.
            exact = expected_mean(record.included, step=record.round_id - 1)
            error = np.max(np.abs(ledger.aggregate(record.round_id) - exact))
            assert error <= local.config.params.quantizer.error_bound()
    assert len(records) == len(HOLDS) + rounds
    return records


def test_clients_survive_a_coordinator_stopped_at_every_stage_and_rejoin_its_successor(
    local: Local,
) -> None:
    port = free_port()
    _start_clients(local, port)
    # Ctrl-C and SIGTERM in turn: both are a clean stop of serve (exit 130, 143).
    _stop_at_every_point(local, port, lambda i: (signal.SIGINT, signal.SIGTERM)[i % 2])
    records = _finish(local, port)
    for record, stage in zip(records, HOLDS.values(), strict=False):
        assert record.outcome is RoundOutcome.ABORTED
        assert record.abort_reason == f"aborted at {stage}: the coordinator was stopped"
        assert record.drops == ()


def test_clients_survive_a_coordinator_killed_at_every_stage_and_rejoin_its_successor(
    local: Local,
) -> None:
    port = free_port()
    _start_clients(local, port)
    _stop_at_every_point(local, port, lambda i: signal.SIGKILL)
    records = _finish(local, port)
    for record in records[: len(HOLDS)]:
        # Each successor found its predecessor's round running, and aborted it.
        assert record.outcome is RoundOutcome.ABORTED
        assert record.abort_reason == RECOVERED_REASON
    coordinator_log = _coordinator_log(local)
    assert coordinator_log.count("were left running by a previous coordinator") == len(HOLDS)


# ----------------------------------------------------------------- a network that resets


class _ResettingProxy:
    """A TCP proxy on loopback whose ``reset()`` ends every connection through it with a
    TCP reset, as a network or a load balancer may."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.resets = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._pairs.append((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def reset(self) -> None:
        for pair in self._pairs:
            for writer in pair:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):  # linger 0: close sends a reset
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                writer.transport.abort()
        self._pairs.clear()
        self.resets += 1

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _resets_at_every_stage(local: Local) -> tuple[list[LedgerRound], int]:
    ledger = Ledger(local.config.ledger)
    stages = ["commit", "reveal", "advertise", "share", "masked-input", "unmask"]
    proxy: _ResettingProxy | None = None

    def on_stage(round_id: int, stage: str) -> None:
        # Round i resets every stream as its i-th stage starts; the last round is left alone.
        if proxy is not None and round_id <= len(stages) and stage == stages[round_id - 1]:
            proxy.reset()

    coordinator = make_coordinator(local.config, ledger=ledger, on_stage=on_stage)
    port = await coordinator.start()
    proxy = _ResettingProxy(port)
    target = f"127.0.0.1:{await proxy.start()}"
    for c in range(CLIENTS):
        local.start_client(c, target)
    model = np.zeros(DIM, dtype=np.float32)
    try:
        for step in range(len(stages) + 1):
            assert await coordinator.wait_for_clients(CLIENTS, 180), local.client_logs()
            await coordinator.run_round(model, step=step, cohort=tuple(range(CLIENTS)))
    finally:
        await coordinator.stop()
        await proxy.stop()
    return ledger.rounds(), proxy.resets


def test_a_network_that_resets_every_stream_at_any_stage_loses_no_client(local: Local) -> None:
    local.config_path = write_config(
        local.root, local.deployment, stage_timeout=60.0, min_clients=CLIENTS
    )
    records, resets = asyncio.run(_resets_at_every_stage(local))
    *reset, last = records
    assert resets == len(reset) + 1  # (and once more as the proxy stopped)
    for record in reset:
        assert record.outcome is RoundOutcome.ABORTED  # every client was dropped
        assert {d.reason for d in record.drops} == {"disconnected"}
    assert last.outcome is RoundOutcome.COMPLETED
    assert last.included == tuple(range(CLIENTS))
    _assert_clients_alive(local)
    assert "Traceback" not in local.client_logs()

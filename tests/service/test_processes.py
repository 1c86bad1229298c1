"""Real client processes (``python -m secagg join``) over TLS on loopback, killed with
SIGKILL at every stage; a real coordinator process killed and restarted mid-round (at every
stage, stopped or killed, with one set of clients throughout: test_coordinator_restarts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest

from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.service.coordinator import RoundSummary
from secagg.service.run import make_coordinator, start_client_process
from secagg.service.testhooks import HOLD_ENV
from tests.ports import free_port
from tests.service.conftest import CLIENTS, DIM, Local, expected_mean, write_config
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)


async def _round_killing(local: Local, kills: dict[int, str]) -> tuple[RoundSummary, Ledger]:
    """All clients start as processes; ``kills`` says which to SIGKILL at which stage."""
    ledger = Ledger(local.config.ledger)

    def on_stage(round_id: int, stage: str) -> None:
        for client, at in kills.items():
            if at == stage:
                local.kill(client)

    coordinator = make_coordinator(local.config, ledger=ledger, on_stage=on_stage)
    port = await coordinator.start()
    for c in range(CLIENTS):
        local.start_client(c, f"127.0.0.1:{port}")
    assert await coordinator.wait_for_clients(CLIENTS, 60), local.client_logs()
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await coordinator.stop()
    return summary, ledger


@pytest.mark.parametrize("stage", ["advertise", "share", "masked-input", "unmask"])
def test_a_client_killed_at_any_stage_leaves_an_exact_mean_of_the_included(
    local: Local, stage: str
) -> None:
    summary, ledger = asyncio.run(_round_killing(local, {3: stage}))
    assert summary.outcome == "completed", summary.abort_reason
    expected_included = tuple(range(CLIENTS)) if stage == "unmask" else (0, 1, 2, 4, 5)
    assert summary.included == expected_included
    assert summary.dropped[3][0] == stage
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    assert np.max(np.abs(summary.aggregate - expected_mean(summary.included))) <= bound
    record = ledger.round(summary.round_id)
    assert [(d.client_id, d.stage) for d in record.drops] == [(3, stage)]


def test_too_many_killed_clients_abort_the_round_with_no_aggregate_and_a_reason(
    local: Local,
) -> None:
    summary, ledger = asyncio.run(
        _round_killing(
            local, {0: "masked-input", 1: "masked-input", 2: "masked-input", 3: "unmask"}
        )
    )
    assert summary.outcome == "aborted"
    assert summary.aggregate is None
    record = ledger.round(summary.round_id)
    assert record.outcome is RoundOutcome.ABORTED
    assert not record.has_aggregate
    # The reason names the cause first (who dropped where), then the protocol's words.
    assert record.abort_reason is not None
    # (Where it aborts depends on the graph of the round: at masked-input, or at unmask.)
    assert re.match(
        r"aborted at (masked-input|unmask): 3 clients disconnected at masked-input; ",
        record.abort_reason,
    ), record.abort_reason
    assert summary.abort_reason == record.abort_reason


def _serve(
    local: Local, port: int, rounds: int, *, hold: str | None = None
) -> subprocess.Popen[bytes]:
    """``secagg serve`` for every client of the deployment; with ``hold``, its first round
    holds at that point (``secagg.service.testhooks``) until the test signals it."""
    env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
    if hold is not None:
        env[HOLD_ENV] = hold
    log = open(local.root / "coordinator.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secagg",
            "serve",
            "--config",
            str(local.config_path),
            "--port",
            str(port),
            "--rounds",
            str(rounds),
            "--min-clients",
            str(CLIENTS),
            # However busy the machine, every client gets its connection in.
            "--cohort-wait",
            "180",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    log.close()
    return process


def _silent_client(
    local: Local, client_id: int, port: int, stop: threading.Event, failures: list[str]
) -> None:
    """Authenticates as ``client_id`` and then never answers: the round stalls on it. The
    coordinator may not listen yet when it starts (its ledger is created first): it tries
    again until it is in; what kept it out is left in ``failures`` for the test's message."""

    async def session() -> None:
        from tests.service.test_coordinator import RawClient

        while not stop.is_set():
            raw = RawClient(local, client_id, port)
            try:
                await raw.hello()
            except Exception as exc:  # refused, reset: the coordinator is not there yet
                failures.append(f"{type(exc).__name__}: {exc}")
                await raw.channel.close()
                await asyncio.sleep(0.2)
                continue
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await raw.channel.close()
            return

    with contextlib.suppress(Exception):  # the coordinator is killed under it, by design
        asyncio.run(session())


def test_coordinator_killed_mid_round_restarts_with_the_round_aborted_and_clients_rejoining(
    local: Local,
) -> None:
    port = free_port()
    ledger_path = local.config.ledger
    coordinator = _serve(local, port, rounds=1)
    for c in range(CLIENTS - 1):
        local.start_client(c, f"127.0.0.1:{port}")
    silent = CLIENTS - 1
    stop = threading.Event()
    wait_until(lambda: ledger_path.exists(), "the coordinator")
    failures: list[str] = []
    thread = threading.Thread(target=_silent_client, args=(local, silent, port, stop, failures))
    thread.start()

    def running() -> bool:
        with Ledger.open_readonly(ledger_path) as ledger:
            return any(r.outcome is RoundOutcome.RUNNING for r in ledger.rounds())

    try:
        wait_until(
            running,
            lambda: f"a running round (the silent client's failed tries: {failures[-3:]})",
            timeout=180,
            interval=0.1,
        )
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
    finally:
        stop.set()
        thread.join()

    restarted = _serve(local, port, rounds=1)
    local.start_client(silent, f"127.0.0.1:{port}")
    try:
        assert restarted.wait(timeout=120) == 0, (local.root / "coordinator.log").read_text()
    finally:
        if restarted.poll() is None:
            restarted.kill()
    with Ledger.open_readonly(ledger_path) as ledger:
        first, second = ledger.rounds()
        aggregate = ledger.aggregate(second.round_id)
    assert first.outcome is RoundOutcome.ABORTED
    assert first.abort_reason is not None and "restarted" in first.abort_reason
    assert second.outcome is RoundOutcome.COMPLETED
    assert second.session_id != first.session_id
    assert set(second.included) == set(range(CLIENTS))
    bound = local.config.params.quantizer.error_bound()
    # The restarted coordinator's step is the round's place in the ledger (step 1).
    assert np.max(np.abs(aggregate - expected_mean(second.included, step=1))) <= bound
    logs = local.client_logs() + (local.root / "coordinator.log").read_text()
    assert "Traceback" not in logs


# ----------------------------------------------------------------- long stages, frozen clients


async def _round_with_processes(
    local: Local,
    *,
    slow: dict[int, float] | None = None,
    on_stage: Callable[[int, str], None] | None = None,
) -> RoundSummary:
    """One round with every client a `secagg join` process; ``slow`` maps a client to the
    seconds its update callback trains."""
    coordinator = make_coordinator(local.config, ledger=Ledger(":memory:"), on_stage=on_stage)
    port = await coordinator.start()
    clients = local.config.params.max_clients
    for c in range(clients):
        local.processes[c] = start_client_process(
            local.config_path,
            local.deployment.identities[c],
            f"127.0.0.1:{port}",
            local.root / f"client-{c}.log",
            rounds=1,
            train_seconds=(slow or {}).get(c),
        )
    assert await coordinator.wait_for_clients(clients, 60), local.client_logs()
    summary = await coordinator.run_round(np.zeros(DIM, dtype=np.float32))
    await coordinator.stop()
    return summary


@pytest.mark.timeout(200)
def test_a_client_that_trains_longer_than_grpc_allows_an_idle_stream_completes_its_round(
    local: Local,
) -> None:
    # Every stream is idle for 50 s: the slow client's while it trains, the others' while
    # they wait for the commit stage to close. A client pings every 10 s, and by default a
    # gRPC server counts a ping without data within five minutes as a strike and cuts the
    # stream after two (by about 30 s): the coordinator must permit the pings all that time.
    local.config_path = write_config(local.root, local.deployment, stage_timeout=70.0, clients=4)
    summary = asyncio.run(_round_with_processes(local, slow={2: 50.0}))
    logs = local.client_logs()
    assert summary.outcome == "completed", (summary.abort_reason, logs)
    assert summary.included == (0, 1, 2, 3) and not summary.dropped
    # The stage really was that long (what makes this test mean something); it completed
    # within the stage's deadline since no one was dropped.
    assert summary.stage_seconds["commit"] >= 50.0
    assert "too_many_pings" not in logs and "GOAWAY" not in logs
    for process in local.processes.values():
        assert process.wait(timeout=30) == 0, logs


def test_a_frozen_client_is_dropped_as_disconnected_not_at_the_stage_deadline(
    local: Local,
) -> None:
    frozen = 3

    def on_stage(round_id: int, stage: str) -> None:
        if stage == "advertise":
            local.kill(frozen, signal.SIGSTOP)  # alive to the kernel, silent to everyone

    local.config_path = write_config(local.root, local.deployment, stage_timeout=60.0)
    try:
        summary = asyncio.run(_round_with_processes(local, on_stage=on_stage))
    finally:
        local.kill(frozen, signal.SIGCONT)
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.dropped[frozen] == ("advertise", "disconnected")
    # Found by the coordinator's keepalive pings (every 2 s, 3 s to answer): "disconnected",
    # where the 60 s stage deadline (or the ~68 s TCP keepalive of the old defaults) would
    # have dropped it as having missed the stage.
    assert summary.included == tuple(c for c in range(CLIENTS) if c != frozen)

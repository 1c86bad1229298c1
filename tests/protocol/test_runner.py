"""The round engine's one record and its listener: what every transport's report is a view of.

Time comes from a clock that ticks once per call, so the stage times are exact counts of the
engine's clock reads, never wall time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from secagg.errors import DropReason, UsageError
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.runner import (
    ByteMeter,
    Drop,
    RoundListener,
    RoundOutcome,
    RoundRecord,
    RoundRun,
)
from secagg.protocol.stages import Stage
from secagg.schemes.base import Scheme
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.plaintext import PlaintextScheme

DIM = 4


class Heard(RoundListener):
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def stage_opened(self, stage: Stage) -> None:
        self.events.append(("opened", stage))

    def stage_closed(self, stage: Stage, seconds: float, closing: float) -> None:
        self.events.append(("closed", stage, seconds, closing))

    def dropped(self, drop: Drop) -> None:
        self.events.append(("dropped", drop.client_id, drop.stage, drop.reason))

    def ended(self, record: RoundRecord) -> None:
        self.events.append(("ended", record.outcome))


def ticks() -> itertools.count[float]:
    return itertools.count(0.0, 1.0)


def drive(
    scheme: Scheme,
    n: int,
    *,
    silent: dict[Stage, set[int]] | None = None,
    listener: RoundListener | None = None,
) -> RoundRecord:
    """A round over an in-memory transport that counts every message into the meter."""
    silent = silent or {}
    config = scheme.round_config(range(n), nonce=bytes(16))
    root = DeterministicRandomness(bytes(32))
    clients = {i: scheme.client(config, i, root.fork(f"client/{i}")) for i in range(n)}
    for i, client in clients.items():
        client.set_input(np.full(DIM, 0.1 * (i + 1)), 1)
    clock = ticks()
    run = RoundRun(
        scheme.server(config),
        listener=listener or RoundListener(),
        clock=lambda: next(clock),
    )
    for stage, outgoing in run.stages():
        for i, message in outgoing.items():
            data = message.encode()
            run.meter.sent(i, len(data))
            if i in silent.get(stage, set()):
                continue
            reply = clients[i].receive(message)
            if reply is not None:
                answer = reply.encode()
                run.meter.received(i, len(answer))
                run.server.receive(i, answer)
    return run.record


def test_a_completed_round_is_one_record() -> None:
    heard = Heard()
    record = drive(PlaintextScheme(dim=DIM), 3, silent={Stage.UPLOAD: {1}}, listener=heard)
    assert record.outcome is RoundOutcome.COMPLETED and record.completed
    assert record.abort is None
    assert record.included == (0, 2)
    assert record.aggregate is not None and record.aggregate.included == (0, 2)
    assert dict(record.drops) == {1: Drop(1, Stage.UPLOAD, DropReason.MISSED_UPLOAD)}
    # Clock reads: start (0), stage open (1), close begins (2), close ends (3), end (4).
    assert dict(record.stage_seconds) == {Stage.UPLOAD: 2.0}
    assert record.seconds == 4.0
    assert record.attempts is None  # plaintext has no commit-reveal attempts
    assert heard.events == [
        ("opened", Stage.UPLOAD),
        ("closed", Stage.UPLOAD, 2.0, 1.0),
        ("dropped", 1, Stage.UPLOAD, DropReason.MISSED_UPLOAD),
        ("ended", RoundOutcome.COMPLETED),
    ]
    # Every client was sent the configuration; the silent one sent nothing back.
    assert record.bytes_down.keys() == {0, 1, 2}
    assert record.bytes_up.keys() == {0, 2}
    up, down = record.bytes_per_client([0, 2])
    assert up == (record.bytes_up[0] + record.bytes_up[2]) / 2
    assert down == (record.bytes_down[0] + record.bytes_down[2]) / 2
    assert record.bytes_per_client([]) == (0.0, 0.0)


def test_an_aborted_round_records_why_and_reveals_nothing() -> None:
    params = Params(dim=DIM, max_clients=5, clip=1.0)
    heard = Heard()
    scheme = MaskingScheme(params)
    # Every client but one goes quiet at masked input: fewer than t remain.
    record = drive(scheme, 5, silent={Stage.MASKED_INPUT: {0, 1, 2, 3}}, listener=heard)
    assert record.outcome is RoundOutcome.ABORTED and not record.completed
    assert record.abort is not None and record.aggregate is None and record.included == ()
    assert record.attempts == 1
    assert sorted(record.drops) == [0, 1, 2, 3]
    assert {d.reason for d in record.drops.values()} == {DropReason.MISSED_MASKED_INPUT}
    dropped = [e for e in heard.events if e[0] == "dropped"]
    assert [e[1] for e in dropped] == [0, 1, 2, 3]  # each once, in client order
    assert heard.events[-1] == ("ended", RoundOutcome.ABORTED)
    closed = [e[1] for e in heard.events if e[0] == "closed"]
    assert closed == list(record.stage_seconds)  # a stage per close, in the order run


def test_the_record_is_only_there_once_the_round_ended() -> None:
    scheme = PlaintextScheme(dim=DIM)
    run = RoundRun(scheme.server(scheme.round_config(range(2), nonce=bytes(16))))
    with pytest.raises(UsageError, match="has not ended"):
        _ = run.record


def test_a_record_holds_its_invariants() -> None:
    with pytest.raises(UsageError, match="when the round has ended"):
        RoundRecord(
            RoundOutcome.RUNNING, None, (), {}, {}, 0.0, None, None, bytes_up={}, bytes_down={}
        )
    with pytest.raises(UsageError, match="a completed round has an aggregate"):
        RoundRecord(
            RoundOutcome.COMPLETED, None, (), {}, {}, 0.0, None, None, bytes_up={}, bytes_down={}
        )


def test_the_meter_adds() -> None:
    meter = ByteMeter()
    meter.sent(3, 10)
    meter.sent(3, 5)
    meter.received(3, 7)
    assert meter.down == {3: 15} and meter.up == {3: 7}

"""A session's rounds driven by the one round engine (``RoundRun``), as every transport drives
a one-shot round: ``SessionRound`` is a ``RoundServer``.

Specification: the first round of a session runs the set-up's four stages and then the
round's (its set-up shares carry round 1's task, so no exchange is added); every later round
runs two stages (three in active mode); each round's record is exact for exactly its included
clients and holds the set-up's drops in the first round; a session that has ended is refused.
"""

from __future__ import annotations

import pytest

from secagg.errors import ClientAbort, DropReason, UsageError
from secagg.protocol.runner import RoundOutcome, RoundRecord, RoundRun
from secagg.protocol.stages import Stage
from secagg.schemes.masking.session.round import SessionRound
from tests.sessions.cohort import Cohort, task_of


def _run(
    cohort: Cohort, r: int, silent: dict[int, Stage] | None = None
) -> tuple[RoundRecord, list[Stage], dict[int, list[int]]]:
    """One round through the engine; clients in ``silent`` stop answering at that stage."""
    silent = silent or {}
    gone: set[int] = set()
    updates = cohort.updates()
    run = RoundRun(SessionRound(cohort.server, task_of(r)))
    stages = []
    for stage, outgoing in run.stages():
        stages.append(stage)
        for u, message in sorted(outgoing.items()):
            client = cohort.clients[u]
            if u in gone or silent.get(u) is stage:
                gone.add(u)
                continue
            if client.needs_input(message):
                values, weight = updates[u]
                client.set_input(values, weight, task_of(r))
            try:
                answer = client.receive(message.encode())
            except ClientAbort:
                continue
            if answer is not None:
                run.server.receive(u, answer.encode())
    expected = {
        u: cohort.expected_ring_sum(updates, run.record.included) for u in run.record.included
    }
    return run.record, stages, expected


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_the_first_round_sets_up_and_later_rounds_take_two_stages(active: bool) -> None:
    cohort = Cohort(9, threshold=5 if active else 3, active=active)
    record, stages, expected = _run(cohort, 1)
    assert stages == [
        Stage.COMMIT,
        Stage.REVEAL,
        Stage.ADVERTISE,
        Stage.SHARE,
        Stage.MASKED_INPUT,
        *([Stage.CONSISTENCY] if active else []),
        Stage.UNMASK,
    ]
    assert record.outcome is RoundOutcome.COMPLETED
    for r in (2, 3):
        record, stages, expected = _run(cohort, r)
        assert stages == [
            Stage.MASKED_INPUT,
            *([Stage.CONSISTENCY] if active else []),
            Stage.UNMASK,
        ]
        assert record.aggregate is not None and record.aggregate.ring_total is not None
        total = [int(v) for v in record.aggregate.ring_total]
        assert all(total == e for e in expected.values())


def test_the_first_rounds_record_holds_the_set_ups_drops() -> None:
    cohort = Cohort(9)
    record, _, expected = _run(cohort, 1, {2: Stage.ADVERTISE, 5: Stage.MASKED_INPUT})
    assert set(record.drops) == {2, 5}
    assert record.drops[2].stage is Stage.ADVERTISE
    assert record.drops[5].stage is Stage.MASKED_INPUT
    assert record.included == tuple(u for u in range(9) if u not in (2, 5))
    assert record.aggregate is not None and record.aggregate.ring_total is not None
    assert [int(v) for v in record.aggregate.ring_total] == expected[0]


def test_a_round_of_an_ended_session_is_refused() -> None:
    cohort = Cohort(6, threshold=4)
    record, _, _ = _run(
        cohort, 1, {0: Stage.MASKED_INPUT, 1: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT}
    )
    assert record.outcome is RoundOutcome.ABORTED
    with pytest.raises(UsageError, match="the session has ended"):
        SessionRound(cohort.server, task_of(2))


def test_a_client_the_transport_drops_is_no_longer_waited_for() -> None:
    """A disconnected client is dropped by its transport: the stage then waits only for the
    others (a driver closes it as soon as nobody is left to wait for, not at its deadline)."""
    cohort = Cohort(6)
    cohort.local.set_up()
    session_round = SessionRound(cohort.server, task_of(1))
    session_round.start()
    assert session_round.stage is Stage.MASKED_INPUT
    assert session_round.waiting_for() == frozenset(range(6))
    session_round.drop(2, DropReason.DISCONNECTED, "killed")
    assert session_round.waiting_for() == frozenset(range(6)) - {2}

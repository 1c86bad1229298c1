"""Rounds of a session, honestly run: set up once, then two messages a round (three in active
mode), each round's sum exactly the plaintext sum of exactly the clients it includes.

Specification: the set-up costs each client four messages up and the round two (three in
active mode); every round's revealed ring sum is the sum of exactly its included inputs,
whoever dropped at whatever stage of whatever round; a client that fell silent in round r is
not in round r + 1's live set of anyone, and its neighbours hold it dead; a client whose live
neighbours fall below k_min leaves rather than send, and the server says the session needs a
new set-up; a round that cannot be unmasked aborts before anyone reveals a share.
"""

from __future__ import annotations

import dataclasses
import gc
import types

import pytest

from secagg.errors import AbortReason, ClientAbort, DropReason, RoundAborted
from secagg.protocol.codec import Message, decode
from secagg.protocol.stages import Stage
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    RoundMessage,
    RoundTask,
    SessionUnmaskRequest,
)
from tests.sessions.cohort import Cohort, task_of


def _ring_sum(cohort: Cohort, result_total: object) -> list[int]:
    return [int(v) for v in result_total]  # type: ignore[attr-defined]


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("degree", [None, 6], ids=["complete", "secagg+"])
def test_every_round_reveals_exactly_the_sum_of_its_included_inputs(
    active: bool, degree: int | None
) -> None:
    cohort = Cohort(12, degree=degree, threshold=4, active=active)
    cohort.local.set_up()
    silent = {2: {3: Stage.MASKED_INPUT}, 3: {7: Stage.UNMASK}, 4: {}}
    if active:
        silent[4] = {9: Stage.CONSISTENCY}
    seen = []
    for r in (1, 2, 3, 4):
        updates = cohort.updates()
        result = cohort.local.run_round(task_of(r), updates, silent.get(r, {}))
        total = result.aggregate.ring_total
        assert total is not None
        assert _ring_sum(cohort, total) == cohort.expected_ring_sum(updates, result.included)
        seen.append(result.included)
    assert 3 not in seen[1]  # silent before its round-2 message: not in the sum
    assert 7 in seen[2] and 7 not in seen[3]  # in round 3's sum; gone from round 4
    assert cohort.server.round_number == 4


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_a_round_costs_two_messages_up_three_in_active_mode(active: bool) -> None:
    cohort = Cohort(8, threshold=5 if active else 3, active=active)
    cohort.local.set_up()
    setup_up = cohort.local.messages_up
    assert setup_up == 8 * 4  # commitment, reveal, keys, set-up shares
    for r in (1, 2, 3):
        before = cohort.local.messages_up
        cohort.local.run_round(task_of(r), cohort.updates())
        assert cohort.local.messages_up - before == 8 * (3 if active else 2)


def test_a_silent_client_is_dead_to_its_neighbours_for_the_rest_of_the_session() -> None:
    cohort = Cohort(8)
    cohort.local.set_up()
    cohort.local.run_round(task_of(1), cohort.updates(), {5: Stage.MASKED_INPUT})
    for u, client in cohort.clients.items():
        if u != 5:
            assert 5 in client.dead
            assert 5 not in client.live
    assert 5 not in cohort.server.members


def test_a_client_below_k_min_leaves_and_the_server_asks_for_a_new_set_up() -> None:
    cohort = Cohort(8, threshold=3, min_live_neighbours=5)
    cohort.local.set_up()
    cohort.local.run_round(
        task_of(1),
        cohort.updates(),
        {1: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT, 3: Stage.MASKED_INPUT},
    )
    why = cohort.server.needs_setup()
    assert why is not None and "fewer than 5" in why
    with pytest.raises(Exception, match="cannot run another round"):
        cohort.server.open_round(task_of(2))


def test_a_round_that_cannot_be_unmasked_aborts_before_anyone_reveals() -> None:
    cohort = Cohort(6, threshold=4)
    cohort.local.set_up()
    with pytest.raises(RoundAborted, match="cannot be removed"):
        cohort.local.run_round(
            task_of(1),
            cohort.updates(),
            {0: Stage.MASKED_INPUT, 1: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT},
        )
    assert not cohort.local.transcript.answers  # nobody was asked
    assert cohort.server.ended is not None


def test_the_session_stops_at_its_round_cap() -> None:
    cohort = Cohort(6, max_rounds=2)
    cohort.local.set_up()
    cohort.local.run_round(task_of(1), cohort.updates())
    cohort.local.run_round(task_of(2), cohort.updates())
    assert cohort.server.needs_setup() == "the session has run its 2 rounds"


def test_set_up_dropouts_leave_the_rest_a_working_session() -> None:
    cohort = Cohort(10, degree=6, threshold=3)
    cohort.local.set_up({1: Stage.ADVERTISE, 4: Stage.SHARE})
    assert set(cohort.server.members) == set(range(10)) - {1, 4}
    updates = cohort.updates()
    result = cohort.local.run_round(task_of(1), updates)
    assert result.included == tuple(sorted(set(range(10)) - {1, 4}))
    total = result.aggregate.ring_total
    assert total is not None
    assert _ring_sum(cohort, total) == cohort.expected_ring_sum(updates, result.included)


def test_a_client_that_left_refuses_everything_after() -> None:
    cohort = Cohort(6)
    cohort.local.set_up()

    def wrong_round_for_client_0(u: int, message: Message) -> Message:
        if u == 0 and isinstance(message, RoundTask):
            return dataclasses.replace(message, round_number=9)
        return message

    cohort.local.round(task_of(1), cohort.updates(), wrong_round_for_client_0)
    assert cohort.local.refusals[0] is AbortReason.ROUND_OUT_OF_ORDER
    with pytest.raises(ClientAbort, match="has left the session"):
        cohort.clients[0].receive(RoundTask(cohort.server.session.session_id, 0, 2, task_of(2)))


def test_departures_past_the_budget_ask_for_a_new_set_up() -> None:
    """S5's budget: the graph's parameters hold for so many departures, so an honest server
    sets the cohort up again once more members have left (on a sparse graph, beyond it the
    honest survivors may no longer stay connected)."""
    cohort = Cohort(10)
    cohort.server = server = type(cohort.server)(
        cohort.terms, pki=cohort.pki, survivor_rule=cohort.rule, max_departures=2
    )
    cohort.local = type(cohort.local)(server, cohort.local.clients.__getitem__)
    cohort.local.set_up()
    cohort.local.run_round(task_of(1), cohort.updates(), {1: Stage.MASKED_INPUT})
    assert server.needs_setup() is None
    cohort.local.run_round(task_of(2), cohort.updates(), {2: Stage.MASKED_INPUT})
    assert server.needs_setup() is None
    cohort.local.run_round(task_of(3), cohort.updates(), {3: Stage.MASKED_INPUT})
    assert server.needs_setup() == "3 members have left; the graph's parameters cover 2"
    assert server.threshold_margin == 7 - 3  # 7 answered the unmask request, t = 3


def _objects_held(root: object) -> list[object]:
    """Every object reachable from ``root`` (what it keeps alive), code aside."""
    seen: set[int] = set()
    stack, held = [root], []
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type | types.ModuleType | types.FunctionType):
            continue  # (code and what it reaches: not the server's state)
        seen.add(id(o))
        held.append(o)
        stack.extend(gc.get_referents(o))
    return held


def test_the_server_keeps_no_masked_input_it_took_and_still_tells_a_retransmission() -> None:
    """A member's masked input is in the sum once taken: until the stage closes the server
    holds its digest, not the vector (the coordinator's memory in a session round is
    O(window x dim), not O(members x dim)); a byte-identical retransmission is ignored, a
    different second answer drops its sender."""
    cohort = Cohort(6, dim=20_000, threshold=3)
    server = cohort.server
    cohort.local.set_up()
    outgoing = server.open_round(task_of(1))
    updates = cohort.updates()
    answers: dict[int, bytes] = {}
    for u, message in sorted(outgoing.items()):
        client = cohort.clients[u]
        client.set_input(*updates[u], task_of(1))
        answer = client.receive(message.encode())
        assert answer is not None
        answers[u] = answer.encode()
        server.receive(u, answers[u])
    assert server.stage is Stage.MASKED_INPUT and not server.waiting_for()
    other = decode(answers[1])
    assert isinstance(other, RoundMessage)
    assert len(other.packed_vector) > 10_000
    assert max(len(o) for o in _objects_held(server) if isinstance(o, bytes)) < len(
        other.packed_vector
    )
    server.receive(0, answers[0])  # a retransmission
    assert 0 not in server.drops
    server.receive(1, dataclasses.replace(other, packed_vector=bytes(len(other.packed_vector))))
    assert server.drops[1].reason is DropReason.DUPLICATE


def test_between_rounds_the_server_keeps_no_unmask_request() -> None:
    """A closed round's unmask requests (a forwarded share for every member and neighbour,
    O(members x k)) are answered: between rounds the server holds none of them, only the
    members' keys and live neighbours for the next round."""
    cohort = Cohort(8, degree=4, threshold=3)
    cohort.local.set_up()
    for r in (1, 2):
        cohort.local.run_round(task_of(r), cohort.updates())
        assert cohort.server.between_rounds
        held = _objects_held(cohort.server)
        assert not [o for o in held if isinstance(o, SessionUnmaskRequest | ForwardedShare)]

"""Attacks on sessions that span rounds, each as docs/SESSIONS.md 4 lists it, asserting on what
the lying server recovers (``tests.sessions.loot.recovered``: every input it can open from
what it was sent) and on what the clients do.

Specification, in the document's words: a dropout only ever opens a key that covers one
round; a departed peer is dead for the session; round numbers only go forward, within the
caps; a round's messages are bound to the model the client trained; one answer per round and
one kind of share per peer; next-round keys come from their owner; a read of a client's state
opens one round; active mode refuses split survivor sets and sums below the minimum cohort of
honest inputs. Where semi-honest mode concedes an attack (a split view), the test shows
exactly what it yields.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.errors import AbortReason, CryptoError, RoundAborted
from secagg.hazmat import aead
from secagg.hazmat.keys import X25519KeyPair, x25519_public_from_private
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message
from secagg.schemes.masking.messages import PeerKeys
from secagg.schemes.masking.session import derivations
from secagg.schemes.masking.session.client import Between, Left, Masked, Signed
from secagg.schemes.masking.session.messages import (
    RoundTask,
    SessionSignature,
    SessionSurvivorList,
    SessionUnmaskRequest,
)
from secagg.schemes.masking.session.server import Member
from tests.sessions.cohort import Cohort, task_of
from tests.sessions.loot import encoded, pooled_shares, rebuild, recovered

Updates = Mapping[int, tuple[NDArray[np.float64], int]]


def _set_up(n: int = 8, **kwargs: object) -> Cohort:
    cohort = Cohort(n, **kwargs)  # type: ignore[arg-type]
    cohort.local.set_up()
    return cohort


def _honest_rounds(cohort: Cohort, rounds: range) -> dict[int, Updates]:
    played = {}
    for r in rounds:
        played[r] = cohort.updates()
        cohort.local.round(task_of(r), played[r])
    return played


def _loot(cohort: Cohort) -> dict[tuple[int, int], list[int]]:
    return {
        key: [int(v) for v in vector]
        for key, vector in recovered(cohort.local.transcript, cohort.config).items()
    }


def _input(cohort: Cohort, updates: Updates, u: int) -> list[int]:
    values, weight = updates[u]
    return encoded(values, weight, cohort.config)


# ------------------------------------------------------------------ the trap: one round only


def test_a_dropout_opens_its_own_round_only_never_an_earlier_input() -> None:
    """The design review's trap: client 3 survives rounds 1-2 (its self masks opened), sends
    round 3's message, then falls silent; round 4 drops it, so its neighbours reveal its
    round-4 mask key. With a session-long key that would open rounds 1-3; here it opens
    nothing, because round 4's key covers round 4 only, and 3 sent nothing in round 4."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 4))
    cohort.local.round(task_of(4), cohort.updates())
    _, keys = pooled_shares(cohort.local.transcript, 4)
    assert not keys  # nobody dropped in round 4 yet: make 3 drop in round 5
    cohort.local.round(task_of(5), cohort.updates(), lambda u, m: None if u == 3 else m)
    _, keys = pooled_shares(cohort.local.transcript, 5)
    assert len(keys[3]) >= cohort.config.threshold  # round 5's key of client 3 is rebuilt
    rebuilt = rebuild(keys[3], cohort.config.threshold, lambda k: True)
    assert rebuilt is not None
    announced = {r: cohort.local.transcript.members[r][3].mask_public for r in range(1, 6)}
    assert x25519_public_from_private(rebuilt) == announced[5]
    assert all(x25519_public_from_private(rebuilt) != announced[r] for r in range(1, 5))
    assert _loot(cohort) == {}


def test_held_shares_are_tagged_by_the_round_they_serve() -> None:
    """A2: client 5 sends round 2's message (announcing its round-3 key) and goes silent
    before unmasking: round 2 reveals its self-mask seed, round 3 its round-3 mask key, and
    no round reveals both secrets of one round."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    cohort.local.round(
        task_of(2),
        cohort.updates(),
        lambda u, m: None if u == 5 and isinstance(m, SessionUnmaskRequest) else m,
    )
    cohort.local.round(task_of(3), cohort.updates())
    seeds2, keys2 = pooled_shares(cohort.local.transcript, 2)
    seeds3, keys3 = pooled_shares(cohort.local.transcript, 3)
    assert 5 in seeds2 and 5 not in keys2
    assert 5 in keys3 and 5 not in seeds3
    t = cohort.config.threshold
    round3_key = cohort.local.transcript.round_messages[(2, 5)].next_mask_public
    assert rebuild(keys3[5], t, lambda k: x25519_public_from_private(k) == round3_key)
    round2_key = cohort.local.transcript.members[2][5].mask_public
    assert rebuild(keys3[5], t, lambda k: x25519_public_from_private(k) == round2_key) is None
    assert _loot(cohort) == {}


def test_neighbours_dropped_one_by_one_open_nothing_of_the_client() -> None:
    """4.1.4: one neighbour of client 0 dropped per round on a SecAgg+ graph: each opens the
    (0, neighbour) masks of the one round that neighbour sent nothing; no input of 0, nor of
    anyone, is ever open."""
    cohort = _set_up(14, degree=8, threshold=3, min_live_neighbours=3)
    neighbours = sorted(cohort.clients[0].live)
    for r, victim in enumerate(neighbours[:4], start=1):
        cohort.local.round(
            task_of(r), cohort.updates(), lambda u, m, v=victim: None if u == v else m
        )
    assert cohort.clients[0].dead >= set(neighbours[:4])
    assert _loot(cohort) == {}


# ------------------------------------------------------------------ dead is forever


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_departed_peer_listed_again_is_refused(active: bool) -> None:
    """4.1.1: client 2 drops in round 1; in round 2 the server lists it as a survivor again
    to its old neighbours. Each refuses (resurrected-id) and reveals nothing of round 2."""
    cohort = _set_up(8, threshold=5 if active else 3, active=active)
    cohort.local.round(task_of(1), cohort.updates(), lambda u, m: None if u == 2 else m)
    cohort.local.masked(task_of(2), cohort.updates())
    everyone = frozenset(range(8))
    sid = cohort.server.session.session_id
    for v in (0, 1, 3):
        lie: Message
        if active:  # the lie must first be signed
            lie = SessionSurvivorList(sid, v, 2, tuple(sorted(everyone)))
        else:
            request = cohort.local.request(v, everyone - {2})
            lie = dataclasses.replace(request, survivors=tuple(sorted((*request.survivors, 2))))
        assert cohort.local.ask(v, lie) is None
        assert cohort.local.refusals[v] is AbortReason.RESURRECTED_ID
    assert not [a for a in cohort.local.transcript.answers if a.round_number == 2]
    assert _loot(cohort) == {}


def test_a_survivor_set_with_a_departed_member_is_not_signed() -> None:
    """S10: S_r must lie within S_r-1; a set naming a member that left is not signed."""
    cohort = _set_up(8, threshold=5, active=True)
    cohort.local.round(task_of(1), cohort.updates(), lambda u, m: None if u == 6 else m)
    cohort.local.masked(task_of(2), cohort.updates())
    sid = cohort.server.session.session_id
    assert cohort.local.ask(0, SessionSurvivorList(sid, 0, 2, tuple(range(8)))) is None
    assert cohort.local.refusals[0] is AbortReason.RESURRECTED_ID


# ------------------------------------------------------------------ round numbers and caps


@pytest.mark.parametrize(
    ("round_number", "reason"),
    [
        (1, AbortReason.ROUND_OUT_OF_ORDER),  # replayed
        (0, AbortReason.ROUND_OUT_OF_ORDER),  # rolled back
        (4, AbortReason.ROUND_OUT_OF_ORDER),  # a gap
    ],
    ids=["replay", "rollback", "gap"],
)
def test_round_numbers_only_go_forward(round_number: int, reason: AbortReason) -> None:
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 3))
    sid = cohort.server.session.session_id
    client = cohort.clients[0]
    values, weight = cohort.updates()[0]
    client.set_input(values, weight, task_of(round_number))
    assert cohort.local.ask(0, RoundTask(sid, 0, round_number, task_of(round_number))) is None
    assert cohort.local.refusals[0] is reason
    assert (round_number, 0) not in cohort.local.transcript.round_messages or round_number < 3


def test_the_round_and_time_caps_are_the_clients_own() -> None:
    cohort = _set_up(6, max_rounds=2, max_seconds=100)
    _honest_rounds(cohort, range(1, 3))
    sid = cohort.server.session.session_id
    values, weight = cohort.updates()[0]
    cohort.clients[0].set_input(values, weight, task_of(3))
    assert cohort.local.ask(0, RoundTask(sid, 0, 3, task_of(3))) is None
    assert cohort.local.refusals[0] is AbortReason.SESSION_EXPIRED
    clock = [0.0]
    late = Cohort(6, max_seconds=100, clock=clock)
    late.local.set_up()
    clock[0] = 101.0
    values, weight = late.updates()[1]
    late.clients[1].set_input(values, weight, task_of(1))
    assert late.local.ask(1, RoundTask(late.server.session.session_id, 1, 1, task_of(1))) is None
    assert late.local.refusals[1] is AbortReason.SESSION_EXPIRED


# ------------------------------------------------------------------ one answer, one kind


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_both_shares_of_one_peer_through_two_requests(active: bool) -> None:
    """4.1.7: after a client answered round r (a self-mask share of client 4), a second
    request for round r listing 4 as dropped is refused: nothing more leaves."""
    cohort = _set_up(8, threshold=5 if active else 3, active=active)
    played = _honest_rounds(cohort, range(1, 2))
    del played
    request = cohort.local.request(0, frozenset(range(8)) - {4}, round_number=1)
    assert cohort.local.ask(0, request) is None
    assert cohort.local.refusals[0] is AbortReason.UNEXPECTED_MESSAGE
    assert _loot(cohort) == {}


def test_split_view_semi_honest_yields_the_victims_round_as_conceded() -> None:
    """4.1.3, conceded in semi-honest mode (as for one-shot rounds): half the victim's
    neighbours are told it dropped, the other half that it survived; the server opens that
    round's input of the victim, and no other input."""
    cohort = _set_up(8)
    played = _honest_rounds(cohort, range(1, 2))
    updates = cohort.updates()
    cohort.local.masked(task_of(2), updates)
    everyone = frozenset(range(8))
    for v in range(1, 8):
        survivors = everyone - {0} if v in (1, 2, 3) else everyone
        cohort.local.ask(v, cohort.local.request(v, survivors))
    loot = _loot(cohort)
    assert loot == {(0, 2): _input(cohort, updates, 0)}
    del played


def test_split_view_active_yields_nothing() -> None:
    """The same split in active mode: the two groups sign different histories; neither
    reaches the quorum on its own, so no client of either reveals anything."""
    cohort = _set_up(8, threshold=5, active=True)
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates())
    sid = cohort.server.session.session_id
    everyone = tuple(range(8))
    told: dict[int, tuple[int, ...]] = {
        v: tuple(u for u in everyone if u != 0) if v in (1, 2, 3, 4) else everyone for v in range(8)
    }
    signatures: dict[tuple[int, ...], dict[int, bytes]] = {}
    for v in range(8):
        answer = cohort.local.ask(v, SessionSurvivorList(sid, v, 2, told[v]))
        if isinstance(answer, SessionSignature):
            signatures.setdefault(told[v], {})[v] = answer.signature
    for v in range(8):
        if v in cohort.local.refusals:
            continue
        survivors = frozenset(told[v])
        cohort.local.ask(v, cohort.local.request(v, survivors, signatures=signatures[told[v]]))
    assert {r for r in cohort.local.refusals.values()} <= {AbortReason.BELOW_THRESHOLD}
    assert not [a for a in cohort.local.transcript.answers if a.round_number == 2]
    assert _loot(cohort) == {}


def test_a_late_masked_input_stays_masked() -> None:
    """4.1.5: the server withholds client 6's round message, has its key shares revealed as
    for a dropout, then 'receives' the message: it holds y and the round key, never the
    self-mask seed, and opens nothing."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates(), withhold=frozenset({6}))
    for v in range(8):
        if v != 6:
            cohort.local.ask(v, cohort.local.request(v, frozenset(range(8)) - {6}))
    _, keys = pooled_shares(cohort.local.transcript, 2)
    assert len(keys[6]) >= cohort.config.threshold
    assert (2, 6) in cohort.local.transcript.round_messages
    assert _loot(cohort) == {}


def test_too_few_surviving_neighbours_in_a_request_is_refused() -> None:
    """V3/V12 (S13): a request naming fewer than t survivors is refused before anything is
    revealed (a server cannot drop all of a client's honest neighbours in one request)."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates())
    request = cohort.local.request(0, frozenset({0, 1, 2}))
    assert cohort.local.ask(0, request) is None
    assert cohort.local.refusals[0] is AbortReason.BELOW_THRESHOLD


def test_a_request_must_account_for_every_live_neighbour() -> None:
    """A4: a neighbour omitted, or named twice, is refused and nothing leaves."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates())
    request = cohort.local.request(0, frozenset(range(8)) - {5})
    omitted = dataclasses.replace(request, dropped=())
    assert cohort.local.ask(0, omitted) is None
    assert cohort.local.refusals[0] is AbortReason.INCOMPLETE_REQUEST
    request = cohort.local.request(1, frozenset(range(8)))
    twice = dataclasses.replace(request, dropped=(request.survivors[0],))
    assert cohort.local.ask(1, twice) is None
    assert cohort.local.refusals[1] is AbortReason.BOTH_SHARES_REQUESTED


# ------------------------------------------------------------------ bound to the round


def test_a_different_model_per_client_unmasks_to_nothing_useful() -> None:
    """4.1.6: the server sends half the cohort another model within a session. Each client
    masks under the digest of what it trained on, so the two halves' pairwise masks do not
    cancel: the round cannot be unmasked into any sum, and nothing individual opens."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    updates = cohort.updates()
    tasks = {u: task_of(2, "other" if u % 2 else "") for u in range(8)}
    cohort.local.lie = lambda u, m: (
        dataclasses.replace(m, task=tasks[u]) if isinstance(m, RoundTask) else m
    )
    with contextlib.suppress(RoundAborted):
        cohort.local.round(
            task_of(2), updates, cohort.local.lie, tasks=tasks
        )  # the server's own commitment checks fail
        total = cohort.server.aggregate().ring_total
        assert total is not None
        assert [int(v) for v in total] != cohort.expected_ring_sum(updates, tuple(range(8)))
    assert _loot(cohort) == {}


def test_a_task_that_is_not_the_model_trained_is_refused() -> None:
    cohort = _set_up()
    values, weight = cohort.updates()[0]
    cohort.local.open_round(task_of(1))
    cohort.clients[0].set_input(values, weight, task_of(1, "what the client got"))
    sid = cohort.server.session.session_id
    assert cohort.local.ask(0, RoundTask(sid, 0, 1, task_of(1))) is None
    assert cohort.local.refusals[0] is AbortReason.MODEL_MISMATCH


# ------------------------------------------------------------------ next-round keys


def _round_with_forwarded(cohort: Cohort, victim: int, change: object) -> None:
    cohort.local.masked(task_of(2), cohort.updates())
    request = cohort.local.request(victim, frozenset(range(8)))
    assert callable(change)
    cohort.local.ask(victim, change(request))


def test_a_substituted_next_key_is_detected_after_answering_the_round() -> None:
    """V2, S6: a neighbour's next mask key replaced by the server's own: round 2 is answered
    (its own checks passed), then the client leaves; nothing of the substituted key is used."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    forged = X25519KeyPair.generate(DeterministicRandomness(b"f" * 32)).public

    def substitute(request: SessionUnmaskRequest) -> SessionUnmaskRequest:
        first = dataclasses.replace(request.forwarded[0], next_mask_public=forged)
        return dataclasses.replace(request, forwarded=(first, *request.forwarded[1:]))

    _round_with_forwarded(cohort, 0, substitute)
    assert [a.client_id for a in cohort.local.transcript.answers if a.round_number == 2] == [0]
    state = cohort.clients[0].state
    assert isinstance(state, Left) and state.reason is AbortReason.BAD_PEER_KEY


def test_a_substituted_next_key_fails_its_signature_in_active_mode() -> None:
    cohort = _set_up(8, threshold=5, active=True)
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates())
    sid = cohort.server.session.session_id
    everyone = tuple(range(8))
    signatures = {}
    for v in range(8):
        answer = cohort.local.ask(v, SessionSurvivorList(sid, v, 2, everyone))
        assert isinstance(answer, SessionSignature)
        signatures[v] = answer.signature
    request = cohort.local.request(0, frozenset(everyone), signatures=signatures)
    forged = X25519KeyPair.generate(DeterministicRandomness(b"f" * 32)).public
    first = dataclasses.replace(request.forwarded[0], next_mask_public=forged)
    cohort.local.ask(0, dataclasses.replace(request, forwarded=(first, *request.forwarded[1:])))
    state = cohort.clients[0].state
    assert isinstance(state, Left) and state.reason is AbortReason.BAD_SIGNATURE


def test_an_unopenable_ciphertext_is_answered_then_the_client_leaves() -> None:
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))

    def corrupt(request: SessionUnmaskRequest) -> SessionUnmaskRequest:
        first = request.forwarded[0]
        broken = bytes([first.sealed[0] ^ 1]) + first.sealed[1:]
        return dataclasses.replace(
            request, forwarded=(dataclasses.replace(first, sealed=broken), *request.forwarded[1:])
        )

    _round_with_forwarded(cohort, 0, corrupt)
    answers = [a for a in cohort.local.transcript.answers if a.round_number == 2]
    assert [a.client_id for a in answers] == [0]
    # The unopened neighbour's self-mask share is not in the answer: it never arrived.
    assert len(answers[0].self_mask_shares) == 6
    state = cohort.clients[0].state
    assert isinstance(state, Left) and state.reason is AbortReason.BAD_PEER_KEY


def test_an_old_rounds_ciphertext_never_opens() -> None:
    """A7: round 1's ciphertext from a neighbour forwarded again in round 2 does not open
    under round 2's share key."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    old = cohort.local.transcript.round_messages[(1, 1)]

    def replay(request: SessionUnmaskRequest) -> SessionUnmaskRequest:
        first = request.forwarded[0]
        assert first.sender == 1
        stale = dataclasses.replace(
            first,
            sealed=dict(old.ciphertexts)[0],
            next_mask_public=old.next_mask_public,
            next_cipher_public=old.next_cipher_public,
        )
        return dataclasses.replace(request, forwarded=(stale, *request.forwarded[1:]))

    _round_with_forwarded(cohort, 0, replay)
    state = cohort.clients[0].state
    assert isinstance(state, Left) and state.reason in (
        AbortReason.BAD_PEER_KEY,
        AbortReason.DUPLICATE_KEY,
    )


def test_a_reflected_next_key_is_refused() -> None:
    """V13: the client's own next mask key reflected back as a neighbour's."""
    cohort = _set_up()
    _honest_rounds(cohort, range(1, 2))
    cohort.local.masked(task_of(2), cohort.updates())
    own = cohort.local.transcript.round_messages[(2, 0)].next_mask_public
    request = cohort.local.request(0, frozenset(range(8)))
    first = dataclasses.replace(request.forwarded[0], next_mask_public=own)
    cohort.local.ask(0, dataclasses.replace(request, forwarded=(first, *request.forwarded[1:])))
    state = cohort.clients[0].state
    assert isinstance(state, Left) and state.reason is AbortReason.DUPLICATE_KEY


def test_a_round_one_key_substituted_through_peer_keys_makes_the_client_leave() -> None:
    """F2: the server hands client 0 its own mask key for neighbour 1 at set-up; the key
    sealed inside 1's set-up share differs, so 0 leaves before round 1, having sent nothing."""
    cohort = Cohort(8)
    forged = X25519KeyPair.generate(DeterministicRandomness(b"g" * 32)).public

    def substitute(u: int, message: Message) -> Message:
        if u == 0 and isinstance(message, PeerKeys):
            peers = tuple(
                dataclasses.replace(p, mask_public=forged) if p.client_id == 1 else p
                for p in message.peers
            )
            return dataclasses.replace(message, peers=peers)
        return message

    session = cohort.local
    session.lie = substitute
    outgoing: Mapping[int, Message] = cohort.server.start()
    while not cohort.server.between_rounds:
        session.send(outgoing)
        outgoing = cohort.server.close_stage()
    session.send(outgoing)
    assert session.refusals[0] is AbortReason.BAD_PEER_KEY
    assert isinstance(cohort.clients[0].state, Left)


# ------------------------------------------------------------------ what a read of state opens


def _secrets_in(value: object, found: set[bytes]) -> None:
    """Every byte string and private key reachable from ``value``'s fields."""
    if isinstance(value, bytes):
        found.add(value)
    elif isinstance(value, X25519KeyPair):
        found.add(value.private_bytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _secrets_in(getattr(value, f.name), found)
    elif isinstance(value, Mapping):
        for item in value.values():
            _secrets_in(item, found)
    elif isinstance(value, tuple | list | frozenset | set):
        for item in value:
            _secrets_in(item, found)


def test_a_rounds_mask_key_is_gone_from_the_state_once_its_message_is_sent() -> None:
    """S11: round r's mask private key lives until the round's message is built; the states
    after it (Masked, Signed, Between) hold only round r + 1's keys and round r's cipher key."""
    for active in (False, True):
        cohort = _set_up(8, threshold=5 if active else 3, active=active)
        client = cohort.clients[2]
        before = client.state
        assert isinstance(before, Between)
        round_key = before.mask_keys.private_bytes()
        cohort.local.masked(task_of(1), cohort.updates())
        masked = client.state
        assert isinstance(masked, Masked)
        held: set[bytes] = set()
        _secrets_in(masked, held)
        assert round_key not in held
        if active:
            sid = cohort.server.session.session_id
            cohort.local.ask(2, SessionSurvivorList(sid, 2, 1, tuple(range(8))))
            assert isinstance(client.state, Signed)


def _held_by(client: object) -> set[bytes]:
    """Every byte string and private key reachable from a client object in memory."""
    found: set[bytes] = set()
    seen: set[int] = set()

    def walk(value: object) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        _secrets_in(value, found)
        if hasattr(value, "__dict__") and not dataclasses.is_dataclass(value):
            for item in vars(value).values():
                walk(item)
        if isinstance(value, np.ndarray):
            found.add(value.tobytes())
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)

    walk(client)
    return found


def test_a_clients_memory_holds_no_earlier_rounds_key_nor_its_update() -> None:
    """S11 for the object itself, not only its state: once round 1's message is sent, no
    attribute of the client (the one-shot client that agreed the session included) holds
    round 1's mask private key, and the update is gone."""
    cohort = _set_up()
    client = cohort.clients[4]
    before = client.state
    assert isinstance(before, Between)
    round_key = before.mask_keys.private_bytes()
    updates = cohort.updates()
    cohort.local.round(task_of(1), updates)
    held = _held_by(client)
    assert round_key not in held
    values, _ = updates[4]
    assert np.asarray(values).tobytes() not in held


def test_a_client_that_left_keeps_its_reason_whatever_comes_after() -> None:
    cohort = _set_up(6)
    sid = cohort.server.session.session_id
    values, weight = cohort.updates()[0]
    cohort.clients[0].set_input(values, weight, task_of(2))
    cohort.local.ask(0, RoundTask(sid, 0, 2, task_of(2)))
    left = cohort.clients[0].state
    assert isinstance(left, Left) and left.reason is AbortReason.ROUND_OUT_OF_ORDER
    cohort.local.ask(0, RoundTask(sid, 0, 1, task_of(1)))
    with contextlib.suppress(Exception):
        cohort.clients[0].receive(b"junk")
    assert cohort.clients[0].state == left


def test_a_second_session_configuration_while_agreeing_is_a_departure() -> None:
    from secagg.schemes.masking.session.messages import SessionConfig

    cohort = Cohort(6)
    config = SessionConfig.of(cohort.terms)
    assert cohort.local.ask(0, config) is not None
    assert cohort.local.ask(0, config) is None
    assert isinstance(cohort.clients[0].state, Left)


def test_one_read_of_a_clients_state_opens_one_round() -> None:
    """F1: the state of client 0 is copied once, between rounds 2 and 3, and six more rounds
    run honestly. The copy holds round 3's mask key, so with the self-mask shares its
    neighbours reveal as usual the server opens round 3's input; nothing else: every later
    share ciphertext needs a fresh exchange the copy cannot compute."""
    cohort = _set_up()
    played = _honest_rounds(cohort, range(1, 3))
    snapshot = copy.deepcopy(cohort.clients[0].state)
    assert isinstance(snapshot, Between)
    played.update(_honest_rounds(cohort, range(3, 9)))
    loot = {
        key: [int(v) for v in vector]
        for key, vector in recovered(
            cohort.local.transcript,
            cohort.config,
            mask_keys={(0, 3): snapshot.mask_keys.private_bytes()},
        ).items()
    }
    assert loot == {(0, 3): _input(cohort, played[3], 0)}
    # The copy's best try at round 3's outgoing ciphertexts (which carry round 4's key
    # shares): every exchange it can compute, with every public key the server saw.
    transcript = cohort.local.transcript
    sent = transcript.round_messages[(3, 0)]
    ctx = transcript.contexts[3]
    publics = {m.next_cipher_public for m in transcript.round_messages.values()}
    publics |= {m.cipher_public for ms in transcript.members.values() for m in ms.values()}
    opened = 0
    for v, sealed in sent.ciphertexts:
        chain = snapshot.live[v].chain_key
        for public in publics:
            try:
                fresh = snapshot.cipher_keys.exchange(public)
            except CryptoError:  # an unusable point is no key
                continue
            key = derivations.round_share_key(
                chain, fresh, ctx, 0, v, sent.next_cipher_public, snapshot.live[v].cipher_public
            )
            associated = derivations.round_share_associated_data(
                ctx, 0, v, 3, sent.next_cipher_public
            )
            with contextlib.suppress(Exception):
                aead.open_sealed(key, sealed, associated)
                opened += 1
    assert opened == 0


# ------------------------------------------------------------------ active mode's certificate


def test_a_set_with_too_few_honest_members_is_not_signed() -> None:
    """A5: |S_r| - A below the minimum cohort is refused even when |S_r| reaches the quorum."""
    from secagg.schemes.masking.graph import survivor_rule

    cohort = _set_up(10, threshold=7, active=True, min_cohort=8, rule=survivor_rule(10, 9, 0.2, 40))
    cohort.local.masked(task_of(1), cohort.updates())
    sid = cohort.server.session.session_id
    nine = tuple(u for u in range(10) if u != 9)
    assert cohort.local.ask(0, SessionSurvivorList(sid, 0, 1, nine)) is None
    assert cohort.local.refusals[0] is AbortReason.COHORT_TOO_SMALL


# ------------------------------------------------------------------ F3: a victim split again


def _hand_round(cohort: Cohort, r: int, told: Mapping[int, frozenset[int]]) -> Updates:
    """Round r played by a server that keeps no books but the clients' own views: every
    client still in the session gets the task, and then the request for the survivor set
    ``told[v]`` (default: every live neighbour of v that sent a message to v)."""
    local = cohort.local
    transcript = local.transcript
    sid = cohort.server.session.session_id
    members = {}
    for u, client in cohort.clients.items():
        if isinstance(client.state, Left):
            continue
        if r == 1:  # round 1's keys are the set-up's
            mask_public = cohort.server.members[u].mask_public
            cipher_public = cohort.server.members[u].cipher_public
        else:
            sent = transcript.round_messages[(r - 1, u)]
            mask_public, cipher_public = sent.next_mask_public, sent.next_cipher_public
        members[u] = Member(frozenset(client.live), mask_public, cipher_public)
    transcript.members[r] = members
    transcript.contexts[r] = derivations.round_context(sid, r, cohort.config.config_id, task_of(r))
    updates = cohort.updates()
    for u in members:
        values, weight = updates[u]
        cohort.clients[u].set_input(values, weight, task_of(r))
        local.ask(u, RoundTask(sid, u, r, task_of(r)))
    for v in sorted(members):
        if isinstance(cohort.clients[v].state, Left):
            continue
        sent_to_v = {
            w
            for (rr, w), m in transcript.round_messages.items()
            if rr == r and v in dict(m.ciphertexts)
        }
        survivors = told.get(v, frozenset(sent_to_v))
        local.ask(v, local.request(v, survivors & (sent_to_v | {v}), round_number=r))
    return updates


def test_a_victim_split_round_after_round_yields_the_bounded_number_of_rounds() -> None:
    """F3 (semi-honest, conceded): on the complete graph of 10 with t = 3 and no corrupt
    client (k = 9, X = 0, k_min = 3), the server tells fresh groups of t neighbours each round
    that client 0 dropped and the rest that it survived, and tells 0 that everyone survived.
    The split-off holders hold 0 dead and stop sealing to it, so each split uses up t honest
    holders: the loot gets exactly min(floor((k - X)/(t - X)) - 1, floor((k - k_min)/(t - X))
    + 2) = 2 rounds of 0, and 0's live degree falls by t one round after each split."""
    cohort = _set_up(10, threshold=3)
    everyone = frozenset(range(10))
    played: dict[int, Updates] = {}
    degrees = [len(cohort.clients[0].live)]
    splits = [frozenset({1, 2, 3}), frozenset({4, 5, 6}), frozenset({7, 8, 9})]
    for r, split in enumerate(splits, start=1):
        told = {v: everyone - {0} for v in split}
        played[r] = _hand_round(cohort, r, told)
        degrees.append(len(cohort.clients[0].live))
    loot = _loot(cohort)
    assert set(loot) == {(0, 1), (0, 2)}
    for (u, r), vector in loot.items():
        assert vector == _input(cohort, played[r], u)
    assert degrees == [9, 9, 6, 3]

"""Session agreement (commit and reveal): every session is fresh from each client's side, and
the server can neither replay one nor choose the graph.

Each client commits to 32 random bytes; the server fixes the digest of every commitment
before anyone reveals; the session id and the SecAgg+ graph seed are hashes of the config and
all revealed contributions. A committed client that does not reveal makes everyone commit
afresh (at most three attempts), since leaving it out would let the server pick among sessions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort, DropReason, RoundAborted
from secagg.protocol.stages import Stage
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.client import Aborted, AwaitingContributions, AwaitingDigest
from secagg.schemes.masking.messages import (
    MAX_ATTEMPTS,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ContributionList,
    Contributions,
    PeerKeys,
    Reveal,
)
from tests.protocol.harness import Harness

VICTIM = 2


def _digests(h: Harness) -> dict[int, CommitmentDigest]:
    h.commit()
    assert all(isinstance(m, CommitmentDigest) for m in h.outgoing.values())
    return {i: m for i, m in h.outgoing.items() if isinstance(m, CommitmentDigest)}


def _contributions(h: Harness) -> dict[int, Contributions]:
    _digests(h)
    h.reveal()
    return {i: m for i, m in h.outgoing.items() if isinstance(m, Contributions)}


def _refuses(h: Harness, message: object, reason: AbortReason) -> None:
    client = h.clients[VICTIM]
    with pytest.raises(ClientAbort) as caught:
        client.receive(message)  # type: ignore[arg-type]
    assert caught.value.reason is reason
    assert isinstance(client.state, Aborted)


# ----------------------------------------------------------------- the honest path
def test_every_client_agrees_on_one_session_that_binds_every_contribution() -> None:
    h = Harness(6, threshold=3, degree=4, agree=False)
    h.agree()
    sessions = {c.session.session_id for c in h.clients.values()}
    assert sessions == {h.session_id}
    assert {c.session.graph_seed for c in h.clients.values()} == {h.server.session.graph_seed}
    assert h.server.session.participants == frozenset(range(6))
    assert h.server.attempt == 1


def test_the_same_configuration_run_twice_gives_two_unrelated_sessions_and_graphs() -> None:
    """No replay: a client's own fresh randomness is in every session it takes part in."""
    first = Harness(12, threshold=3, degree=4, seed=1)
    second = Harness(12, threshold=3, degree=4, seed=1, agree=False)
    second.clients = {
        i: type(c)(second.config, i, second.rng.fork(f"again/{i}"))
        for i, c in second.clients.items()
    }
    for i, c in second.clients.items():
        c.set_input(second.values(i), second.weights[i])
    second.agree()
    assert first.config == second.config
    assert first.session_id != second.session_id
    neighbours = [
        [first.server.session.neighbours(i) for i in range(12)],
        [second.server.session.neighbours(i) for i in range(12)],
    ]
    assert neighbours[0] != neighbours[1]


def test_changing_any_one_contribution_changes_the_session_and_the_graph() -> None:
    h = Harness(8, threshold=3, degree=4, agree=False)
    entries = next(iter(_contributions(h).values())).entries
    base = derive.Session.agree(h.config, 1, entries)
    for k in range(len(entries)):
        changed = list(entries)
        changed[k] = (entries[k][0], bytes(32))
        other = derive.Session.agree(h.config, 1, changed)
        assert other.session_id != base.session_id
        assert other.graph_seed != base.graph_seed


def test_a_round_through_the_session_agreement_gives_the_exact_sum() -> None:
    h = Harness(7, threshold=3, degree=4, agree=False)
    h.run()
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(7)))


# ----------------------------------------------------------------- what a client refuses
def test_a_client_reveals_nothing_for_a_session_below_the_minimum_cohort() -> None:
    h = Harness(6, threshold=3, agree=False, min_cohort=5)
    digest = _digests(h)[VICTIM]
    _refuses(h, dataclasses.replace(digest, count=4), AbortReason.COHORT_TOO_SMALL)


def test_a_client_whose_own_contribution_is_left_out_refuses_the_session() -> None:
    h = Harness(6, threshold=3, agree=False)
    message = _contributions(h)[VICTIM]
    without = tuple(e for e in message.entries if e[0] != VICTIM)
    _refuses(h, dataclasses.replace(message, entries=without), AbortReason.BAD_CONTRIBUTIONS)


def test_a_contribution_changed_after_the_digest_is_refused() -> None:
    """The grinding attempt: the server (or a colluder) picks a contribution after seeing the
    others, to steer the graph. It no longer matches the committed digest."""
    h = Harness(6, threshold=3, agree=False)
    message = _contributions(h)[VICTIM]
    ground = tuple((c, b"\x01" * 32) if c == 4 else (c, r) for c, r in message.entries)
    _refuses(h, dataclasses.replace(message, entries=ground), AbortReason.BAD_CONTRIBUTIONS)


def test_grinding_any_contribution_but_the_victims_own_is_refused_wherever_it_sits() -> None:
    """docs/LINEAR_AGREEMENT.md, candidate 1. A client that checked only its own entry (a
    Merkle path to its own leaf) would accept a list in which the server, having seen every
    reveal, replaced any other entry: it could try values until the graph suits it. So the
    client checks every entry against the committed digest, and a list ground at any one
    position -- the victim's own entry intact, its neighbours moved -- is refused."""
    n = 8
    for position in (p for p in range(n) if p != VICTIM):
        h = Harness(n, threshold=3, degree=4, agree=False)
        message = _contributions(h)[VICTIM]
        honest = derive.Session.agree(h.config, 1, message.entries)
        for trial in range(256):  # the server's grinding: a value that moves the victim
            ground = tuple(
                (c, bytes([trial]) * 32) if c == position else (c, r) for c, r in message.entries
            )
            steered = derive.Session.agree(h.config, 1, ground)
            if steered.neighbours(VICTIM) != honest.neighbours(VICTIM):
                break
        else:
            pytest.fail(f"no value at position {position} moved the victim's neighbours")
        assert dict(ground)[VICTIM] == dict(message.entries)[VICTIM]
        _refuses(h, dataclasses.replace(message, entries=ground), AbortReason.BAD_CONTRIBUTIONS)


def test_a_list_memoised_for_the_honest_clients_vouches_for_no_other() -> None:
    """The n commitments are hashed once per process for every client that checks the same
    list; the memo is keyed on the list's very bytes, so a list forged in one byte, arriving
    after every other client has checked the honest one, is hashed afresh and refused."""
    h = Harness(6, threshold=3, agree=False)
    messages = _contributions(h)
    message = messages[VICTIM]
    config_id = h.config.config_id
    definition = derive.commitment_digest(
        config_id,
        1,
        [(c, derive.contribution_commitment(config_id, 1, c, r)) for c, r in message.entries],
    )
    for i, other in messages.items():
        if i != VICTIM:
            h.clients[i].receive(other)  # agreed: the honest list is memoised
    assert derive.contributions_digest(config_id, 1, message.entries) == definition
    wire = bytearray(message.contributions.wire)
    wire[-1] ^= 1  # the last contribution (client 5's, not the victim's)
    forged = dataclasses.replace(message, entries=ContributionList(bytes(wire)))
    assert derive.contributions_digest(config_id, 1, forged.entries) != definition
    _refuses(h, forged, AbortReason.BAD_CONTRIBUTIONS)


def test_lists_checked_in_one_process_each_get_the_digest_and_session_of_their_own_bytes() -> None:
    """The memo holds the last few lists, each keyed by its exact bytes: a process whose
    clients are shown two lists (a split view) gives each the digest and session id that its
    own list defines, however the checks interleave; a digest given that is not the list's
    gives the session id of that digest."""
    h = Harness(6, threshold=3, agree=False)
    honest = _contributions(h)[VICTIM].contributions
    config_id = h.config.config_id
    wire = bytearray(honest.wire)
    wire[-1] ^= 1
    split = ContributionList(bytes(wire))
    for entries in (honest, split, honest, split):
        as_tuples = tuple(entries)  # the definition, computed without the memo
        definition = derive.Session.agree(h.config, 1, as_tuples)
        digest = derive.commitment_digest(
            config_id, 1, derive.contribution_commitments(config_id, 1, as_tuples)
        )
        assert derive.contributions_digest(config_id, 1, entries) == digest
        agreed = derive.Session.agree(h.config, 1, entries)
        assert (agreed.session_id, agreed.graph_seed) == (
            definition.session_id,
            definition.graph_seed,
        )
        given = derive.Session.agree(h.config, 1, entries, digest=bytes(32))
        assert (
            given.session_id
            == derive.Session.agree(h.config, 1, as_tuples, digest=bytes(32)).session_id
        )
        assert given.session_id != agreed.session_id
    assert (
        derive.Session.agree(h.config, 1, honest).session_id
        != derive.Session.agree(h.config, 1, split).session_id
    )


@pytest.mark.parametrize(
    ("cohort", "dense"),
    [(tuple(range(0, 90, 3)), True), ((1, 5, 2**31, 2**32 - 2), False)],
    ids=["dense ids: a membership table", "sparse ids: binary search"],
)
def test_strangers_and_absent_members_are_found_alike_in_dense_and_sparse_cohorts(
    cohort: tuple[int, ...], dense: bool
) -> None:
    config = dataclasses.replace(Harness(6, threshold=3).config, client_ids=cohort)
    assert (config.id_table is not None) is dense
    ids = np.array(cohort, dtype=np.int64)
    assert derive.first_stranger(config, ids) is None
    for stranger in (cohort[0] + 1, cohort[-1] + 1, 2**32 - 1, 3 * 2**20, -1):
        with_stranger = np.sort(np.append(ids, stranger))
        assert derive.first_stranger(config, with_stranger) == stranger
    present = cohort[1:-1:2]
    entries = ContributionList.of((i, bytes([i % 251]) * 32) for i in present)
    assert derive.Session.agree(config, 1, entries).absent == set(cohort) - set(present)
    assert derive.Session.agree(config, 1, tuple(entries)).absent == set(cohort) - set(present)


def test_a_session_without_one_of_the_committed_clients_is_refused() -> None:
    """Leaving out a committed client would let the server choose among sessions."""
    h = Harness(6, threshold=3, agree=False)
    message = _contributions(h)[VICTIM]
    fewer = tuple(e for e in message.entries if e[0] != 5)
    _refuses(h, dataclasses.replace(message, entries=fewer), AbortReason.BAD_CONTRIBUTIONS)


def test_unsorted_or_foreign_contributions_are_refused() -> None:
    h = Harness(6, threshold=3, agree=False)
    message = _contributions(h)[VICTIM]
    _refuses(
        h,
        dataclasses.replace(message, entries=tuple(reversed(message.entries))),
        AbortReason.BAD_CONTRIBUTIONS,
    )
    h2 = Harness(6, threshold=3, agree=False)
    message = _contributions(h2)[VICTIM]
    foreign = (*message.entries, (99, bytes(32)))
    with pytest.raises(ClientAbort) as caught:
        h2.clients[VICTIM].receive(dataclasses.replace(message, entries=foreign))
    assert caught.value.reason is AbortReason.UNKNOWN_ID


def test_a_digest_of_another_round_or_attempt_is_refused() -> None:
    h = Harness(6, threshold=3, agree=False)
    digest = _digests(h)[VICTIM]
    _refuses(h, dataclasses.replace(digest, config_id=bytes(32)), AbortReason.WRONG_SESSION)
    h2 = Harness(6, threshold=3, agree=False)
    digest = _digests(h2)[VICTIM]
    with pytest.raises(ClientAbort) as caught:
        h2.clients[VICTIM].receive(dataclasses.replace(digest, attempt=2))
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE


def test_a_client_commits_at_most_three_times_and_only_in_order() -> None:
    h = Harness(6, threshold=3, agree=False)
    _contributions(h)
    client = h.clients[VICTIM]
    config_id = h.config.config_id
    with pytest.raises(ClientAbort) as caught:
        client.receive(CommitRequest(config_id, VICTIM, 3))  # skips attempt 2
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE

    h = Harness(6, threshold=3, agree=False)
    _contributions(h)
    client = h.clients[VICTIM]
    for attempt in range(2, MAX_ATTEMPTS + 1):
        again = client.receive(CommitRequest(config_id, VICTIM, attempt))
        assert isinstance(again, Commitment) and again.attempt == attempt
        state = client.state
        assert isinstance(state, AwaitingDigest)
        # Pretend the server fixed a digest with this commitment in it, and move on.
        client.receive(CommitmentDigest(config_id, VICTIM, attempt, bytes(32), 6))
        assert isinstance(client.state, AwaitingContributions)
    with pytest.raises(ClientAbort) as caught:
        client.receive(CommitRequest(config_id, VICTIM, MAX_ATTEMPTS + 1))
    assert caught.value.reason is AbortReason.TOO_MANY_ATTEMPTS


def test_nothing_of_a_later_stage_is_answered_before_the_session_is_agreed() -> None:
    h = Harness(6, threshold=3, agree=False)
    _digests(h)
    _refuses(h, PeerKeys(bytes(32), VICTIM, ()), AbortReason.UNEXPECTED_MESSAGE)


def test_a_fresh_contribution_is_drawn_for_every_attempt_and_hidden_from_repr() -> None:
    h = Harness(6, threshold=3, agree=False)
    _contributions(h)
    client = h.clients[VICTIM]
    first = client.state
    assert isinstance(first, AwaitingContributions)
    client.receive(CommitRequest(h.config.config_id, VICTIM, 2))
    second = client.state
    assert isinstance(second, AwaitingDigest)
    assert second.contribution != first.contribution
    for text in (repr(first), repr(second), repr(client)):
        assert repr(first.contribution) not in text and first.contribution.hex() not in text


# ----------------------------------------------------------------- what the server does
def test_a_committed_client_that_does_not_reveal_makes_the_others_commit_again() -> None:
    h = Harness(7, threshold=3, degree=4, agree=False)
    h.commit()
    h.reveal(skip=[5])
    assert h.server.stage is Stage.COMMIT and h.server.attempt == 2
    assert all(isinstance(m, CommitRequest) for m in h.outgoing.values())
    assert set(h.outgoing) == set(range(7)) - {5}
    assert h.server.drops[5].reason is DropReason.MISSED_REVEAL
    h.run()
    assert h.server.session.participants == frozenset(range(7)) - {5}
    assert h.server.result.included == (0, 1, 2, 3, 4, 6)
    np.testing.assert_array_equal(h.server.result.total, h.expected_total([0, 1, 2, 3, 4, 6]))


def test_a_reveal_that_does_not_match_its_commitment_drops_its_sender() -> None:
    h = Harness(6, threshold=3, agree=False)
    digests = _digests(h)
    for i, digest in digests.items():
        reveal = h.clients[i].receive(digest)
        assert isinstance(reveal, Reveal)
        if i == 1:
            reveal = dataclasses.replace(reveal, contribution=bytes(32))
        h.server.receive(i, reveal.encode())
    assert h.server.drops[1].reason is DropReason.BAD_REVEAL
    h.outgoing = h.server.close_stage()
    assert h.server.attempt == 2


def test_a_client_that_revealed_and_then_disconnected_is_in_the_session_all_the_same() -> None:
    """Its contribution is in; leaving it out now would hand the server a choice."""
    h = Harness(6, threshold=3, agree=False)
    _digests(h)
    for i, digest in h.outgoing.items():
        h.server.receive(i, h.clients[i].receive(digest).encode())
    h.server.drop(4, DropReason.DISCONNECTED)
    h.outgoing = h.server.close_stage()
    assert h.server.stage is Stage.ADVERTISE
    assert 4 in h.server.session.participants
    assert 4 not in h.outgoing


def test_reveals_missing_in_every_attempt_abort_the_round_before_any_key_exists() -> None:
    h = Harness(9, threshold=3, agree=False)
    for attempt, silent in enumerate(([8], [7], [6]), start=1):
        assert h.server.attempt == attempt
        h.commit()
        if attempt < MAX_ATTEMPTS:
            h.reveal(skip=silent)
    with pytest.raises(RoundAborted) as caught:
        h.reveal(skip=[6])
    assert caught.value.stage == Stage.REVEAL
    assert h.server.stage is Stage.ABORTED


def test_too_few_commitments_abort_at_once() -> None:
    h = Harness(6, threshold=3, agree=False, min_cohort=5)
    with pytest.raises(RoundAborted) as caught:
        h.commit(skip=[0, 1])
    assert caught.value.stage == Stage.COMMIT


def test_a_commitment_for_another_attempt_drops_its_sender() -> None:
    h = Harness(6, threshold=3, agree=False)
    commitment = h.clients[1].start()
    h.server.receive(1, dataclasses.replace(commitment, attempt=2).encode())
    assert h.server.drops[1].reason is DropReason.MALFORMED


def test_the_fast_commitment_list_is_exactly_the_one_commitment_at_a_time() -> None:
    """Every client hashes the whole cohort's contributions: the batched path must be the
    defined commitment, byte for byte, for ordinary and odd entries alike."""
    h = Harness(6, threshold=3, agree=False)
    config_id = h.config.config_id
    entries = [(c, bytes([c % 256]) * 32) for c in (0, 1, 7, 2**32 - 1)] + [(5, b"short")]
    for attempt in (1, 3):
        assert derive.contribution_commitments(config_id, attempt, entries) == [
            (c, derive.contribution_commitment(config_id, attempt, c, r)) for c, r in entries
        ]


def test_the_session_of_a_list_held_as_its_wire_bytes_is_the_session_of_its_entries() -> None:
    """The client agrees from the list as it arrived (its wire bytes, its ids as an array);
    that must be the session the definition gives the same entries as tuples, whoever is
    absent from it."""
    h = Harness(8, threshold=3, degree=4, agree=False)
    entries = _contributions(h)[VICTIM].contributions
    for chosen in (entries, entries[:5], entries[3:], entries[1:7]):
        listed = derive.Session.agree(h.config, 1, chosen)
        as_tuples = derive.Session.agree(h.config, 1, tuple(chosen))
        assert listed == as_tuples
        assert (listed.session_id, listed.graph_seed) == (
            as_tuples.session_id,
            as_tuples.graph_seed,
        )
        assert listed.absent == frozenset(range(8)) - {c for c, _ in chosen}
        digest = derive.contributions_digest(h.config.config_id, 1, chosen)
        assert derive.Session.agree(h.config, 1, chosen, digest=digest) == listed


def test_a_contribution_from_outside_the_cohort_is_named_wherever_it_sits() -> None:
    h = Harness(6, threshold=3, agree=False)
    cohort = h.config
    assert derive.first_stranger(cohort, np.array([0, 2, 5])) is None
    assert derive.first_stranger(cohort, np.array([0, 3, 7, 9])) == 7
    assert derive.first_stranger(cohort, np.array([2**32 - 1])) == 2**32 - 1
    assert derive.first_stranger(cohort, np.array([], dtype=np.int64)) is None

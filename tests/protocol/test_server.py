"""The server drops misbehaving clients with a reason and aborts only when it must."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from secagg.errors import DropReason, RoundAborted, UsageError
from secagg.schemes.masking.messages import (
    AdvertiseKeys,
    MaskedInput,
    PeerShares,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.schemes.masking.server import PeerStatus, Server, Stage
from tests.protocol.harness import Harness


def _reason(h: Harness, client: int) -> DropReason:
    return h.server.drops[client].reason


# ----------------------------------------------------------------- correctness
def test_sum_equals_the_exact_ring_sum_of_all_clients_without_drops() -> None:
    h = Harness(5, threshold=3)
    h.run()
    assert h.server.stage is Stage.COMPLETED
    assert h.server.result.included == (0, 1, 2, 3, 4)
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(5)))


@pytest.mark.parametrize("stage", ["advertise", "share", "mask"])
def test_client_dropped_before_its_masked_input_is_excluded_exactly(stage: str) -> None:
    h = Harness(7, threshold=3)
    h.run(**{stage: [4]})
    included = [0, 1, 2, 3, 5, 6]
    assert h.server.result.included == tuple(included)
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(included))


def test_client_dropped_at_unmask_is_still_included() -> None:
    h = Harness(7, threshold=3)
    h.run(unmask=[4])
    assert 4 in h.server.result.included
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(7)))
    assert _reason(h, 4) is DropReason.MISSED_UNMASK


def test_drops_at_every_stage_at_once_in_a_secagg_plus_round() -> None:
    # Seed 2 gives a graph in which client 11's drop at unmask still leaves t holders of
    # every secret (with most graphs it does not, and the round aborts: test_round_properties).
    h = Harness(12, degree=6, threshold=3, seed=2)
    h.run(advertise=[0], share=[5], mask=[9], unmask=[11])
    included = [i for i in range(12) if i not in (0, 5, 9)]
    assert h.server.result.included == tuple(included)
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(included))
    stages = {c: d.stage for c, d in h.server.drops.items()}
    assert stages == {
        0: Stage.ADVERTISE,
        5: Stage.SHARE,
        9: Stage.MASKED_INPUT,
        11: Stage.UNMASK,
    }


def test_weighted_mean_is_decoded_from_the_sum() -> None:
    h = Harness(5, threshold=3)
    h.run()
    mean = h.server.result.weighted_mean(
        __import__("secagg.hazmat.quantize", fromlist=["Quantizer"]).Quantizer(
            clip=h.config.clip, bits=h.config.value_bits
        )
    )
    w = np.array([h.weights[i] for i in range(5)], dtype=float)
    values = np.stack([h.values(i) for i in range(5)])
    np.testing.assert_allclose(mean, (w @ values) / w.sum(), atol=1e-12)


# ----------------------------------------------------------------- drops with reasons
def test_malformed_bytes_drop_the_sender_and_the_round_goes_on() -> None:
    h = Harness(6, threshold=3)
    h.server.receive(3, b"junk")
    assert _reason(h, 3) is DropReason.MALFORMED
    h.advertise(skip=[3])
    h.share()
    h.mask()
    h.unmask()
    assert 3 not in h.server.result.included


def test_message_for_the_wrong_stage_drops_the_sender() -> None:
    h = Harness(6, threshold=3)
    h.server.receive(2, UnmaskRequest(h.session_id, 2, (), ()).encode())
    assert _reason(h, 2) is DropReason.WRONG_STAGE


def test_message_from_another_session_drops_the_sender() -> None:
    h = Harness(6, threshold=3)
    other = Harness(6, threshold=3, seed=2)
    h.server.receive(1, other.adverts[1].encode())
    assert _reason(h, 1) is DropReason.WRONG_SESSION


def test_message_claiming_another_sender_drops_the_sender() -> None:
    h = Harness(6, threshold=3)
    h.server.receive(1, h.adverts[2].encode())
    assert _reason(h, 1) is DropReason.MALFORMED


def test_reused_public_key_drops_the_copier_not_the_owner() -> None:
    h = Harness(6, threshold=3)
    original = h.adverts[0]
    h.server.receive(0, original)
    h.server.receive(1, dataclasses.replace(original, client_id=1))
    assert 0 not in h.server.drops
    assert _reason(h, 1) is DropReason.DUPLICATE_KEY


def test_unusable_x25519_key_drops_the_client() -> None:
    h = Harness(6, threshold=3)
    advert = h.adverts[0]
    h.server.receive(0, dataclasses.replace(advert, mask_public=bytes(32)))
    assert _reason(h, 0) is DropReason.BAD_KEY


def test_conflicting_duplicate_advert_drops_the_client() -> None:
    h = Harness(6, threshold=3)
    advert = h.adverts[0]
    h.server.receive(0, advert)
    h.server.receive(0, advert)  # a retransmission is harmless
    assert 0 not in h.server.drops
    h.server.receive(0, dataclasses.replace(advert, mask_public=advert.cipher_public))
    assert _reason(h, 0) is DropReason.DUPLICATE


def test_masked_input_of_the_wrong_length_drops_the_sender() -> None:
    h = Harness(6, threshold=3)
    h.advertise()
    h.share()
    shares = h.outgoing[3]
    assert isinstance(shares, PeerShares)
    reply = h.respond(3, shares)
    assert isinstance(reply, MaskedInput)
    h.server.receive(3, dataclasses.replace(reply, packed_vector=reply.packed_vector + b"\0"))
    assert _reason(h, 3) is DropReason.WRONG_LENGTH
    h.mask(skip=[3])
    h.unmask()
    included = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(included))


def test_conflicting_duplicate_masked_input_is_ignored_and_noted() -> None:
    h = Harness(6, threshold=3)
    h.advertise()
    h.share()
    shares = h.outgoing[3]
    assert isinstance(shares, PeerShares)
    reply = h.respond(3, shares)
    assert isinstance(reply, MaskedInput)
    h.server.receive(3, reply)
    h.server.receive(3, MaskedInput(reply.session_id, 3, (), bytes(len(reply.packed_vector))))
    assert 3 not in h.server.drops
    assert [a.reason for a in h.server.anomalies] == [DropReason.DUPLICATE]
    h.mask(skip=[3])
    h.unmask()
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(6)))


def test_unmask_response_with_unrequested_shares_drops_the_sender_and_its_shares() -> None:
    h = Harness(7, threshold=3)
    h.advertise()
    h.share()
    h.mask(skip=[6])
    request = h.outgoing[0]
    assert isinstance(request, UnmaskRequest)
    honest = h.respond(0, request)
    assert isinstance(honest, UnmaskResponse)
    # Asks to hand in a self-mask share of the dropped client 6 as well.
    greedy = UnmaskResponse(
        honest.session_id,
        0,
        (*honest.self_mask_shares, (6, honest.key_shares[0][1])),
        honest.key_shares,
    )
    h.server.receive(0, greedy)
    assert _reason(h, 0) is DropReason.MALFORMED
    h.unmask(skip=[0])
    included = [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(included))


def test_a_bad_share_is_outvoted_and_its_sender_noted() -> None:
    h = Harness(7, threshold=3)
    h.advertise()
    h.share()
    h.mask()
    request = h.outgoing[0]
    assert isinstance(request, UnmaskRequest)
    honest = h.respond(0, request)
    assert isinstance(honest, UnmaskResponse)
    owner, share = honest.self_mask_shares[0]
    corrupted = bytes(32) + bytes([share[-1] ^ 1])
    bad = dataclasses.replace(
        honest, self_mask_shares=((owner, corrupted), *honest.self_mask_shares[1:])
    )
    h.server.receive(0, bad)
    h.unmask(skip=[0])
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(7)))
    assert any(a.reason is DropReason.BAD_SHARE and a.client_id == 0 for a in h.server.anomalies)


def test_messages_from_strangers_are_counted_and_ignored() -> None:
    h = Harness(5, threshold=3)
    h.server.receive(99, b"whatever")
    assert h.server.strangers == 1
    assert 99 not in h.server.drops


def test_a_client_that_misses_its_stage_is_dropped_as_missed() -> None:
    h = Harness(5, threshold=3)
    h.advertise(skip=[2])
    assert _reason(h, 2) is DropReason.MISSED_ADVERTISE


# ----------------------------------------------------------------- aborts
def test_round_aborts_before_any_unmask_request_when_too_few_mask_inputs_survive() -> None:
    h = Harness(5, threshold=4)
    h.advertise()
    h.share()
    with pytest.raises(RoundAborted) as caught:
        h.mask(skip=[0, 1])
    assert caught.value.stage == Stage.MASKED_INPUT
    assert h.server.stage is Stage.ABORTED
    assert not any(isinstance(m, UnmaskRequest) for m in h.outgoing.values())
    with pytest.raises(UsageError):
        _ = h.server.result


def test_round_aborts_when_too_few_clients_answer_the_unmask_request() -> None:
    h = Harness(5, threshold=3)
    h.advertise()
    h.share()
    h.mask()
    with pytest.raises(RoundAborted) as caught:
        h.unmask(skip=[0, 1, 2])
    assert caught.value.stage == Stage.UNMASK
    with pytest.raises(UsageError):
        _ = h.server.result


def test_secagg_plus_prunes_clients_left_with_too_few_neighbours() -> None:
    h = Harness(16, degree=8, threshold=3)
    # Dropping six of client 0's eight neighbours leaves it with 2 < t.
    neighbours = sorted(h.clients[0].neighbours)
    h.advertise(skip=neighbours[:6])
    assert _reason(h, 0) is DropReason.TOO_FEW_NEIGHBOURS
    h.share()
    h.mask()
    h.unmask()
    assert 0 not in h.server.result.included
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(h.server.result.included))


def test_round_aborts_at_advertise_when_nobody_can_share() -> None:
    h = Harness(4, threshold=3)
    with pytest.raises(RoundAborted) as caught:
        h.advertise(skip=[0, 1])
    assert caught.value.stage == Stage.ADVERTISE


def test_closing_an_ended_round_is_a_usage_error() -> None:
    h = Harness(5, threshold=3)
    h.run()
    with pytest.raises(UsageError):
        h.server.close_stage()


def test_server_repr_says_nothing_secret() -> None:
    h = Harness(5, threshold=3)
    h.run()
    assert "Server(stage=completed" in repr(h.server)
    assert repr(h.server.result).startswith("RoundResult(included=")
    assert str(int(h.server.result.total[0])) not in repr(h.server.result)


def test_adverts_received_are_kept_only_for_the_cohort() -> None:
    h = Harness(5, threshold=3)
    advert = h.adverts[0]
    h.server.receive(0, dataclasses.replace(advert, client_id=7))
    assert isinstance(advert, AdvertiseKeys)
    assert _reason(h, 0) is DropReason.MALFORMED


# ----------------------------------------------------------------- each member's status
def _assert_one_status_each(server: Server) -> None:
    """Every cohort member has exactly one status, and the statuses are what the public views
    say: the expected are those waited for, the dropped those with a drop record."""
    statuses = server.statuses
    assert sorted(statuses) == list(server.config.client_ids)
    expected = {u for u, s in statuses.items() if s is PeerStatus.EXPECTED}
    dropped = {u for u, s in statuses.items() if s is PeerStatus.DROPPED}
    assert expected == server.waiting_for()
    assert dropped == server.drops.keys()


@pytest.mark.parametrize("active", [False, True])
def test_every_cohort_member_has_exactly_one_status_at_every_stage(active: bool) -> None:
    # Degree 8 leaves t holders of every secret after one drop at each stage below.
    h = Harness(12, degree=8, threshold=3, active=active, agree=False)
    server = h.server
    _assert_one_status_each(server)
    assert set(server.statuses.values()) == {PeerStatus.EXPECTED}
    stages: list[tuple[Callable[..., object], list[int]]] = [
        (h.commit, []),
        (h.reveal, []),
        (h.advertise, [0]),
        (h.share, [5]),
        (h.mask, [9]),
    ]
    if active:
        stages.append((h.consistency, [3]))
    for run_stage, skip in stages:
        _assert_one_status_each(server)
        run_stage(skip=skip)
        # A stage closed: its silent are dropped, everyone else is expected in the next one.
        _assert_one_status_each(server)
        assert all(server.statuses[u] is PeerStatus.DROPPED for u in skip)
        assert PeerStatus.ANSWERED not in server.statuses.values()
    h.unmask(skip=[11])
    _assert_one_status_each(server)
    assert server.stage is Stage.COMPLETED
    # The round is over: whoever was not dropped answered the unmask request.
    answered = {u for u, s in server.statuses.items() if s is PeerStatus.ANSWERED}
    assert answered == set(server.config.client_ids) - server.drops.keys()
    assert server.unmask_answers == len(answered)


def test_a_client_is_answered_once_its_message_is_taken_and_not_before() -> None:
    h = Harness(5, threshold=3)
    assert h.server.statuses[1] is PeerStatus.EXPECTED
    h.server.receive(1, h.adverts[1])
    assert h.server.statuses[1] is PeerStatus.ANSWERED
    assert 1 not in h.server.waiting_for()
    h.server.receive(2, b"junk")  # refused: dropped, not answered
    assert h.server.statuses[2] is PeerStatus.DROPPED
    _assert_one_status_each(h.server)


def test_a_conflicting_duplicate_turns_an_answered_client_into_a_dropped_one() -> None:
    h = Harness(6, threshold=3)
    advert = h.adverts[0]
    h.server.receive(0, advert)
    h.server.receive(0, dataclasses.replace(advert, mask_public=advert.cipher_public))
    assert h.server.statuses[0] is PeerStatus.DROPPED
    _assert_one_status_each(h.server)
    h.advertise(skip=[0])
    assert 0 not in h.outgoing


def test_a_client_dropped_after_its_masked_input_is_dropped_yet_in_the_sum() -> None:
    h = Harness(7, threshold=3)
    h.advertise()
    h.share()
    shares = h.outgoing[4]
    assert isinstance(shares, PeerShares)
    h.server.receive(4, h.respond(4, shares))
    h.server.drop(4, DropReason.CLIENT_ABORTED, "disconnected")
    assert h.server.statuses[4] is PeerStatus.DROPPED
    h.mask(skip=[4])
    _assert_one_status_each(h.server)
    assert 4 not in h.outgoing  # not asked to unmask ...
    h.unmask()
    assert 4 in h.server.result.included  # ... but its input is in the sum
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(7)))
    assert h.server.drops[4].stage is Stage.MASKED_INPUT


def test_a_committed_client_that_does_not_reveal_is_dropped_and_the_rest_commit_again() -> None:
    h = Harness(6, threshold=3, agree=False)
    h.commit()
    h.reveal(skip=[2])
    assert h.server.stage is Stage.COMMIT
    assert h.server.attempt == 2
    _assert_one_status_each(h.server)
    assert h.server.statuses[2] is PeerStatus.DROPPED
    assert h.server.waiting_for() == {0, 1, 3, 4, 5}


def test_an_aborted_round_keeps_nothing_it_summed_or_pooled() -> None:
    h = Harness(5, threshold=3)
    h.advertise()
    h.share()
    h.mask()
    with pytest.raises(RoundAborted) as caught:
        h.unmask(skip=[0, 1, 2])  # two answers pooled their shares, fewer than t
    assert caught.value.stage == Stage.UNMASK
    server = h.server
    assert server.stage is Stage.ABORTED
    _assert_one_status_each(server)
    # No public view shows these; looking inside is the only way to check that an abort
    # leaves neither the masked sum nor any share behind.
    assert server._total is None
    assert not server._seed_shares and not server._key_shares
    assert not server._answers
    # What the round established before it gave up stays readable; the margin is counted.
    assert server.session.session_id == h.session_id
    assert server.masked_with(0) == tuple(sorted(h.clients[0].neighbours))
    assert server.unmask_answers == 2

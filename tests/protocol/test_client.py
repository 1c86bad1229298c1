"""The client checks every claim of the server, and aborts rather than reveal too much."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort, InputError, UsageError
from secagg.protocol.client import Aborted, Completed
from secagg.protocol.messages import (
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    UnmaskRequest,
)
from tests.protocol.harness import Harness

VICTIM = 2


def _at_unmask(n: int = 6, threshold: int = 3, **skips: list[int]) -> tuple[Harness, UnmaskRequest]:
    h = Harness(n, threshold=threshold)
    h.advertise(skips.get("advertise", []))
    h.share(skips.get("share", []))
    h.mask(skips.get("mask", []))
    request = h.outgoing[VICTIM]
    assert isinstance(request, UnmaskRequest)
    return h, request


def _aborts(h: Harness, request: UnmaskRequest, reason: AbortReason) -> None:
    client = h.clients[VICTIM]
    with pytest.raises(ClientAbort) as caught:
        client.unmask(request)
    assert caught.value.reason is reason
    assert isinstance(client.state, Aborted)


# ----------------------------------------------------------------- honest path
def test_client_reveals_self_mask_shares_of_survivors_and_key_shares_of_the_dropped() -> None:
    h, request = _at_unmask(mask=[4])
    response = h.clients[VICTIM].unmask(request)
    assert {u for u, _ in response.self_mask_shares} == set(request.survivors)
    assert {u for u, _ in response.key_shares} == {4}
    state = h.clients[VICTIM].state
    assert isinstance(state, Completed)
    assert not state.revealed_self_mask_shares_of & state.revealed_key_shares_of


# ----------------------------------------------------------------- unmask-stage claims
def test_client_aborts_when_listed_as_dropped() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, dropped=(*request.dropped, VICTIM))
    _aborts(h, forged, AbortReason.LISTED_AS_DROPPED)


def test_client_aborts_when_asked_for_both_shares_of_one_peer() -> None:
    h, request = _at_unmask()
    peer = request.survivors[0]
    forged = dataclasses.replace(request, dropped=(*request.dropped, peer))
    _aborts(h, forged, AbortReason.BOTH_SHARES_REQUESTED)


def test_client_aborts_when_an_unknown_id_is_listed() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, dropped=(*request.dropped, 999))
    _aborts(h, forged, AbortReason.UNKNOWN_ID)


def test_client_aborts_when_an_id_is_repeated() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, survivors=(*request.survivors, request.survivors[0]))
    _aborts(h, forged, AbortReason.DUPLICATE_ID)


def test_client_aborts_when_a_peer_that_dropped_before_sharing_is_resurrected() -> None:
    h, request = _at_unmask(share=[5])
    assert 5 not in request.survivors + request.dropped
    forged = dataclasses.replace(request, survivors=(*request.survivors, 5))
    _aborts(h, forged, AbortReason.RESURRECTED_ID)


def test_client_aborts_when_fewer_than_threshold_peers_survive() -> None:
    h, request = _at_unmask(n=6, threshold=3)
    survivors = request.survivors[:2]
    dropped = request.dropped + request.survivors[2:]
    forged = dataclasses.replace(request, survivors=survivors, dropped=dropped)
    _aborts(h, forged, AbortReason.BELOW_THRESHOLD)


def test_client_aborts_when_the_request_leaves_out_a_peer() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, survivors=request.survivors[1:])
    _aborts(h, forged, AbortReason.INCOMPLETE_REQUEST)


def test_client_aborts_when_listed_as_its_own_peer() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, survivors=(*request.survivors, VICTIM))
    _aborts(h, forged, AbortReason.SELF_LISTED_AS_PEER)


def test_client_aborts_on_a_request_from_another_session() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, session_id=bytes(32))
    _aborts(h, forged, AbortReason.WRONG_SESSION)


def test_client_aborts_on_a_request_addressed_to_another_client() -> None:
    h, request = _at_unmask()
    forged = dataclasses.replace(request, recipient=VICTIM + 1)
    _aborts(h, forged, AbortReason.WRONG_SESSION)


def test_aborted_client_never_answers_again() -> None:
    h, request = _at_unmask()
    client = h.clients[VICTIM]
    with pytest.raises(ClientAbort):
        client.unmask(dataclasses.replace(request, dropped=(VICTIM,)))
    with pytest.raises(ClientAbort):
        client.unmask(request)


def test_client_answers_at_most_one_unmask_request() -> None:
    h, request = _at_unmask()
    client = h.clients[VICTIM]
    client.unmask(request)
    # A second request (e.g. with the lists swapped) must not get the other kind of share.
    swapped = dataclasses.replace(request, survivors=request.dropped, dropped=request.survivors)
    with pytest.raises(ClientAbort) as caught:
        client.unmask(swapped)
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE


# ----------------------------------------------------------------- earlier claims
def _peer_keys() -> tuple[Harness, PeerKeys]:
    h = Harness(6, threshold=3)
    h.advertise()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerKeys)
    return h, message


def _share_aborts(h: Harness, message: PeerKeys, reason: AbortReason) -> None:
    with pytest.raises(ClientAbort) as caught:
        h.clients[VICTIM].share_keys(message)
    assert caught.value.reason is reason


def test_client_aborts_when_peer_keys_repeat_an_id() -> None:
    h, message = _peer_keys()
    forged = dataclasses.replace(message, peers=(*message.peers, message.peers[0]))
    _share_aborts(h, forged, AbortReason.DUPLICATE_ID)


def test_client_aborts_when_peer_keys_name_a_stranger() -> None:
    h, message = _peer_keys()
    stranger = PeerKeyEntry(77, b"\x09" * 32, b"\x0a" * 32)
    _share_aborts(
        h, dataclasses.replace(message, peers=(*message.peers, stranger)), AbortReason.UNKNOWN_ID
    )


def test_client_aborts_when_two_peers_share_a_public_key() -> None:
    h, message = _peer_keys()
    first, second, *rest = message.peers
    clone = dataclasses.replace(second, mask_public=first.mask_public)
    _share_aborts(
        h, dataclasses.replace(message, peers=(first, clone, *rest)), AbortReason.DUPLICATE_KEY
    )


def test_client_aborts_when_its_own_key_is_handed_back_as_a_peer_key() -> None:
    h, message = _peer_keys()
    own = h.clients[VICTIM].state
    first, *rest = message.peers
    mirrored = dataclasses.replace(first, cipher_public=own.cipher_keys.public)  # type: ignore[union-attr]
    _share_aborts(
        h, dataclasses.replace(message, peers=(mirrored, *rest)), AbortReason.DUPLICATE_KEY
    )


def test_client_aborts_when_too_few_peers_advertised() -> None:
    h, message = _peer_keys()
    _share_aborts(
        h, dataclasses.replace(message, peers=message.peers[:2]), AbortReason.BELOW_THRESHOLD
    )


def test_client_aborts_on_a_small_order_peer_key() -> None:
    h, message = _peer_keys()
    first, *rest = message.peers
    bad = dataclasses.replace(first, cipher_public=bytes(32))
    _share_aborts(h, dataclasses.replace(message, peers=(bad, *rest)), AbortReason.BAD_PEER_KEY)


def test_client_aborts_when_shares_come_from_a_peer_that_never_advertised() -> None:
    h = Harness(6, threshold=3)
    h.advertise(skip=[5])
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    sealed = message.ciphertexts[0][1]
    forged = dataclasses.replace(message, ciphertexts=(*message.ciphertexts, (5, sealed)))
    with pytest.raises(ClientAbort) as caught:
        h.clients[VICTIM].mask_input(forged, h.values(VICTIM))
    assert caught.value.reason is AbortReason.RESURRECTED_ID


def test_client_masks_with_a_peer_whose_sealed_share_is_tampered_and_reports_it() -> None:
    h = Harness(6, threshold=3)
    h.advertise()
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    sender, sealed = message.ciphertexts[0]
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    forged = dataclasses.replace(
        message, ciphertexts=((sender, tampered), *message.ciphertexts[1:])
    )
    reply = h.clients[VICTIM].mask_input(forged, h.values(VICTIM), h.weights[VICTIM])
    assert reply.missing_shares == (sender,)
    assert sender in h.clients[VICTIM].state.masked_with  # type: ignore[union-attr]


def test_client_aborts_on_a_message_out_of_order() -> None:
    h, _ = _peer_keys()
    with pytest.raises(ClientAbort) as caught:
        h.clients[VICTIM].unmask(UnmaskRequest(h.session_id, VICTIM, (), ()))
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE


def test_client_refuses_an_input_of_the_wrong_dimension() -> None:
    h = Harness(6, threshold=3)
    h.advertise()
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    with pytest.raises(InputError):
        h.clients[VICTIM].mask_input(message, np.zeros(h.config.dim + 1))


def test_client_is_created_only_for_a_member_of_the_cohort() -> None:
    h = Harness(5)
    from secagg.protocol.client import Client

    with pytest.raises(UsageError):
        Client(h.config, 42, h.rng)


def test_client_state_and_repr_hide_every_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h, request = _at_unmask()
    client = h.clients[VICTIM]
    state_before = client.state
    client.unmask(request)
    texts = [repr(client), repr(state_before), repr(client.state), caplog.text]
    secrets = [h.session_id.hex()]
    held = state_before.held_shares  # type: ignore[union-attr]
    for a, b in held.values():
        secrets += [hex(a.y), str(a.y), hex(b.y), str(b.y)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_masked_vector_of_a_constant_input_is_statistically_uniform() -> None:
    h = Harness(6, threshold=3, dim=1 << 14, value_bits=4, seed=11)
    h.advertise()
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    constant = np.zeros(h.config.dim)  # the worst case for hiding: every value the same
    reply = h.clients[VICTIM].mask_input(message, constant, 1)
    from secagg.hazmat.ring import Ring

    ring = Ring(h.config.ring_bits)
    masked = ring.unpack(reply.packed_vector, h.config.vector_length).astype(np.int64)
    # Chi-square over 64 equal bins of the ring: 63 degrees of freedom, mean 63, sd ~11.2.
    bins = np.bincount(masked >> (ring.bits - 6), minlength=64)
    expected = len(masked) / 64
    chi_square = float(((bins - expected) ** 2 / expected).sum())
    assert chi_square < 63 + 6 * 11.2
    # Every bit is set in about half the values (5 standard deviations).
    for bit in range(ring.bits):
        ones = int(((masked >> bit) & 1).sum())
        assert abs(ones - len(masked) / 2) < 5 * np.sqrt(len(masked) / 4)

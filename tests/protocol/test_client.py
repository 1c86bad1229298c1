"""The client checks every claim of the server, and aborts rather than reveal too much."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import logging

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort, InputError, UsageError
from secagg.protocol.codec import Message, decode
from secagg.schemes.masking import messages
from secagg.schemes.masking.client import (
    Aborted,
    AwaitingContributions,
    AwaitingDigest,
    AwaitingPeerKeys,
    AwaitingPeerShares,
    AwaitingSurvivorList,
    AwaitingUnmaskRequest,
    Client,
    ClientState,
    Completed,
    Initial,
)
from secagg.schemes.masking.messages import (
    AdvertiseKeys,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ConsistencySignature,
    Contributions,
    EncryptedShares,
    MaskedInput,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    Reveal,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
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
        client.receive(request)
    assert caught.value.reason is reason
    assert isinstance(client.state, Aborted)


# ----------------------------------------------------------------- honest path
def test_client_reveals_self_mask_shares_of_survivors_and_key_shares_of_the_dropped() -> None:
    h, request = _at_unmask(mask=[4])
    response = h.clients[VICTIM].receive(request)
    assert isinstance(response, UnmaskResponse)
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
        client.receive(dataclasses.replace(request, dropped=(VICTIM,)))
    with pytest.raises(ClientAbort):
        client.receive(request)


def test_client_answers_at_most_one_unmask_request() -> None:
    h, request = _at_unmask()
    client = h.clients[VICTIM]
    client.receive(request)
    # A second request (e.g. with the lists swapped) must not get the other kind of share.
    swapped = dataclasses.replace(request, survivors=request.dropped, dropped=request.survivors)
    with pytest.raises(ClientAbort) as caught:
        client.receive(swapped)
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
        h.clients[VICTIM].receive(message)
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
    client = h.clients[VICTIM]
    client.set_input(h.values(VICTIM))
    with pytest.raises(ClientAbort) as caught:
        client.receive(forged)
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
    client = h.clients[VICTIM]
    client.set_input(h.values(VICTIM), h.weights[VICTIM])
    reply = client.receive(forged)
    assert isinstance(reply, MaskedInput)
    assert reply.missing_shares == (sender,)
    assert sender in h.clients[VICTIM].state.masked_with  # type: ignore[union-attr]


def test_client_aborts_on_a_message_out_of_order() -> None:
    h, _ = _peer_keys()
    with pytest.raises(ClientAbort) as caught:
        h.clients[VICTIM].receive(UnmaskRequest(h.session_id, VICTIM, (), ()))
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE


def test_client_refuses_an_input_of_the_wrong_dimension() -> None:
    h = Harness(6, threshold=3)
    h.advertise()
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    client = h.clients[VICTIM]
    with pytest.raises(InputError):
        client.set_input(np.zeros(h.config.dim + 1))
    assert isinstance(client.state, AwaitingPeerShares)  # refused before anything was masked


def test_client_is_created_only_for_a_member_of_the_cohort() -> None:
    h = Harness(5)
    with pytest.raises(UsageError):
        Client(h.config, 42, h.rng)


def test_client_state_and_repr_hide_every_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h, request = _at_unmask()
    client = h.clients[VICTIM]
    state_before = client.state
    client.receive(request)
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
    client = h.clients[VICTIM]
    client.set_input(constant, 1)
    reply = client.receive(message)
    assert isinstance(reply, MaskedInput)
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


# ----------------------------------------------------------------- the one entry point
# Every message a server sends a client, and every message a client sends a server.
SERVER_MESSAGES: tuple[type[Message], ...] = (
    RoundConfig,
    CommitmentDigest,
    CommitRequest,
    Contributions,
    PeerKeys,
    PeerShares,
    SurvivorList,
    UnmaskRequest,
)
CLIENT_MESSAGES: tuple[type[Message], ...] = (
    Commitment,
    Reveal,
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    ConsistencySignature,
    UnmaskResponse,
)
# The server message each state of an active round waits for (a client waiting for the
# contributions may instead be asked to commit again).
ANSWERS: dict[type[ClientState], tuple[type[Message], ...]] = {
    Initial: (RoundConfig,),
    AwaitingDigest: (CommitmentDigest,),
    AwaitingContributions: (Contributions, CommitRequest),
    AwaitingPeerKeys: (PeerKeys,),
    AwaitingPeerShares: (PeerShares,),
    AwaitingSurvivorList: (SurvivorList,),
    AwaitingUnmaskRequest: (UnmaskRequest,),
    Completed: (),
}


def test_the_masking_protocol_has_no_message_beside_these() -> None:
    """So the wrong-state tests below cover every message there is."""
    defined = {
        kind
        for kind in vars(messages).values()
        if isinstance(kind, type) and issubclass(kind, Message) and kind is not Message
    }
    assert defined == set(SERVER_MESSAGES) | set(CLIENT_MESSAGES)


def test_a_client_is_driven_only_through_set_input_start_and_receive() -> None:
    """No stage of the protocol is public: a driver cannot call one out of turn, and
    dispatching on the message type stays inside the protocol."""
    h = Harness(5, threshold=3, agree=False)
    client = h.clients[VICTIM]
    public = {name for name in dir(client) if not name.startswith("_")}
    read_only = {"state", "session", "neighbours", "clipped", "config", "client_id"}
    assert public == {"set_input", "needs_input", "start", "receive"} | read_only
    for name in read_only:
        attribute = inspect.getattr_static(Client, name)
        assert isinstance(attribute, property) and attribute.fset is None, name
    with pytest.raises(AttributeError):
        client.config = h.config  # type: ignore[misc]
    assert not {name for name in vars(client) if not name.startswith("_")}


@functools.cache
def _every_state() -> tuple[Harness, dict[type[ClientState], Client], dict[type[Message], Message]]:
    """An honest active round (the one that passes through every state): the victim as it
    was in each state it waited in, and each message it received or sent."""
    h = Harness(5, threshold=3, active=True, agree=False)
    victim = h.clients[VICTIM]
    seen: dict[type[Message], Message] = {
        RoundConfig: h.config,
        CommitRequest: CommitRequest(h.config.config_id, VICTIM, 2),
    }
    to_server = h.server.receive

    def receive(sender: int, data: Message | bytes) -> None:
        if sender == VICTIM:
            message = decode(data) if isinstance(data, bytes) else data
            seen[type(message)] = message
        to_server(sender, data)

    h.server.receive = receive  # type: ignore[method-assign]
    snapshots: dict[type[ClientState], Client] = {}
    for stage in ("commit", "reveal", "advertise", "share", "mask", "consistency", "unmask"):
        snapshots[type(victim.state)] = copy.copy(victim)
        getattr(h, stage)()
        if VICTIM in h.outgoing:
            seen[type(h.outgoing[VICTIM])] = h.outgoing[VICTIM]
    snapshots[type(victim.state)] = copy.copy(victim)
    assert set(snapshots) == set(ANSWERS)
    assert set(seen) == set(SERVER_MESSAGES) | set(CLIENT_MESSAGES)
    return h, snapshots, seen


def _unexpected(state: type[ClientState], message: Message) -> None:
    h, snapshots, _ = _every_state()
    client = copy.copy(snapshots[state])  # the cached snapshot stays as it is
    client.set_input(h.values(VICTIM), h.weights[VICTIM])  # so PeerShares is a protocol error
    with pytest.raises(ClientAbort) as caught:
        client.receive(message)
    assert caught.value.reason is AbortReason.UNEXPECTED_MESSAGE
    assert isinstance(client.state, Aborted)
    client.set_input(h.values(VICTIM), h.weights[VICTIM])
    with pytest.raises(ClientAbort) as again:  # and it never answers again
        client.receive(message)
    assert again.value.reason is AbortReason.UNEXPECTED_MESSAGE


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        pytest.param(state, kind, id=f"{kind.__name__}-in-{state.__name__}")
        for state, answered in ANSWERS.items()
        for kind in SERVER_MESSAGES
        if kind not in answered
    ],
)
def test_every_server_message_in_the_wrong_state_is_an_unexpected_message_abort(
    state: type[ClientState], kind: type[Message]
) -> None:
    _, _, seen = _every_state()
    _unexpected(state, seen[kind])


@pytest.mark.parametrize("state", list(ANSWERS), ids=lambda s: s.__name__)
def test_a_client_message_sent_to_a_client_is_an_unexpected_message_abort_in_any_state(
    state: type[ClientState],
) -> None:
    _, _, seen = _every_state()
    for kind in CLIENT_MESSAGES:
        _unexpected(state, seen[kind])


def test_each_state_answers_the_message_it_waits_for() -> None:
    """The other half of the dispatch: the right message in the right state is answered."""
    h, snapshots, seen = _every_state()
    for state, answered in ANSWERS.items():
        for kind in answered:
            client = copy.copy(snapshots[state])
            client.set_input(h.values(VICTIM), h.weights[VICTIM])
            assert isinstance(client.receive(seen[kind].encode()), Message), kind.__name__
            assert not isinstance(client.state, (Aborted, state)), kind.__name__


def test_the_masked_input_stage_needs_the_input_set_first() -> None:
    """Forgetting the input is the driver's misuse, not the server's: no abort, and the
    client answers once it has its input."""
    h = Harness(5, threshold=3, agree=False)
    client = h.clients[VICTIM] = Client(h.config, VICTIM, h.rng.fork("no input yet"))
    h.agree()
    h.advertise()
    h.share()
    message = h.outgoing[VICTIM]
    assert isinstance(message, PeerShares)
    assert client.needs_input(message) and not client.needs_input(h.config)
    with pytest.raises(UsageError):
        client.receive(message)
    assert isinstance(client.state, AwaitingPeerShares)
    client.set_input(h.values(VICTIM), h.weights[VICTIM])
    assert isinstance(client.receive(message), MaskedInput)

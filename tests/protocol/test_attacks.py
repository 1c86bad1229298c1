"""A malicious coordinator, scripted, against real clients.

Each test plays one published attack on secure aggregation. The attacker *is* the server:
it sees every message, writes every message the clients receive, and keeps whatever they
answer. The verdict is never just "a client raised": after the attack the test hands the
attacker's loot to ``Attacker.recover`` -- which reconstructs whatever secrets the loot allows
and strips the masks it can -- and checks whether the victim's input came out.

Where an attack still works against semi-honest mode, the test says so explicitly: those
are the reasons docs/THREAT_MODEL.md gives for active mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort
from secagg.hazmat import aead
from secagg.hazmat.keys import X25519KeyPair
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.shamir import Share
from secagg.protocol.codec import Message
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.messages import (
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.protocol.harness import Harness
from tests.protocol.loot import Loot

VICTIM = 0


class Attacker(Loot):
    """Everything a malicious server holds, and what it can compute from it."""

    def __init__(self, h: Harness) -> None:
        super().__init__(h.config, h.session_id)
        self.h = h
        self.aborts: dict[int, AbortReason] = {}

    # ------------------------------------------------------------------ driving clients
    def ask(self, client: int, message: Message) -> Message | None:
        """Deliver a message (to the client's one entry point, with its input when the message
        uses it); a client that aborts answers nothing (and that is recorded)."""
        c = self.h.clients[client]
        if c.needs_input(message):
            c.set_input(self.h.values(client), self.h.weights[client])
        try:
            return c.receive(message)
        except ClientAbort as exc:
            self.aborts[client] = exc.reason
            return None

    def advertise(self) -> dict[int, PeerKeys]:
        h = self.h
        for i in h.clients:
            advert = h.adverts[i]  # each client's answer to the contributions that agreed it
            self.take(i, advert)
            h.server.receive(i, advert)
        out = h.server.close_stage()
        return {i: m for i, m in out.items() if isinstance(m, PeerKeys)}

    def share(self, peer_keys: dict[int, PeerKeys]) -> dict[int, PeerShares]:
        h = self.h
        for i, message in peer_keys.items():
            reply = self.ask(i, message)
            if isinstance(reply, EncryptedShares):
                self.take(i, reply)
                h.server.receive(i, reply)
        out = h.server.close_stage()
        return {i: m for i, m in out.items() if isinstance(m, PeerShares)}

    def mask(self, peer_shares: dict[int, PeerShares], skip: Iterable[int] = ()) -> None:
        h = self.h
        for i, message in peer_shares.items():
            if i in set(skip):
                continue
            reply = self.ask(i, message)
            if isinstance(reply, MaskedInput):
                self.take(i, reply)
                self.sent(i, message)
                h.server.receive(i, reply)

    def sign(self, client: int, survivors: tuple[int, ...]) -> bytes | None:
        message = SurvivorList(self.h.session_id, client, survivors)
        reply = self.ask(client, message)
        return reply.signature if isinstance(reply, ConsistencySignature) else None

    def unmask(self, client: int, request: UnmaskRequest) -> None:
        reply = self.ask(client, request)
        if isinstance(reply, UnmaskResponse):
            self.take(client, reply)

    def request(
        self,
        client: int,
        survivors: Iterable[int],
        dropped: Iterable[int],
        signatures: tuple[tuple[int, bytes], ...] = (),
    ) -> UnmaskRequest:
        view = self.masked_with[client]
        return UnmaskRequest(
            self.h.session_id,
            client,
            tuple(u for u in sorted(view) if u in set(survivors)),
            tuple(u for u in sorted(view) if u in set(dropped)),
            tuple((s, sig) for s, sig in signatures if s != client),  # peers' signatures only
        )

    def peer_keys(self, session: dict[int, bytes]) -> dict[int, PeerKeys]:
        """PeerKeys for everyone, built by the attacker itself (complete graph)."""
        out = {}
        for i in self.h.clients:
            entries = tuple(
                PeerKeyEntry(v, m.cipher_public, m.mask_public, m.signature)
                for v, m in sorted(self.adverts.items())
                if v != i
            )
            out[i] = PeerKeys(session[i], i, entries)
        return out

    def peer_shares(self, session: dict[int, bytes]) -> dict[int, PeerShares]:
        return {
            v: PeerShares(
                session[v],
                v,
                tuple((u, sealed[v]) for u, sealed in sorted(self.sealed.items()) if v in sealed),
            )
            for v in self.sealed
        }

    def learned_input_of(self, owner: int) -> bool:
        recovered = self.recover(owner)
        return recovered is not None and bool(
            np.array_equal(recovered, self.h.expected_total([owner]))
        )


def _rounds(active: bool, **kwargs: object) -> tuple[Harness, Attacker]:
    h = Harness(active=active, **kwargs)  # type: ignore[arg-type]
    return h, Attacker(h)


# ---------------------------------------------------------------------------- the attacks
@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_asking_for_both_shares_of_one_client_through_split_views(active: bool) -> None:
    """Tell half the clients the victim survived and the other half it dropped."""
    n = 9
    _h, a = _rounds(active, n=n, threshold=5 if active else 4)
    a.mask(a.share(a.advertise()))
    others = [i for i in range(n) if i != VICTIM]
    group_a, group_b = others[:4], others[4:]
    everyone = tuple(range(n))
    without_victim = tuple(i for i in everyone if i != VICTIM)
    if active:
        # The best it can do: each group signs the set it was shown, and gets its own
        # group's signatures back -- never t of them for either set.
        sigs_a = {i: a.sign(i, everyone) for i in [VICTIM, *group_a]}
        sigs_b = {i: a.sign(i, without_victim) for i in group_b}
        for group, sigs, survivors in (
            (group_a, sigs_a, everyone),
            (group_b, sigs_b, without_victim),
        ):
            forwarded = tuple((s, sig) for s, sig in sigs.items() if sig is not None)
            for i in group:
                dropped = set(everyone) - set(survivors)
                a.unmask(i, a.request(i, survivors, dropped, forwarded))
        assert all(a.aborts.get(i) is AbortReason.BELOW_THRESHOLD for i in others)
    else:
        for i in group_a:
            a.unmask(i, a.request(i, everyone, ()))
        for i in group_b:
            a.unmask(i, a.request(i, [u for u in everyone if u != VICTIM], [VICTIM]))
    if active:
        assert not a.learned_input_of(VICTIM)
        assert a.self_mask_seed(VICTIM) is None and a.mask_key(VICTIM) is None
    else:
        # Semi-honest mode trusts the server's dropout lists: the attack works.
        assert a.learned_input_of(VICTIM)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_showing_different_survivor_sets_to_different_clients(active: bool) -> None:
    """Two groups, two survivor sets, no victim in particular: nobody may unmask."""
    n = 8
    _h, a = _rounds(active, n=n, threshold=5 if active else 3)
    a.mask(a.share(a.advertise()))
    first, second = tuple(range(0, 5)), tuple(range(3, 8))
    if not active:
        # Clients never see the survivor set, only their own part of it: each request is
        # self-consistent, and client 0 is a survivor to the first group, dropped to the other.
        for i in range(n):
            survivors = first if i < 4 else second
            if i in survivors:
                a.unmask(i, a.request(i, survivors, set(range(n)) - set(survivors)))
        assert a.learned_input_of(0)
        return
    sigs = {i: a.sign(i, first if i < 4 else second) for i in range(n)}
    for i in range(n):
        survivors = first if i < 4 else second
        forwarded = tuple(
            (s, sig) for s, sig in sigs.items() if sig is not None and (s < 4) == (i < 4)
        )
        if i in survivors:
            a.unmask(i, a.request(i, survivors, set(range(n)) - set(survivors), forwarded))
    assert not a.self_mask_shares and not a.key_shares
    assert not any(a.learned_input_of(i) for i in range(n))


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_dropping_a_client_after_its_masked_input_does_not_unmask_it(active: bool) -> None:
    """Declare the victim dropped after taking its masked input, to collect its key."""
    n = 7
    _h, a = _rounds(active, n=n, threshold=4)
    a.mask(a.share(a.advertise()))
    assert VICTIM in a.masked
    survivors = tuple(i for i in range(n) if i != VICTIM)
    sigs: tuple[tuple[int, bytes], ...] = ()
    if active:
        signed = {i: a.sign(i, survivors) for i in survivors}
        sigs = tuple((s, sig) for s, sig in signed.items() if sig is not None)
    for i in survivors:
        a.unmask(i, a.request(i, survivors, [VICTIM], sigs))
    # It has the victim's pairwise-mask key, but the self mask still hides the input.
    assert a.mask_key(VICTIM) is not None
    assert a.self_mask_seed(VICTIM) is None
    assert not a.learned_input_of(VICTIM)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_listing_a_client_as_dropped_to_itself(active: bool) -> None:
    _h, a = _rounds(active, n=6, threshold=4)
    a.mask(a.share(a.advertise()))
    everyone = tuple(range(6))
    if active:
        a.sign(VICTIM, tuple(i for i in everyone if i != VICTIM))
        assert a.aborts[VICTIM] is AbortReason.LISTED_AS_DROPPED
    else:
        a.unmask(VICTIM, dataclasses.replace(a.request(VICTIM, everyone, ()), dropped=(VICTIM,)))
        assert a.aborts[VICTIM] is AbortReason.LISTED_AS_DROPPED
    assert VICTIM not in {h for shares in a.key_shares.values() for h in shares}
    assert not a.learned_input_of(VICTIM)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (
            lambda r: dataclasses.replace(r, survivors=(*r.survivors, r.survivors[0])),
            AbortReason.DUPLICATE_ID,
        ),
        (lambda r: dataclasses.replace(r, dropped=(*r.dropped, 77)), AbortReason.UNKNOWN_ID),
    ],
    ids=["repeated-id", "invented-id"],
)
def test_repeating_or_inventing_ids(active: bool, forge: object, reason: AbortReason) -> None:
    _h, a = _rounds(active, n=6, threshold=4)
    a.mask(a.share(a.advertise()))
    everyone = tuple(range(6))
    sigs: tuple[tuple[int, bytes], ...] = ()
    if active:
        signed = {i: a.sign(i, everyone) for i in everyone}
        sigs = tuple((s, sig) for s, sig in signed.items() if sig is not None)
    a.unmask(1, forge(a.request(1, everyone, (), sigs)))  # type: ignore[operator]
    assert a.aborts[1] is reason
    assert 1 not in {holder for shares in a.self_mask_shares.values() for holder in shares}


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_replaying_messages_from_another_session(active: bool) -> None:
    """Hand a client the keys a peer advertised in an earlier round, and an old request."""
    old, old_attacker = _rounds(active, n=6, threshold=4, seed=10)
    old_attacker.advertise()
    h, a = _rounds(active, n=6, threshold=4, seed=11)
    peer_keys = a.advertise()
    stale = old_attacker.adverts[2]
    message = peer_keys[1]
    replayed = tuple(
        PeerKeyEntry(e.client_id, stale.cipher_public, stale.mask_public, stale.signature)
        if e.client_id == 2
        else e
        for e in message.peers
    )
    reply = a.ask(1, dataclasses.replace(message, peers=replayed))
    if active:
        assert reply is None and a.aborts[1] is AbortReason.BAD_SIGNATURE
    else:
        # Semi-honest mode cannot tell an old key from a new one.
        assert isinstance(reply, EncryptedShares)
    # A whole message from the other session is refused in either mode.
    with pytest.raises(ClientAbort) as caught:
        h.clients[3].receive(dataclasses.replace(peer_keys[3], session_id=old.session_id))
    assert caught.value.reason is AbortReason.WRONG_SESSION


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_substituting_public_keys_to_decrypt_a_victims_shares(active: bool) -> None:
    """Give the victim attacker-made keys for t of its peers: their shares open for it."""
    n = 7
    h, a = _rounds(active, n=n, threshold=4)
    peer_keys = a.advertise()
    forged_keys = {
        u: (
            X25519KeyPair.generate(DeterministicRandomness(bytes([u]) * 32)),
            X25519KeyPair.generate(DeterministicRandomness(bytes([u + 100]) * 32)),
        )
        for u in (1, 2, 3, 4)
    }
    message = peer_keys[VICTIM]
    entries = tuple(
        PeerKeyEntry(
            e.client_id,
            forged_keys[e.client_id][0].public,
            forged_keys[e.client_id][1].public,
            e.signature,
        )
        if e.client_id in forged_keys
        else e
        for e in message.peers
    )
    peer_keys[VICTIM] = dataclasses.replace(message, peers=entries)
    peer_shares = a.share(peer_keys)
    if active:
        assert a.aborts[VICTIM] is AbortReason.BAD_SIGNATURE
        assert VICTIM not in a.sealed
        assert not a.learned_input_of(VICTIM)
        return
    # The attacker opens what the victim sealed "for" the substituted peers.
    sid = h.session_id
    victim_cipher = a.adverts[VICTIM].cipher_public
    for u, (cipher, _) in forged_keys.items():
        key = derive.share_encryption_key(
            cipher.exchange(victim_cipher), sid, VICTIM, victim_cipher, u, cipher.public
        )
        plain = aead.open_sealed(
            key, a.sealed[VICTIM][u], derive.share_associated_data(sid, VICTIM, u)
        )
        _, _, seed_share, key_share = derive.decode_share_plaintext(plain)
        x = derive.share_x(u)
        a.self_mask_shares.setdefault(VICTIM, {})[u] = Share.from_value_bytes(x, seed_share)
        a.key_shares.setdefault(VICTIM, {})[u] = Share.from_value_bytes(x, key_share)
    # The victim's own pairwise masks with the forged peers use keys the attacker made.
    a.mask(peer_shares)
    a.adverts.update(
        {
            u: dataclasses.replace(a.adverts[u], mask_public=k[1].public)
            for u, k in forged_keys.items()
        }
    )
    assert a.learned_input_of(VICTIM)  # semi-honest mode: the victim's input is out


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_sending_different_models_to_different_clients(active: bool) -> None:
    """Model inconsistency (Pasquini et al. 2022): the victim alone gets model B, whose hash
    is in its session id; the attacker relabels messages to make the sessions meet."""
    n = 7
    honest = Harness(n, threshold=4, active=active, seed=20, task_hash=b"A" * 32)
    isolated = Harness(n, threshold=4, active=active, seed=20, task_hash=b"B" * 32)
    # The victim agreed on its session of model B (and advertised its keys for it); the
    # others on theirs, of model A.
    honest.clients[VICTIM] = isolated.clients[VICTIM]
    honest.adverts[VICTIM] = isolated.adverts[VICTIM]
    a = Attacker(honest)
    session = {i: honest.session_id for i in range(n)}
    session[VICTIM] = isolated.session_id
    for i in honest.clients:
        a.adverts[i] = honest.adverts[i]
    peer_keys = a.peer_keys(session)
    for i, message in peer_keys.items():
        reply = a.ask(i, message)
        if isinstance(reply, EncryptedShares):
            a.take(i, reply)
    if active:
        # The victim's keys are signed for session B: every peer refuses them, and the
        # victim refuses theirs, signed for session A.
        assert all(a.aborts[i] is AbortReason.BAD_SIGNATURE for i in range(n))
        assert not a.sealed
        return
    a.mask(a.peer_shares(session))
    # What the victim sealed is bound to session B: no peer could open its shares.
    for i in range(1, n):
        a.unmask(i, a.request(i, tuple(range(n)), ()))
    assert not a.self_mask_shares.get(VICTIM)
    assert not a.learned_input_of(VICTIM)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_revealing_a_sum_below_the_minimum_cohort(active: bool) -> None:
    """Claim 7 of 10 survived, with 8 the minimum: the sum of those 7 is what it wants."""
    n, survivors = 10, tuple(range(7))
    h, a = _rounds(active, n=n, threshold=6, min_cohort=8)
    a.mask(a.share(a.advertise()))
    dropped = tuple(range(7, n))
    signatures: tuple[tuple[int, bytes], ...] = ()
    if active:
        for i in survivors:
            a.sign(i, survivors)
        assert all(a.aborts[i] is AbortReason.COHORT_TOO_SMALL for i in survivors)
    for i in survivors:
        if i not in a.aborts:
            a.unmask(i, a.request(i, survivors, dropped, signatures))
    revealed = a.sum_of(survivors, dropped)
    if active:
        assert revealed is None
    else:
        # Semi-honest clients never see the global survivor set: the small sum is out.
        assert revealed is not None
        assert np.array_equal(revealed, h.expected_total(survivors))

"""The client's side of one round, as a sans-I/O state machine.

A ``Client`` is created from the round's ``RoundConfig`` and walks through four states, one
per message it answers::

    Initial --advertise()--> AwaitingPeerKeys --share_keys(PeerKeys)--> AwaitingPeerShares
      --mask_input(PeerShares, x)--> [AwaitingSurvivorList --consistency(SurvivorList)-->]
      AwaitingUnmaskRequest --unmask(UnmaskRequest)--> Completed

The bracketed step is active mode (a ``semi-malicious`` server model): the client signs its
advertised keys with its long-term identity and checks every peer's signature, then signs
the survivor set it is shown and unmasks only if at least t of its neighbours signed the very
same set -- so a server cannot show two groups two different sets and collect both kinds of
share of one client.

Any claim of the server that does not check out moves it to ``Aborted`` and raises
``ClientAbort``; an aborted client never answers again. Above all, the client never reveals
both the self-mask share and the key share of one peer: for a survivor it reveals only the
self-mask share, for a dropped peer only the key share, and the two lists must be disjoint
and cover exactly the neighbours it masked with.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    AuthenticationError,
    ClientAbort,
    CryptoError,
    DecodeError,
    UsageError,
)
from secagg.hazmat import aead, prg
from secagg.hazmat.keys import Ed25519SigningKey, X25519KeyPair, ed25519_verify
from secagg.hazmat.quantize import Quantizer
from secagg.hazmat.randomness import Randomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, split
from secagg.protocol import derive
from secagg.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    Message,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "Aborted",
    "AwaitingPeerKeys",
    "AwaitingPeerShares",
    "AwaitingSurvivorList",
    "AwaitingUnmaskRequest",
    "Client",
    "ClientState",
    "Completed",
    "Initial",
]

SEED_BYTES = 32

S = TypeVar("S")


@dataclass(frozen=True)
class Initial:
    """Created, nothing sent yet."""


@dataclass(frozen=True)
class AwaitingPeerKeys:
    """Advertised two fresh public keys; waits for its neighbours' keys."""

    cipher_keys: X25519KeyPair = field(repr=False)
    mask_keys: X25519KeyPair = field(repr=False)


@dataclass(frozen=True)
class AwaitingPeerShares:
    """Sent sealed shares of its secrets to ``peers``; waits for theirs."""

    mask_keys: X25519KeyPair = field(repr=False)
    peers: Mapping[int, PeerKeyEntry] = field(repr=False)
    share_keys: Mapping[int, bytes] = field(repr=False)  # AEAD key shared with each peer
    self_mask_seed: bytes = field(repr=False)


@dataclass(frozen=True)
class AwaitingSurvivorList:
    """Active mode: sent its masked input; waits for the survivor set to sign."""

    masked_with: frozenset[int]
    held_shares: Mapping[int, tuple[Share, Share]] = field(repr=False)  # (self-mask, key)
    clipped: int


@dataclass(frozen=True)
class AwaitingUnmaskRequest:
    """Sent its masked input; ``masked_with`` are the peers whose pairwise masks it added.

    In active mode ``survivors`` is the survivor set it signed; the request must match it.
    """

    masked_with: frozenset[int]
    held_shares: Mapping[int, tuple[Share, Share]] = field(repr=False)  # (self-mask, key)
    clipped: int
    survivors: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Completed:
    """Answered the unmask request: revealed one kind of share per peer, never both."""

    revealed_self_mask_shares_of: frozenset[int]
    revealed_key_shares_of: frozenset[int]
    clipped: int


@dataclass(frozen=True)
class Aborted:
    reason: AbortReason
    detail: str


ClientState = (
    Initial
    | AwaitingPeerKeys
    | AwaitingPeerShares
    | AwaitingSurvivorList
    | AwaitingUnmaskRequest
    | Completed
    | Aborted
)


class Client:
    """One client's participation in one round."""

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        rng: Randomness,
        *,
        identity: Ed25519SigningKey | None = None,
        pki: Mapping[int, bytes] | None = None,
    ) -> None:
        """``identity`` (this client's long-term signing key) and ``pki`` (every cohort
        member's identity public key) are required in active mode."""
        if client_id not in config.cohort:
            raise UsageError(f"client {client_id} is not in the round's cohort")
        if config.active and (identity is None or pki is None):
            raise UsageError("active mode needs the client's identity and the peers' public keys")
        self._identity = identity
        self._pki = dict(pki or {})
        self.config = config
        self.client_id = client_id
        self._rng = rng
        self._ring = Ring(config.ring_bits)
        self._quantizer = Quantizer(clip=config.clip, bits=config.value_bits)
        self._neighbours = frozenset(derive.neighbours(config, client_id))
        self._cohort = config.cohort
        self._state: ClientState = Initial()

    def __repr__(self) -> str:
        return f"Client(id={self.client_id}, state={type(self._state).__name__})"

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def neighbours(self) -> frozenset[int]:
        return self._neighbours

    # ----------------------------------------------------------------- round 0
    def advertise(self) -> AdvertiseKeys:
        self._expect(Initial)
        cipher_keys = X25519KeyPair.generate(self._rng)
        mask_keys = X25519KeyPair.generate(self._rng)
        self._state = AwaitingPeerKeys(cipher_keys, mask_keys)
        sid = self.config.session_id
        signature = b""
        if self.config.active:
            assert self._identity is not None
            signature = self._identity.sign(
                derive.advertise_signed_bytes(
                    sid, self.client_id, cipher_keys.public, mask_keys.public
                )
            )
        return AdvertiseKeys(sid, self.client_id, cipher_keys.public, mask_keys.public, signature)

    # ----------------------------------------------------------------- round 1
    def share_keys(self, message: PeerKeys) -> EncryptedShares:
        state = self._expect(AwaitingPeerKeys, message, PeerKeys)
        self._check_addressed(message.session_id, message.recipient)
        ids = [p.client_id for p in message.peers]
        self._check_ids(ids, allowed=self._neighbours, earlier_dropped=frozenset())
        self._check_enough(len(ids), "neighbours advertised keys")
        if self.config.active:
            for p in message.peers:
                self._check_signature(
                    p.client_id,
                    derive.advertise_signed_bytes(
                        message.session_id, p.client_id, p.cipher_public, p.mask_public
                    ),
                    p.signature,
                )
        own = {state.cipher_keys.public, state.mask_keys.public}
        seen: set[bytes] = set()
        for p in message.peers:
            for key in (p.cipher_public, p.mask_public):
                if key in own or key in seen:
                    self._abort(AbortReason.DUPLICATE_KEY, f"peer {p.client_id} reuses a key")
                seen.add(key)
        peers = {p.client_id: p for p in message.peers}
        seed = self._rng.bytes(SEED_BYTES)
        xs = [derive.share_x(v) for v in ids]
        t = self.config.threshold
        seed_shares = split(seed, xs, t, self._rng)
        key_shares = split(state.mask_keys.private_bytes(), xs, t, self._rng)
        sid = self.config.session_id
        ciphertexts = []
        share_keys: dict[int, bytes] = {}
        for v, seed_share, key_share in zip(ids, seed_shares, key_shares, strict=True):
            key = share_keys[v] = self._share_key(state.cipher_keys, peers[v])
            plaintext = derive.encode_share_plaintext(
                self.client_id, v, seed_share.value_bytes(), key_share.value_bytes()
            )
            sealed = aead.seal(
                key, plaintext, derive.share_associated_data(sid, self.client_id, v), self._rng
            )
            ciphertexts.append((v, sealed))
        self._state = AwaitingPeerShares(state.mask_keys, peers, share_keys, seed)
        return EncryptedShares(
            sid,
            self.client_id,
            derive.self_mask_commitment(seed, sid, self.client_id),
            tuple(ciphertexts),
        )

    # ----------------------------------------------------------------- round 2
    def mask_input(
        self, message: PeerShares, values: NDArray[np.floating], weight: int = 1
    ) -> MaskedInput:
        state = self._expect(AwaitingPeerShares, message, PeerShares)
        self._check_addressed(message.session_id, message.recipient)
        senders = [sender for sender, _ in message.ciphertexts]
        self._check_ids(senders, allowed=frozenset(state.peers), earlier_dropped=self._neighbours)
        self._check_enough(len(senders), "neighbours shared keys")
        if not 0 <= weight <= self.config.max_weight:
            raise UsageError(f"weight must be in [0, {self.config.max_weight}]")
        sid = self.config.session_id
        held: dict[int, tuple[Share, Share]] = {}
        missing: list[int] = []
        for sender, sealed in message.ciphertexts:
            shares = self._open_share(state, sender, sealed)
            if shares is None:
                missing.append(sender)  # still masked with: the pairwise key needs no share
            else:
                held[sender] = shares
        encoded = self._quantizer.encode(np.asarray(values), weight, self._ring, self._rng)
        vector = encoded.vector
        if vector.shape != (self.config.vector_length,):
            raise UsageError(
                f"input has {vector.shape[0] - 1} values; the round expects {self.config.dim}"
            )
        scratch = np.empty(min(len(vector), 1 << 16), dtype=vector.dtype)
        prg.add_mask(
            vector,
            derive.self_mask_key(state.self_mask_seed, sid, self.client_id),
            scratch=scratch,
        )
        for sender in senders:
            peer = state.peers[sender]
            try:
                shared = state.mask_keys.exchange(peer.mask_public)
            except CryptoError:
                self._abort(AbortReason.BAD_PEER_KEY, f"peer {sender}'s mask key is invalid")
            key = derive.pair_mask_key(
                shared, sid, self.client_id, state.mask_keys.public, sender, peer.mask_public
            )
            prg.add_mask(
                vector,
                key,
                subtract=derive.subtracts_pair_mask(self.client_id, sender),
                scratch=scratch,
            )
        self._ring.reduce(vector)
        packed = self._ring.pack(vector)
        if self.config.active:
            self._state = AwaitingSurvivorList(frozenset(senders), held, encoded.clipped)
        else:
            self._state = AwaitingUnmaskRequest(frozenset(senders), held, encoded.clipped)
        return MaskedInput(sid, self.client_id, tuple(missing), packed)

    # ----------------------------------------------------------------- consistency (active)
    def consistency(self, message: SurvivorList) -> ConsistencySignature:
        state = self._expect(AwaitingSurvivorList, message, SurvivorList)
        self._check_addressed(message.session_id, message.recipient)
        survivors = message.survivors
        if any(b <= a for a, b in itertools.pairwise(survivors)):
            self._abort(AbortReason.DUPLICATE_ID, "the survivor set is not sorted and unique")
        if self.client_id not in survivors:
            self._abort(AbortReason.LISTED_AS_DROPPED, "the survivor set leaves this client out")
        for u in survivors:
            if u not in self._cohort:
                self._abort(AbortReason.UNKNOWN_ID, f"survivor {u} is not in the cohort")
            if u in self._neighbours and u not in state.masked_with:
                self._abort(AbortReason.RESURRECTED_ID, f"peer {u} had already dropped")
        if len(survivors) < self.config.min_cohort:
            self._abort(
                AbortReason.COHORT_TOO_SMALL,
                f"{len(survivors)} inputs in the sum; the minimum is {self.config.min_cohort}",
            )
        self._check_enough(
            sum(1 for u in survivors if u in state.masked_with), "neighbours survived"
        )
        assert self._identity is not None
        signature = self._identity.sign(
            derive.consistency_signed_bytes(self.config.session_id, survivors)
        )
        self._state = AwaitingUnmaskRequest(
            state.masked_with, state.held_shares, state.clipped, survivors
        )
        return ConsistencySignature(self.config.session_id, self.client_id, signature)

    # ----------------------------------------------------------------- round 3
    def unmask(self, message: UnmaskRequest) -> UnmaskResponse:
        state = self._expect(AwaitingUnmaskRequest, message, UnmaskRequest)
        self._check_addressed(message.session_id, message.recipient)
        if self.client_id in message.dropped:
            self._abort(AbortReason.LISTED_AS_DROPPED, "the server lists this client as dropped")
        survivors, dropped = list(message.survivors), list(message.dropped)
        # Both lists together must name each masked-with peer exactly once: a peer in both
        # would have both its secrets revealed.
        both = set(survivors) & set(dropped)
        if both:
            self._abort(
                AbortReason.BOTH_SHARES_REQUESTED,
                f"{len(both)} peer(s) listed as both survivor and dropped",
            )
        self._check_ids(
            survivors + dropped, allowed=state.masked_with, earlier_dropped=self._neighbours
        )
        if len(survivors) + len(dropped) != len(state.masked_with):
            self._abort(
                AbortReason.INCOMPLETE_REQUEST,
                "the request does not account for every neighbour this client masked with",
            )
        self._check_enough(len(survivors), "neighbours survived")
        if state.survivors is not None:
            self._check_consistent(state, message)
        self_mask_shares = tuple(
            (u, state.held_shares[u][0].value_bytes()) for u in survivors if u in state.held_shares
        )
        key_shares = tuple(
            (u, state.held_shares[u][1].value_bytes()) for u in dropped if u in state.held_shares
        )
        self._state = Completed(
            frozenset(u for u, _ in self_mask_shares),
            frozenset(u for u, _ in key_shares),
            state.clipped,
        )
        return UnmaskResponse(self.config.session_id, self.client_id, self_mask_shares, key_shares)

    # ----------------------------------------------------------------- checks
    def _expect(
        self, expected: type[S], message: object = None, kind: type[Message] | None = None
    ) -> S:
        state = self._state
        if isinstance(state, Aborted):
            raise ClientAbort(state.reason, "this client has already aborted")
        if kind is not None and not isinstance(message, kind):
            self._abort(
                AbortReason.UNEXPECTED_MESSAGE,
                f"got {type(message).__name__} where {kind.__name__} was expected",
            )
        if not isinstance(state, expected):
            what = type(message).__name__ if message is not None else "this call"
            self._abort(
                AbortReason.UNEXPECTED_MESSAGE,
                f"{what} is not expected in state {type(state).__name__}",
            )
        return state

    def _abort(self, reason: AbortReason, detail: str) -> NoReturn:
        self._state = Aborted(reason, detail)
        raise ClientAbort(reason, detail)

    def _check_addressed(self, session_id: bytes, recipient: int) -> None:
        if session_id != self.config.session_id:
            self._abort(AbortReason.WRONG_SESSION, "message belongs to another session")
        if recipient != self.client_id:
            self._abort(AbortReason.WRONG_SESSION, "message is addressed to another client")

    def _check_ids(
        self, ids: list[int], *, allowed: frozenset[int], earlier_dropped: frozenset[int]
    ) -> None:
        """Every id must be allowed now, named once, and not be this client itself."""
        seen: set[int] = set()
        for i in ids:
            if i == self.client_id:
                self._abort(AbortReason.SELF_LISTED_AS_PEER, "this client is listed as a peer")
            if i in seen:
                self._abort(AbortReason.DUPLICATE_ID, f"peer {i} is listed twice")
            seen.add(i)
            if i not in allowed:
                if i in earlier_dropped:
                    self._abort(AbortReason.RESURRECTED_ID, f"peer {i} had already dropped")
                self._abort(AbortReason.UNKNOWN_ID, f"peer {i} is not a neighbour here")

    def _check_signature(self, signer: int, signed: bytes, signature: bytes) -> None:
        public = self._pki.get(signer)
        if public is None:
            self._abort(AbortReason.UNKNOWN_ID, f"no identity key for client {signer}")
        try:
            ed25519_verify(public, signed, signature)
        except AuthenticationError:
            self._abort(AbortReason.BAD_SIGNATURE, f"client {signer}'s signature does not verify")

    def _check_consistent(self, state: AwaitingUnmaskRequest, message: UnmaskRequest) -> None:
        """The request must follow from the signed survivor set, which t neighbours signed."""
        assert state.survivors is not None
        signed = set(state.survivors)
        if (
            set(message.survivors) != state.masked_with & signed
            or set(message.dropped) != state.masked_with - signed
        ):
            self._abort(
                AbortReason.INCONSISTENT_SURVIVORS,
                "the request does not match the survivor set this client signed",
            )
        payload = derive.consistency_signed_bytes(self.config.session_id, state.survivors)
        signers: set[int] = set()
        for signer, _ in message.signatures:
            if signer in signers:
                self._abort(AbortReason.DUPLICATE_ID, f"two signatures from client {signer}")
            if signer not in signed or signer not in self._neighbours:
                self._abort(AbortReason.UNKNOWN_ID, f"signature from non-survivor {signer}")
            signers.add(signer)
        # t valid signatures from distinct surviving neighbours are what is needed; checking
        # more would only cost time (each Ed25519 verification is ~50 us).
        self._check_enough(len(signers), "neighbours signed the same survivor set")
        for signer, signature in message.signatures[: self.config.threshold]:
            self._check_signature(signer, payload, signature)

    def _check_enough(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._abort(
                AbortReason.BELOW_THRESHOLD,
                f"only {count} {what}; the threshold is {self.config.threshold}",
            )

    def _share_key(self, cipher_keys: X25519KeyPair, peer: PeerKeyEntry) -> bytes:
        try:
            shared = cipher_keys.exchange(peer.cipher_public)
        except CryptoError:
            self._abort(AbortReason.BAD_PEER_KEY, f"peer {peer.client_id}'s cipher key is invalid")
        return derive.share_encryption_key(
            shared,
            self.config.session_id,
            self.client_id,
            cipher_keys.public,
            peer.client_id,
            peer.cipher_public,
        )

    def _open_share(
        self, state: AwaitingPeerShares, sender: int, sealed: bytes
    ) -> tuple[Share, Share] | None:
        """The sender's shares for this client, or None if they do not open or do not fit."""
        key = state.share_keys[sender]
        associated = derive.share_associated_data(self.config.session_id, sender, self.client_id)
        try:
            plaintext = aead.open_sealed(key, sealed, associated)
            origin, recipient, seed_share, key_share = derive.decode_share_plaintext(plaintext)
            if (origin, recipient) != (sender, self.client_id):
                return None
            x = derive.share_x(self.client_id)
            return Share.from_value_bytes(x, seed_share), Share.from_value_bytes(x, key_share)
        except (AuthenticationError, DecodeError):
            return None

"""The client's side of one round, as a sans-I/O state machine.

A ``Client`` is created from the round's ``RoundConfig`` (which its owner has checked against
its own policy, ``secagg.schemes.masking.policy``), given its update with ``set_input``, and
then driven by one entry point: ``start()`` (or ``receive`` of the very ``RoundConfig`` it was
made from) gives its first message and ``receive(message)`` answers each server message,
dispatching on its type; no driver calls a stage of the protocol by name. Its states, one per
message it waits for::

    Initial --start()--> AwaitingDigest --CommitmentDigest--> AwaitingContributions
      --Contributions--> AwaitingPeerKeys
      --PeerKeys--> AwaitingPeerShares --PeerShares--> [AwaitingSurvivorList
      --SurvivorList-->] AwaitingUnmaskRequest --UnmaskRequest--> Completed

    AwaitingContributions --CommitRequest(attempt + 1)--> AwaitingDigest   (at most 3 attempts)

``Contributions`` fixes the session (the client is ``Agreed`` in passing) and is answered with
the client's freshly advertised keys. ``PeerShares`` is answered with the masked input, so
``set_input`` must have been called by then (``needs_input`` tells a driver when). A message
that is not the one the current state waits for is an ``UNEXPECTED_MESSAGE`` abort (an
aborted client raises its first abort's reason again).

The first two steps agree on a fresh session: the client commits to 32 random bytes, reveals
them only once the server has fixed the digest of every commitment, and checks that the
contributions it is then sent are exactly the committed ones and include its own. The
session id (and the SecAgg+ graph) are hashes of all of them, so no session can be replayed
to this client and the server cannot pick the graph.

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

With removable noise layers (docs/XNOISE.md) the client also shares a fresh seed per layer
beside its self-mask seed, and in its one unmask answer releases the shares of exactly the
layers its certified count removes, for the peers whose self-mask shares it releases.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import numpy as np
from numpy.typing import NDArray

from secagg.dp.layers import LAYER_SEED_BYTES
from secagg.errors import (
    AbortReason,
    AuthenticationError,
    ClientAbort,
    CryptoError,
    DecodeError,
    InputError,
    UsageError,
)
from secagg.hazmat import aead, prg
from secagg.hazmat.keys import Ed25519SigningKey, X25519KeyPair, ed25519_verify
from secagg.hazmat.randomness import Randomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, split
from secagg.protocol.codec import Message, decode
from secagg.schemes.masking import derivations
from secagg.schemes.masking.encoding import InputEncoding, encoding_or_quantizer
from secagg.schemes.masking.graph import SurvivorRule, thin_window_of
from secagg.schemes.masking.messages import (
    CONTRIBUTION_BYTES,
    MAX_ATTEMPTS,
    AdvertiseKeys,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ConsistencySignature,
    Contributions,
    EncryptedShares,
    LayerAnswer,
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
from secagg.schemes.masking.removal import NoiseRemoval

__all__ = [
    "Aborted",
    "Agreed",
    "AwaitingContributions",
    "AwaitingDigest",
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


def checked_update(
    config: RoundConfig, values: NDArray[np.floating], weight: object
) -> tuple[NDArray[np.floating], int]:
    """An update a round can mask: ``dim`` finite values and an integer weight in
    ``[0, max_weight]`` (1 under distributed DP); ``InputError`` for anything else."""
    array = np.asarray(values)
    if array.shape != (config.dim,):
        raise InputError(f"the update has shape {array.shape}; the round expects ({config.dim},)")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"the update must hold numbers, not {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InputError("the update contains NaN or infinity")
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise InputError(f"the weight must be an int, not {type(weight).__name__}")
    if not 0 <= weight <= config.max_weight:
        raise InputError(f"the weight {weight} is outside [0, {config.max_weight}]")
    if config.dp is not None and weight != 1:
        # The DP mean is unweighted: the guarantee counts each client's input once.
        raise InputError(f"with distributed DP every client weighs 1, not {weight}")
    return array, int(weight)


@dataclass(frozen=True)
class Initial:
    """Created, nothing sent yet."""


@dataclass(frozen=True)
class AwaitingDigest:
    """Committed to a fresh contribution; waits for the digest of every commitment."""

    attempt: int
    contribution: bytes = field(repr=False)


@dataclass(frozen=True)
class AwaitingContributions:
    """Revealed its contribution; waits for all of them (or a request to commit again)."""

    attempt: int
    contribution: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    count: int


@dataclass(frozen=True)
class Agreed:
    """The session is fixed (``Client.session``); nothing sent in it yet. Passed through
    while ``receive`` answers ``Contributions``: the keys are advertised at once."""


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
    # Removable noise: one fresh seed per layer, its shares sent; forgotten once the layers
    # are in the masked input (docs/XNOISE.md X1).
    layer_seeds: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class AwaitingSurvivorList:
    """Active mode: sent its masked input; waits for the survivor set to sign."""

    masked_with: frozenset[int]
    held_shares: Mapping[int, tuple[Share, Share]] = field(repr=False)  # (self-mask, key)
    clipped: int
    # Each peer's noise-layer shares, in layer order (empty without layers).
    held_layers: Mapping[int, tuple[Share, ...]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class AwaitingUnmaskRequest:
    """Sent its masked input; ``masked_with`` are the peers whose pairwise masks it added.

    In active mode ``survivors`` is the survivor set it signed; the request must match it.
    """

    masked_with: frozenset[int]
    held_shares: Mapping[int, tuple[Share, Share]] = field(repr=False)  # (self-mask, key)
    clipped: int
    survivors: tuple[int, ...] | None = None
    held_layers: Mapping[int, tuple[Share, ...]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Completed:
    """Answered the unmask request: revealed one kind of share per peer, never both. With
    removable noise, the layer shares of ``revealed_layer_shares_of`` (a subset of the
    self-mask ones), answered at count ``count`` less ``corrupt``: ``units`` came off."""

    revealed_self_mask_shares_of: frozenset[int]
    revealed_key_shares_of: frozenset[int]
    clipped: int
    revealed_layer_shares_of: frozenset[int] = frozenset()
    count: int | None = None
    corrupt: int | None = None
    units: int | None = None


@dataclass(frozen=True)
class Aborted:
    reason: AbortReason
    detail: str


ClientState = (
    Initial
    | AwaitingDigest
    | AwaitingContributions
    | Agreed
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
        encoding: InputEncoding | None = None,
        survivor_rule: SurvivorRule | None = None,
        noise_removal: NoiseRemoval | None = None,
    ) -> None:
        """``identity`` (this client's long-term signing key), ``pki`` (every cohort
        member's identity public key) and ``survivor_rule`` (from the client's own
        deployment, never from the server: ``Params.survivor_rule``) are required in active
        mode. ``encoding`` turns the update into the ring vector (default: the quantiser of
        the config; a distributed-DP round needs its ``secagg.dp.encoding.DpEncoding``).
        ``noise_removal`` (from the client's own deployment: its DP block's layers and the
        finder's A for this cohort) is required in a round with removable noise layers."""
        if client_id not in config.cohort:
            raise UsageError(f"client {client_id} is not in the round's cohort")
        encoding = encoding_or_quantizer(config, encoding)
        if config.active and (identity is None or pki is None or survivor_rule is None):
            raise UsageError(
                "active mode needs the client's identity, the peers' public keys and the "
                "survivor rule"
            )
        config_layers = None if config.dp is None else config.dp.layers
        ours = None if noise_removal is None else noise_removal.layers
        if config_layers != ours:
            # The policy refuses such a round first; this client never runs one.
            raise UsageError("the round's noise layers are not the client's own")
        if (
            noise_removal is not None
            and survivor_rule is not None
            and noise_removal.corrupt != survivor_rule.corrupt
        ):
            raise UsageError("one corruption bound A everywhere (docs/XNOISE.md X10)")
        self._removal = noise_removal
        self._survivor_rule = survivor_rule
        self._identity = identity
        self._pki = dict(pki or {})
        self._config = config
        self._client_id = client_id
        self._rng = rng
        self._ring = Ring(config.ring_bits)
        self._encoding = encoding
        self._cohort = config.cohort
        self._session: derivations.Session | None = None
        self._neighbours: frozenset[int] = frozenset()
        self._input: tuple[NDArray[np.floating], int] | None = None
        self._clipped = 0
        self._state: ClientState = Initial()

    def __repr__(self) -> str:
        return f"Client(id={self.client_id}, state={type(self._state).__name__})"

    @property
    def config(self) -> RoundConfig:
        """The round this client was made for."""
        return self._config

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def session(self) -> derivations.Session:
        if self._session is None:
            raise UsageError("the session is not agreed yet")
        return self._session

    @property
    def clipped(self) -> int:
        """How many values of its input were clipped (once it has masked it)."""
        return self._clipped

    def needs_input(self, message: Message) -> bool:
        """The input is used at the masked-input stage only, so a driver may produce it then."""
        return isinstance(message, PeerShares)

    @property
    def neighbours(self) -> frozenset[int]:
        """The peers this client pairs with (known once the session is agreed)."""
        return self._neighbours

    # ----------------------------------------------------------------- the entry points
    def set_input(self, values: NDArray[np.floating], weight: int = 1) -> None:
        """The update this client contributes: ``dim`` finite values and an integer weight in
        ``[0, max_weight]``. Checked here, so a bad update is refused before it is masked."""
        self._input = checked_update(self.config, values, weight)

    def start(self) -> Commitment:
        """The first message: a commitment to a fresh contribution to the session."""
        self._expect(Initial)
        return self._commit(1)

    def receive(self, message: Message | bytes) -> Message:
        """Answer one server message (decoded here if given as bytes), dispatching on its
        type to the stage that answers it; any claim that does not check out, and any message
        the current state does not wait for, raises ClientAbort. ``PeerShares`` before
        ``set_input`` is the caller's misuse (UsageError)."""
        if not isinstance(message, Message):
            try:
                message = decode(message)
            except DecodeError as exc:
                self._abort(AbortReason.MALFORMED_MESSAGE, str(exc))
        if isinstance(message, RoundConfig) and message == self.config:
            return self.start()  # the configuration this client was made from opens the round
        if isinstance(message, CommitmentDigest):
            return self._reveal(message)
        if isinstance(message, CommitRequest):
            return self._recommit(message)
        if isinstance(message, Contributions):
            self._agree(message)
            return self._advertise()
        if isinstance(message, PeerKeys):
            return self._share_keys(message)
        if isinstance(message, PeerShares):
            if self._input is None:
                raise UsageError("set_input must be called before the masked-input stage")
            values, weight = self._input
            self._input = None  # the plaintext update is not kept past masking
            return self._mask_input(message, values, weight)
        if isinstance(message, SurvivorList):
            return self._consistency(message)
        if isinstance(message, UnmaskRequest):
            return self._unmask(message)
        self._abort(
            AbortReason.UNEXPECTED_MESSAGE, f"{type(message).__name__} is never sent to a client"
        )

    # ----------------------------------------------------------------- the session
    def _commit(self, attempt: int) -> Commitment:
        contribution = self._rng.bytes(CONTRIBUTION_BYTES)
        self._state = AwaitingDigest(attempt, contribution)
        config_id = self.config.config_id
        return Commitment(
            config_id,
            self.client_id,
            attempt,
            derivations.contribution_commitment(config_id, attempt, self.client_id, contribution),
        )

    def _recommit(self, message: CommitRequest) -> Commitment:
        """Some committed client did not reveal: commit to a new contribution."""
        state = self._expect(AwaitingContributions, message, CommitRequest)
        self._check_config_addressed(message.config_id, message.recipient)
        if message.attempt != state.attempt + 1:
            self._abort(
                AbortReason.UNEXPECTED_MESSAGE,
                f"attempt {message.attempt} after attempt {state.attempt}",
            )
        if message.attempt > MAX_ATTEMPTS:
            self._abort(AbortReason.TOO_MANY_ATTEMPTS, f"at most {MAX_ATTEMPTS} attempts per round")
        return self._commit(message.attempt)

    def _reveal(self, message: CommitmentDigest) -> Reveal:
        state = self._expect(AwaitingDigest, message, CommitmentDigest)
        self._check_config_addressed(message.config_id, message.recipient)
        if message.attempt != state.attempt:
            self._abort(AbortReason.UNEXPECTED_MESSAGE, "a digest for another attempt")
        # Nothing is revealed for a session that could not reveal a sum anyway.
        self._check_cohort_size(message.count, "clients committed")
        if message.count > len(self.config.client_ids):
            # Only cohort members commit: a larger count is a digest of something else.
            self._abort(
                AbortReason.INVALID_CONFIG,
                f"{message.count} commitments claimed for a cohort of "
                f"{len(self.config.client_ids)}",
            )
        self._state = AwaitingContributions(
            state.attempt, state.contribution, message.digest, message.count
        )
        return Reveal(self.config.config_id, self.client_id, state.attempt, state.contribution)

    def _agree(self, message: Contributions) -> None:
        """Check the contributions against the committed digest and fix the session."""
        state = self._expect(AwaitingContributions, message, Contributions)
        self._check_config_addressed(message.config_id, message.recipient)
        if message.attempt != state.attempt:
            self._abort(AbortReason.BAD_CONTRIBUTIONS, "contributions of another attempt")
        # The whole list, every time: a contribution left unchecked is one the server could
        # change after the reveals (docs/LINEAR_AGREEMENT.md). Each check is on arrays.
        entries = message.contributions
        ids = entries.ids
        if not derivations.sorted_unique(ids):
            self._abort(AbortReason.BAD_CONTRIBUTIONS, "contributions not sorted by client id")
        stranger = derivations.first_stranger(self.config, ids)
        if stranger is not None:
            self._abort(AbortReason.UNKNOWN_ID, f"contribution from {stranger}, not in the cohort")
        if entries.contribution_of(self.client_id) != state.contribution:
            self._abort(AbortReason.BAD_CONTRIBUTIONS, "this client's contribution is missing")
        # Every committed contribution, and nothing else: the server fixed this set before it
        # saw any contribution, so it could not have chosen one to steer the session.
        if len(entries) != state.count or (
            derivations.contributions_digest(self.config.config_id, state.attempt, entries)
            != state.digest
        ):
            self._abort(
                AbortReason.BAD_CONTRIBUTIONS,
                "the contributions are not the ones the server committed to",
            )
        session = derivations.Session.agree(
            self.config, state.attempt, entries, digest=state.digest
        )
        self._session = session
        self._neighbours = frozenset(session.neighbours(self.client_id))
        self._state = Agreed()

    # ----------------------------------------------------------------- round 0
    def _advertise(self) -> AdvertiseKeys:
        self._expect(Agreed)
        cipher_keys = X25519KeyPair.generate(self._rng)
        mask_keys = X25519KeyPair.generate(self._rng)
        self._state = AwaitingPeerKeys(cipher_keys, mask_keys)
        sid = self._sid
        signature = b""
        if self.config.active:
            assert self._identity is not None
            signature = self._identity.sign(
                derivations.advertise_signed_bytes(
                    sid, self.client_id, cipher_keys.public, mask_keys.public
                )
            )
        return AdvertiseKeys(sid, self.client_id, cipher_keys.public, mask_keys.public, signature)

    @property
    def _sid(self) -> bytes:
        return self.session.session_id

    # ----------------------------------------------------------------- round 1
    def _share_keys(self, message: PeerKeys) -> EncryptedShares:
        state = self._expect(AwaitingPeerKeys, message, PeerKeys)
        self._check_addressed(message.session_id, message.recipient)
        ids = [p.client_id for p in message.peers]
        self._check_ids(ids, allowed=self._neighbours, earlier_dropped=frozenset())
        self._check_enough(len(ids), "neighbours advertised keys")
        if self.config.active:
            for p in message.peers:
                self._check_signature(
                    p.client_id,
                    derivations.advertise_signed_bytes(
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
        xs = [derivations.share_x(v) for v in ids]
        t = self.config.threshold
        seed_shares = split(seed, xs, t, self._rng)
        key_shares = split(state.mask_keys.private_bytes(), xs, t, self._rng)
        # Each layer from its own fresh seed, never derived from anything that is ever
        # reconstructed (X1); shared to the same holders, in the same plaintext (X6).
        layer_seeds = tuple(
            self._rng.bytes(LAYER_SEED_BYTES)
            for _ in range(0 if self._removal is None else self._removal.count)
        )
        layer_shares = [split(s, xs, t, self._rng) for s in layer_seeds]
        sid = self._sid
        ciphertexts = []
        share_keys: dict[int, bytes] = {}
        for i, (v, seed_share, key_share) in enumerate(
            zip(ids, seed_shares, key_shares, strict=True)
        ):
            key = share_keys[v] = self._share_key(state.cipher_keys, peers[v])
            plaintext = derivations.encode_share_plaintext(
                self.client_id,
                v,
                seed_share.value_bytes(),
                key_share.value_bytes(),
                [shares[i].value_bytes() for shares in layer_shares],
            )
            sealed = aead.seal(
                key, plaintext, derivations.share_associated_data(sid, self.client_id, v), self._rng
            )
            ciphertexts.append((v, sealed))
        self._state = AwaitingPeerShares(state.mask_keys, peers, share_keys, seed, layer_seeds)
        return EncryptedShares(
            sid,
            self.client_id,
            derivations.self_mask_commitment(seed, sid, self.client_id),
            tuple(ciphertexts),
            tuple(
                derivations.layer_commitment(s, sid, self.client_id, j)
                for j, s in enumerate(layer_seeds)
            ),
        )

    # ----------------------------------------------------------------- round 2
    def _mask_input(
        self, message: PeerShares, values: NDArray[np.floating], weight: int = 1
    ) -> MaskedInput:
        state = self._expect(AwaitingPeerShares, message, PeerShares)
        self._check_addressed(message.session_id, message.recipient)
        senders = [sender for sender, _ in message.ciphertexts]
        self._check_ids(senders, allowed=frozenset(state.peers), earlier_dropped=self._neighbours)
        self._check_enough(len(senders), "neighbours shared keys")
        self.set_input(values, weight)
        self._input = None
        sid = self._sid
        held: dict[int, tuple[Share, Share]] = {}
        held_layers: dict[int, tuple[Share, ...]] = {}
        missing: list[int] = []
        for sender, sealed in message.ciphertexts:
            shares = self._open_share(state, sender, sealed)
            if shares is None:
                missing.append(sender)  # still masked with: the pairwise key needs no share
            else:
                held[sender] = shares[0], shares[1]
                held_layers[sender] = shares[2]
        # The layer seeds go into the noise here and are not kept past it (the state that
        # follows has none): only their shares, held by the neighbours, can rebuild them.
        encoded = self._encoding.encode(
            np.asarray(values), weight, self._ring, self._rng, sid, state.layer_seeds
        )
        vector = encoded.vector
        if vector.shape != (self.config.vector_length,):
            raise UsageError("the encoding made a vector of the wrong length")
        scratch = np.empty(min(len(vector), 1 << 16), dtype=vector.dtype)
        prg.add_mask(
            vector,
            derivations.self_mask_key(state.self_mask_seed, sid, self.client_id),
            scratch=scratch,
        )
        for sender in senders:
            peer = state.peers[sender]
            try:
                shared = state.mask_keys.exchange(peer.mask_public)
            except CryptoError:
                self._abort(AbortReason.BAD_PEER_KEY, f"peer {sender}'s mask key is invalid")
            key = derivations.pair_mask_key(
                shared, sid, self.client_id, state.mask_keys.public, sender, peer.mask_public
            )
            prg.add_mask(
                vector,
                key,
                subtract=derivations.subtracts_pair_mask(self.client_id, sender),
                scratch=scratch,
            )
        self._ring.reduce(vector)
        packed = self._ring.pack(vector)
        self._clipped = encoded.clipped
        if self.config.active:
            self._state = AwaitingSurvivorList(
                frozenset(senders), held, encoded.clipped, held_layers
            )
        else:
            self._state = AwaitingUnmaskRequest(
                frozenset(senders), held, encoded.clipped, held_layers=held_layers
            )
        return MaskedInput(sid, self.client_id, tuple(missing), packed)

    # ----------------------------------------------------------------- consistency (active)
    def _consistency(self, message: SurvivorList) -> ConsistencySignature:
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
        self._check_cohort_size(len(survivors), "inputs in the sum")
        self._check_honest_floor(len(survivors))
        self._check_enough(
            sum(1 for u in survivors if u in state.masked_with), "neighbours survived"
        )
        self._check_uncut(survivors)
        assert self._identity is not None
        signature = self._identity.sign(derivations.consistency_signed_bytes(self._sid, survivors))
        self._state = AwaitingUnmaskRequest(
            state.masked_with, state.held_shares, state.clipped, survivors, state.held_layers
        )
        return ConsistencySignature(self._sid, self.client_id, signature)

    # ----------------------------------------------------------------- round 3
    def _unmask(self, message: UnmaskRequest) -> UnmaskResponse:
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
        answer = self._layer_answer(state, message) if self._removal is not None else None
        self_mask_shares = tuple(
            (u, state.held_shares[u][0].value_bytes()) for u in survivors if u in state.held_shares
        )
        key_shares = tuple(
            (u, state.held_shares[u][1].value_bytes()) for u in dropped if u in state.held_shares
        )
        # Completed before the answer leaves: no second request of this round is answered
        # (X5: two answers at two counts could strip every layer together).
        self._state = Completed(
            frozenset(u for u, _ in self_mask_shares),
            frozenset(u for u, _ in key_shares),
            state.clipped,
            frozenset(u for u, _, _ in answer.shares) if answer is not None else frozenset(),
            None if answer is None else answer.count,
            None if answer is None else answer.corrupt,
            None if answer is None else answer.units,
        )
        return UnmaskResponse(self._sid, self.client_id, self_mask_shares, key_shares, answer)

    def _layer_answer(self, state: AwaitingUnmaskRequest, message: UnmaskRequest) -> LayerAnswer:
        """The shares of exactly the layers that come off at the certified count, for the
        peers whose self-mask shares this answer releases, and nothing else (X2, X4, X5).

        The count: in active mode the size of the survivor set this client signed and saw a
        quorum certify (a count the server states must be that very one); in semi-honest
        mode the server's, refused above the session's participants (a lie on record)."""
        removal = self._removal
        assert removal is not None
        if state.survivors is not None:
            count = len(state.survivors)
            if message.count is not None and message.count != count:
                self._abort(
                    AbortReason.INCONSISTENT_SURVIVORS,
                    f"a count of {message.count}; the certified survivor set holds {count}",
                )
        else:
            participants = len(self.session.participants)
            if message.count is None:
                count = 0  # no count stated: nothing is vouched for, nothing comes off
            elif message.count > participants:
                self._abort(
                    AbortReason.INCONSISTENT_SURVIVORS,
                    f"a count of {message.count} inputs; the round has {participants} participants",
                )
            else:
                count = message.count
        removed = removal.removed(count)
        shares = tuple(
            (u, layer, state.held_layers[u][layer].value_bytes())
            for u in message.survivors
            if u in state.held_shares
            for layer in removed
        )
        return LayerAnswer(count, removal.corrupt, removal.units(count), shares)

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

    def _check_config_addressed(self, config_id: bytes, recipient: int) -> None:
        if config_id != self.config.config_id:
            self._abort(AbortReason.WRONG_SESSION, "message belongs to another round")
        if recipient != self.client_id:
            self._abort(AbortReason.WRONG_SESSION, "message is addressed to another client")

    def _check_honest_floor(self, survivors: int) -> None:
        """X9: a survivor set is signed only if it holds the minimum cohort of honest inputs
        however the A corrupt clients of this cohort are placed (as a session client's S10)."""
        rule = self._survivor_rule
        assert rule is not None
        if survivors - rule.corrupt < self.config.min_cohort:
            self._abort(
                AbortReason.COHORT_TOO_SMALL,
                f"{survivors} survivors hold fewer than {self.config.min_cohort} honest "
                f"inputs if {rule.corrupt} are corrupt",
            )

    def _check_cohort_size(self, count: int, what: str) -> None:
        if count < self.config.min_cohort:
            self._abort(
                AbortReason.COHORT_TOO_SMALL,
                f"only {count} {what}; the minimum cohort is {self.config.min_cohort}",
            )

    def _check_addressed(self, session_id: bytes, recipient: int) -> None:
        if session_id != self._sid:
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

    def _check_uncut(self, survivors: tuple[int, ...]) -> None:
        """The survivor set must leave the graph's honest survivors connected: every window of
        k/2 consecutive ring slots holds more of it than corrupt clients can fill, so no sum
        over a part of it can be unmasked (docs/SURVIVOR_CERTIFICATE.md, C1')."""
        rule = self._survivor_rule
        assert rule is not None
        if rule.quorum > len(survivors):
            self._abort(
                AbortReason.COHORT_TOO_SMALL,
                f"{len(survivors)} survivors cannot be certified by {rule.quorum} signers",
            )
        slot = thin_window_of(self.config.id_array, self.session.graph_seed, survivors, rule)
        if slot is not None:
            self._abort(
                AbortReason.SURVIVORS_CUT,
                f"ring slots {slot}..{slot + rule.window - 1} hold fewer than "
                f"{rule.least_in_window} survivors: the set would cut the graph",
            )

    def _check_certified(self, survivors: tuple[int, ...], message: UnmaskRequest) -> None:
        """At least Q distinct cohort members in S signed the very same S, each signature
        verified: two sets so certified share an honest signer, who signs once a round."""
        rule = self._survivor_rule
        assert rule is not None
        if len(message.signatures) > len(self.config.client_ids):
            self._abort(AbortReason.DUPLICATE_ID, "more signatures than cohort members")
        payload = derivations.consistency_signed_bytes(self._sid, survivors)
        members = frozenset(survivors)
        # Counted once, and only from the set they certify; too few is refused before any
        # signature is verified (each costs ~50 us, and a quorum is hundreds).
        candidates = {signer: sig for signer, sig in message.signatures if signer in members}
        if len(candidates) < rule.quorum:
            self._abort(
                AbortReason.BELOW_THRESHOLD,
                f"only {len(candidates)} cohort members certified the survivor set; "
                f"{rule.quorum} are needed",
            )
        for signer, signature in list(candidates.items())[: rule.quorum]:
            self._check_signature(signer, payload, signature)

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
        payload = derivations.consistency_signed_bytes(self._sid, state.survivors)
        signers: set[int] = set()
        for signer, _ in message.signatures:
            if signer in signers:
                self._abort(AbortReason.DUPLICATE_ID, f"two signatures from client {signer}")
            if signer not in signed:
                self._abort(AbortReason.UNKNOWN_ID, f"signature from non-survivor {signer}")
            signers.add(signer)
        # t valid signatures from distinct surviving neighbours, and a quorum of the cohort on
        # the same set; checking more would only cost time (an Ed25519 verification is ~50 us).
        neighbours = [(u, sig) for u, sig in message.signatures if u in self._neighbours]
        self._check_enough(len(neighbours), "neighbours signed the same survivor set")
        self._check_certified(state.survivors, message)
        for signer, signature in neighbours[: self.config.threshold]:
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
        return derivations.share_encryption_key(
            shared,
            self._sid,
            self.client_id,
            cipher_keys.public,
            peer.client_id,
            peer.cipher_public,
        )

    def _open_share(
        self, state: AwaitingPeerShares, sender: int, sealed: bytes
    ) -> tuple[Share, Share, tuple[Share, ...]] | None:
        """The sender's shares for this client (self-mask, key, each noise layer's), or None
        if they do not open or do not fit (a plaintext without this round's layers too)."""
        key = state.share_keys[sender]
        associated = derivations.share_associated_data(self._sid, sender, self.client_id)
        layers = 0 if self._removal is None else self._removal.count
        try:
            plaintext = aead.open_sealed(key, sealed, associated)
            origin, recipient, seed_share, key_share, layer_shares = (
                derivations.decode_layered_share_plaintext(plaintext, layers)
            )
            if (origin, recipient) != (sender, self.client_id):
                return None
            x = derivations.share_x(self.client_id)
            return (
                Share.from_value_bytes(x, seed_share),
                Share.from_value_bytes(x, key_share),
                tuple(Share.from_value_bytes(x, share) for share in layer_shares),
            )
        except (AuthenticationError, DecodeError):
            return None

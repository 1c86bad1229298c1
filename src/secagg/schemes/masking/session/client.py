"""A client's side of a session that spans rounds, as a sans-I/O state machine
(docs/SESSIONS.md; its rules S1-S14 are cited where they are enforced).

Set-up, once: the one-shot round's commit, reveal and advertise stages (a one-shot ``Client``
agrees the session; this class draws and advertises its own round-1 keys), then the set-up
shares. Then every round r costs two messages: ``RoundTask`` is answered with a
``RoundMessage`` (its masked input, its keys for round r + 1 and the shares of its round's
secrets, sealed to its live neighbours), and ``SessionUnmaskRequest`` with a
``SessionUnmaskResponse``; in active mode a ``SessionSurvivorList`` is signed in between::

    Agreeing --Contributions--> AwaitingSetupKeys --PeerKeys--> AwaitingSetupShares
      --PeerSetupShares--> Between(0)
    Between(r - 1) --RoundTask(r)--> Masked(r) [--SessionSurvivorList--> Signed(r)]
      --SessionUnmaskRequest(r)--> Between(r)
    (any state) --a claim that does not check out--> Left

What a state holds is what docs/SESSIONS.md 1.3 lets the client hold at that point, and no
more: ``Between(r)`` holds the keys of round r + 1 and, per live neighbour, its round r + 1
keys, the pair's chain key and one share of its round r + 1 mask key; ``Masked(r)`` holds
this client's keys of round r + 1 and the cipher key of round r (to open what its neighbours
sealed to it), never round r's mask private key, self-mask seed or update.

A client that meets a claim that does not check out *leaves*: it raises ``ClientAbort`` and
never answers in this session again. Where a round's own checks passed but a neighbour's
next-round keys did not (rule S6), it answers the round and then leaves.

Randomness: a deployment passes ``SystemRandomness`` (the default), so every round's secrets
come fresh from the operating system (S2); the simulator passes a seeded generator for
reproducible runs only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
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
from secagg.hazmat.randomness import Randomness, SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, split
from secagg.protocol.codec import DIGEST_BYTES, Message, decode
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.client import AwaitingPeerKeys, Initial, checked_update
from secagg.schemes.masking.client import Client as AgreementClient
from secagg.schemes.masking.encoding import InputEncoding, encoding_or_quantizer
from secagg.schemes.masking.graph import SurvivorRule, thin_window_of
from secagg.schemes.masking.messages import (
    AdvertiseKeys,
    CommitmentDigest,
    CommitRequest,
    Contributions,
    PeerKeyEntry,
    PeerKeys,
)
from secagg.schemes.masking.session import derivations
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    PeerSetupShares,
    RoundMessage,
    RoundTask,
    SessionConfig,
    SessionSignature,
    SessionSurvivorList,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
    SetupShares,
)
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = [
    "AwaitingSetupKeys",
    "AwaitingSetupShares",
    "Between",
    "ClientState",
    "Left",
    "LiveNeighbour",
    "Masked",
    "SessionClient",
    "Signed",
]

SEED_BYTES = 32

S = TypeVar("S")


@dataclass(frozen=True)
class LiveNeighbour:
    """What a client holds of one live neighbour for the round about to run (round r):
    the neighbour's round-r mask and cipher public keys, the pair's chain key ck_uv,r and
    this client's share of the neighbour's round-r mask private key."""

    mask_public: bytes = field(repr=False)
    cipher_public: bytes = field(repr=False)
    chain_key: bytes = field(repr=False)
    key_share: Share = field(repr=False)


@dataclass(frozen=True)
class Agreeing:
    """Agreeing on the session (the one-shot commit and reveal stages)."""


@dataclass(frozen=True)
class AwaitingSetupKeys:
    """Advertised its round-1 cipher and mask keys; waits for its neighbours'."""

    cipher_keys: X25519KeyPair = field(repr=False)
    mask_keys: X25519KeyPair = field(repr=False)


@dataclass(frozen=True)
class AwaitingSetupShares:
    """Sealed shares of its round-1 mask key to ``peers`` (K_u); waits for theirs."""

    cipher_keys: X25519KeyPair = field(repr=False)
    mask_keys: X25519KeyPair = field(repr=False)
    peers: Mapping[int, PeerKeyEntry] = field(repr=False)
    chain_keys: Mapping[int, bytes] = field(repr=False)


@dataclass(frozen=True)
class Between:
    """Round ``closed`` is closed (0: the set-up); ready for round ``closed + 1`` with its
    own keys of that round, ``live`` (L_u,r+1) and what it holds of each."""

    closed: int
    mask_keys: X25519KeyPair = field(repr=False)
    cipher_keys: X25519KeyPair = field(repr=False)
    live: Mapping[int, LiveNeighbour] = field(repr=False)
    survivors: tuple[int, ...] = field(repr=False)  # S_closed (S_0: the participants)
    chain: bytes = field(repr=False)  # H_closed


@dataclass(frozen=True)
class Masked:
    """Sent round ``round_number``'s message; waits for the survivor set (active mode) or the
    unmask request. Holds the round's cipher key (to open what neighbours sealed to it) and
    its keys of the next round; round r's mask private key and self-mask seed are gone."""

    round_number: int
    context: bytes = field(repr=False)
    cipher_keys: X25519KeyPair = field(repr=False)
    next_mask_keys: X25519KeyPair = field(repr=False)
    next_cipher_keys: X25519KeyPair = field(repr=False)
    live: Mapping[int, LiveNeighbour] = field(repr=False)
    previous_survivors: tuple[int, ...] = field(repr=False)
    previous_chain: bytes = field(repr=False)
    # KA(next cipher key, each neighbour's current cipher key): what sealed this client's
    # shares, and half of what advances the chain at the round's close. No more secret than
    # the next cipher key itself, which this state holds anyway.
    sealed_with: Mapping[int, bytes] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Signed:
    """Active mode: signed H_r over ``survivors``; waits for the certified unmask request."""

    masked: Masked
    survivors: tuple[int, ...] = field(repr=False)
    chain: bytes = field(repr=False)


@dataclass(frozen=True)
class _Refusal:
    """Why a neighbour's next-round keys cannot be trusted (the client leaves after the
    round it is answering)."""

    reason: AbortReason
    detail: str


@dataclass(frozen=True)
class Left:
    """Left the session (every secret of it dropped); answers nothing of it again."""

    round_number: int
    reason: AbortReason
    detail: str


ClientState = Agreeing | AwaitingSetupKeys | AwaitingSetupShares | Between | Masked | Signed | Left


class SessionClient:
    """One client's part in one session."""

    def __init__(
        self,
        terms: SessionTerms,
        client_id: int,
        rng: Randomness | None = None,
        *,
        identity: Ed25519SigningKey | None = None,
        pki: Mapping[int, bytes] | None = None,
        encoding: InputEncoding | None = None,
        survivor_rule: SurvivorRule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """As the one-shot ``Client``: ``identity``, ``pki`` and ``survivor_rule`` from the
        client's own deployment (required in active mode). ``clock`` measures the session's
        age against its ``max_seconds``."""
        config = terms.config
        self._terms = terms
        self._config = config
        self._client_id = client_id
        self._rng: Randomness = rng if rng is not None else SystemRandomness()
        encoding = encoding_or_quantizer(config, encoding)
        self._encoding = encoding
        # The one-shot client agrees the session and draws round 1's keys; it is dropped as
        # soon as the keys are advertised, since it would hold them for the whole session.
        self._agreement: AgreementClient | None = AgreementClient(
            config,
            client_id,
            self._rng,
            identity=identity,
            pki=pki,
            encoding=encoding,
            survivor_rule=survivor_rule,
        )
        self._identity = identity
        self._pki = dict(pki or {})
        self._survivor_rule = survivor_rule
        self._ring = Ring(config.ring_bits)
        self._clock = clock
        self._started = clock()
        self._session: one_shot.Session | None = None
        self._neighbours: frozenset[int] = frozenset()
        self._dead: set[int] = set()
        self._input: tuple[NDArray[np.floating], int, bytes] | None = None
        self._clipped = 0  # of the last round's update: for its owner's report, never stored
        self._state: ClientState = Agreeing()

    def __repr__(self) -> str:
        return f"SessionClient(id={self._client_id}, state={type(self._state).__name__})"

    # ----------------------------------------------------------------- what it shows
    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def terms(self) -> SessionTerms:
        return self._terms

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def departure(self) -> Left | None:
        """Why this client left the session (None while it is in it)."""
        return self._state if isinstance(self._state, Left) else None

    @property
    def session(self) -> one_shot.Session:
        if self._session is None:
            raise UsageError("the session is not agreed yet")
        return self._session

    @property
    def dead(self) -> frozenset[int]:
        """Neighbours this client holds dead for the rest of the session (rule S7)."""
        return frozenset(self._dead)

    @property
    def live(self) -> frozenset[int]:
        """The neighbours it masks with in the next round it runs (or is running)."""
        state = self._state
        if isinstance(state, Between | Masked):
            return frozenset(state.live)
        if isinstance(state, Signed):
            return frozenset(state.masked.live)
        return frozenset()

    @property
    def closed_rounds(self) -> int:
        state = self._state
        if isinstance(state, Between):
            return state.closed
        if isinstance(state, Masked):
            return state.round_number - 1
        if isinstance(state, Signed):
            return state.masked.round_number - 1
        if isinstance(state, Left):
            return state.round_number - 1
        return 0

    def needs_input(self, message: Message) -> bool:
        """Answering ``message`` uses the round's update (a driver may produce it then)."""
        return message.opens_training

    # ----------------------------------------------------------------- its journal
    def snapshot(self) -> bytes:
        """What this client holds, as ``restore`` takes it back (``session.state``): never an
        update, a seed or a key its state has dropped (docs/SESSIONS.md 1.4, attack A1)."""
        from secagg.schemes.masking.session import state

        return state.encode(
            self._terms,
            self._client_id,
            self._started,
            self._session,
            self._dead,
            self._state,
            Initial() if self._agreement is None else self._agreement.state,
        )

    @classmethod
    def restore(
        cls,
        blob: bytes,
        rng: Randomness | None = None,
        *,
        identity: Ed25519SigningKey | None = None,
        pki: Mapping[int, bytes] | None = None,
        encoding: InputEncoding | None = None,
        survivor_rule: SurvivorRule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SessionClient:
        """The client whose ``snapshot`` is ``blob`` (``DecodeError`` if it is none), with
        its deployment's keys and rules as the constructor takes them."""
        from secagg.schemes.masking.session import state

        held = state.decode(blob)
        client = cls(
            held.terms,
            held.client_id,
            rng,
            identity=identity,
            pki=pki,
            encoding=encoding,
            survivor_rule=survivor_rule,
            clock=clock,
        )
        client._started = held.started
        client._session = held.session
        if held.session is not None:
            client._neighbours = frozenset(held.session.neighbours(held.client_id))
        client._dead = set(held.dead)
        client._state = held.state
        if isinstance(held.state, Agreeing):
            assert client._agreement is not None
            # The commit-reveal step it was at: the one-shot client's own state, set back.
            client._agreement._state = held.agreement
        else:
            client._agreement = None
        return client

    def set_input(self, values: NDArray[np.floating], weight: int, task: bytes) -> None:
        """The update of the next round and the digest of the model it was trained on,
        computed by the caller from the bytes it trained on (never the server's word)."""
        array, weight = checked_update(self._config, values, weight)
        if not isinstance(task, bytes) or len(task) != DIGEST_BYTES:
            raise UsageError(f"a task digest is {DIGEST_BYTES} bytes")
        self._input = (array, weight, task)

    @property
    def clipped(self) -> int:
        """How many values of the last round's update were clipped (kept in memory only)."""
        return self._clipped

    # ----------------------------------------------------------------- the entry points
    def start(self) -> Message:
        """The first message: the set-up's commitment."""
        self._expect(Agreeing)
        agreement = self._agreement
        assert agreement is not None  # held exactly while agreeing
        try:
            return agreement.start()
        except ClientAbort as exc:
            self._leave(exc.reason, exc.detail)

    def receive(self, message: Message | bytes) -> Message | None:
        """Answer one server message; ``PeerSetupShares`` is taken without an answer."""
        if isinstance(self._state, Left):
            raise ClientAbort(AbortReason.ROUND_CLOSED, "this client has left the session")
        if not isinstance(message, Message):
            try:
                message = decode(message)
            except DecodeError as exc:
                self._leave(AbortReason.MALFORMED_MESSAGE, str(exc))
        if isinstance(message, SessionConfig):
            if message.terms != self._terms:
                self._leave(AbortReason.INVALID_CONFIG, "not the session this client was made for")
            return self.start()
        if isinstance(message, CommitmentDigest | CommitRequest):
            self._expect(Agreeing)
            return self._through_agreement(message)
        if isinstance(message, Contributions):
            self._expect(Agreeing)
            return self._advertise(message)
        if isinstance(message, PeerKeys):
            return self._setup_shares(message)
        if isinstance(message, PeerSetupShares):
            self._take_setup_shares(message)
            if not message.first_task:
                return None
            return self._round_message(
                RoundTask(message.session_id, message.recipient, 1, message.first_task)
            )
        if isinstance(message, RoundTask):
            return self._round_message(message)
        if isinstance(message, SessionSurvivorList):
            return self._sign(message)
        if isinstance(message, SessionUnmaskRequest):
            return self._unmask(message)
        self._leave(
            AbortReason.UNEXPECTED_MESSAGE, f"{type(message).__name__} is never sent to a client"
        )

    # ----------------------------------------------------------------- set-up
    def _through_agreement(self, message: Message) -> Message:
        agreement = self._agreement
        assert agreement is not None  # held exactly while agreeing
        try:
            return agreement.receive(message)
        except ClientAbort as exc:
            self._leave(exc.reason, exc.detail)

    def _advertise(self, message: Contributions) -> AdvertiseKeys:
        """The one-shot client checks the contributions, fixes the session and advertises
        two fresh keys (signed in active mode): round 1's cipher and mask keys."""
        advertised = self._through_agreement(message)
        agreement = self._agreement
        assert agreement is not None
        agreed = agreement.state
        assert isinstance(advertised, AdvertiseKeys) and isinstance(agreed, AwaitingPeerKeys)
        session = agreement.session
        self._agreement = None  # it holds round 1's private keys: this client's state does
        self._session = session
        self._neighbours = frozenset(session.neighbours(self._client_id))
        self._state = AwaitingSetupKeys(agreed.cipher_keys, agreed.mask_keys)
        return advertised

    def _setup_shares(self, message: PeerKeys) -> SetupShares:
        state = self._expect(AwaitingSetupKeys, message)
        self._check_addressed(message.session_id, message.recipient)
        ids = [p.client_id for p in message.peers]
        self._check_ids(ids, allowed=self._neighbours)
        self._check_enough(len(ids), "neighbours advertised keys")
        own = {state.cipher_keys.public, state.mask_keys.public}
        seen: set[bytes] = set()
        for p in message.peers:
            if self._config.active:
                self._check_signature(
                    p.client_id,
                    one_shot.advertise_signed_bytes(
                        message.session_id, p.client_id, p.cipher_public, p.mask_public
                    ),
                    p.signature,
                )
            for key in (p.cipher_public, p.mask_public):
                if key in own or key in seen:
                    self._leave(AbortReason.DUPLICATE_KEY, f"peer {p.client_id} reuses a key")
                seen.add(key)
        sid = self.session.session_id
        setup_ctx = derivations.setup_context(sid)
        peers = {p.client_id: p for p in message.peers}
        shares = split(
            state.mask_keys.private_bytes(),
            [one_shot.share_x(v) for v in ids],
            self._config.threshold,
            self._rng,
        )
        chain_keys: dict[int, bytes] = {}
        ciphertexts = []
        for v, share in zip(ids, shares, strict=True):
            shared = self._exchange(state.cipher_keys, peers[v].cipher_public, v)
            chain = chain_keys[v] = derivations.first_chain_key(
                shared, sid, self._client_id, state.cipher_keys.public, v, peers[v].cipher_public
            )
            plaintext = derivations.encode_setup_share(
                self._client_id, v, share.value_bytes(), state.mask_keys.public
            )
            sealed = aead.seal(
                derivations.setup_share_key(chain, setup_ctx),
                plaintext,
                derivations.setup_share_associated_data(setup_ctx, self._client_id, v),
                self._rng,
            )
            ciphertexts.append((v, sealed))
        self._state = AwaitingSetupShares(state.cipher_keys, state.mask_keys, peers, chain_keys)
        return SetupShares(sid, self._client_id, tuple(ciphertexts))

    def _take_setup_shares(self, message: PeerSetupShares) -> None:
        state = self._expect(AwaitingSetupShares, message)
        self._check_addressed(message.session_id, message.recipient)
        senders = [v for v, _ in message.ciphertexts]
        # A set-up share comes only from a neighbour this client shared with (A3).
        self._check_ids(senders, allowed=frozenset(state.peers))
        sid = self.session.session_id
        setup_ctx = derivations.setup_context(sid)
        live: dict[int, LiveNeighbour] = {}
        for sender, sealed in message.ciphertexts:
            chain = state.chain_keys[sender]
            try:
                plaintext = aead.open_sealed(
                    derivations.setup_share_key(chain, setup_ctx),
                    sealed,
                    derivations.setup_share_associated_data(setup_ctx, sender, self._client_id),
                )
                origin, recipient, share, mask_public = derivations.decode_setup_share(plaintext)
            except (AuthenticationError, DecodeError):
                # Its round-1 key would be the server's word alone (S6, F2): leave, having
                # sent no input.
                self._leave(AbortReason.BAD_PEER_KEY, f"peer {sender}'s set-up share does not open")
            if (origin, recipient) != (sender, self._client_id):
                self._leave(
                    AbortReason.BAD_PEER_KEY, f"peer {sender}'s set-up share is misaddressed"
                )
            if mask_public != state.peers[sender].mask_public:
                self._leave(
                    AbortReason.BAD_PEER_KEY,
                    f"peer {sender}'s round-1 mask key is not the one it sealed",
                )
            live[sender] = LiveNeighbour(
                mask_public,
                state.peers[sender].cipher_public,
                chain,
                Share.from_value_bytes(one_shot.share_x(self._client_id), share),
            )
        self._dead.update(v for v in self._neighbours if v not in live)
        participants = tuple(sorted(self.session.participants))
        self._state = Between(
            0,
            state.mask_keys,
            state.cipher_keys,
            live,
            participants,
            derivations.chain_start(sid, participants),
        )

    # ----------------------------------------------------------------- a round
    def _round_message(self, message: RoundTask) -> RoundMessage:
        state = self._expect(Between, message)
        self._check_addressed(message.session_id, message.recipient)
        r = message.round_number
        if r != state.closed + 1:  # S3: no gap, no repeat, no older round
            self._leave(
                AbortReason.ROUND_OUT_OF_ORDER,
                f"a task for round {r} after round {state.closed} closed",
            )
        if r > self._terms.max_rounds:  # S12
            self._leave(
                AbortReason.SESSION_EXPIRED,
                f"round {r} is past the session's {self._terms.max_rounds} rounds",
            )
        if self._clock() - self._started > self._terms.max_seconds:
            self._leave(
                AbortReason.SESSION_EXPIRED,
                f"the session is older than its {self._terms.max_seconds} seconds",
            )
        if len(state.live) < self._terms.min_live_neighbours:  # S5
            self._leave(
                AbortReason.TOO_FEW_LIVE_NEIGHBOURS,
                f"{len(state.live)} live neighbours; the session needs "
                f"{self._terms.min_live_neighbours}",
            )
        if self._input is None:
            raise UsageError("set_input must be called before a round's task is answered")
        values, weight, task = self._input
        self._input = None  # the update is not kept past masking
        if task != message.task:
            # S8: the client masks under the digest of what it trained on; a server that
            # sent this client another model than it claims gets nothing that adds up.
            self._leave(AbortReason.MODEL_MISMATCH, "the task is not the model this client trained")
        sid = self.session.session_id
        ctx = derivations.round_context(sid, r, self._config.config_id, task)
        rng = self._rng
        # Fresh for this message, never derived (S1, S2).
        seed = rng.bytes(SEED_BYTES)
        next_mask_keys = X25519KeyPair.generate(rng)
        next_cipher_keys = X25519KeyPair.generate(rng)
        encoded = self._encoding.encode(values, weight, self._ring, rng, ctx)
        vector = encoded.vector
        if vector.shape != (self._config.vector_length,):
            raise UsageError("the encoding made a vector of the wrong length")
        scratch = np.empty(min(len(vector), 1 << 16), dtype=vector.dtype)
        u = self._client_id
        prg.add_mask(vector, derivations.self_mask_key(seed, ctx, u), scratch=scratch)
        ids = sorted(state.live)
        for v in ids:
            peer = state.live[v]
            shared = self._exchange(state.mask_keys, peer.mask_public, v)
            key = derivations.pair_mask_key(
                shared, ctx, u, state.mask_keys.public, v, peer.mask_public
            )
            prg.add_mask(vector, key, subtract=one_shot.subtracts_pair_mask(u, v), scratch=scratch)
        self._ring.reduce(vector)
        xs = [one_shot.share_x(v) for v in ids]
        t = self._config.threshold
        seed_shares = split(seed, xs, t, rng)
        key_shares = split(next_mask_keys.private_bytes(), xs, t, rng)
        ciphertexts = []
        sealed_with: dict[int, bytes] = {}
        for v, seed_share, key_share in zip(ids, seed_shares, key_shares, strict=True):
            peer = state.live[v]
            fresh = sealed_with[v] = self._exchange(next_cipher_keys, peer.cipher_public, v)
            share_key = derivations.round_share_key(
                peer.chain_key, fresh, ctx, u, v, next_cipher_keys.public, peer.cipher_public
            )
            plaintext = derivations.encode_round_share(
                u, v, r, seed_share.value_bytes(), key_share.value_bytes(), next_mask_keys.public
            )
            associated = derivations.round_share_associated_data(
                ctx, u, v, r, next_cipher_keys.public
            )
            ciphertexts.append((v, aead.seal(share_key, plaintext, associated, rng)))
        signature = b""
        if self._config.active:
            assert self._identity is not None
            signature = self._identity.sign(
                derivations.next_key_signed_bytes(
                    sid, r + 1, u, next_mask_keys.public, next_cipher_keys.public, ctx
                )
            )
        # Round r's mask private key and seed end here (S11): the new state holds neither.
        self._state = Masked(
            r,
            ctx,
            state.cipher_keys,
            next_mask_keys,
            next_cipher_keys,
            state.live,
            state.survivors,
            state.chain,
            sealed_with,
        )
        self._clipped = encoded.clipped
        return RoundMessage(
            sid,
            u,
            r,
            derivations.self_mask_commitment(seed, ctx, u),
            next_mask_keys.public,
            next_cipher_keys.public,
            signature,
            tuple(ciphertexts),
            self._ring.pack(vector),
        )

    def _sign(self, message: SessionSurvivorList) -> SessionSignature:
        """S10: sign H_r once per round, and only for a set the session can stand behind."""
        state = self._expect(Masked, message)
        if not self._config.active:
            self._leave(AbortReason.UNEXPECTED_MESSAGE, "no survivor list in semi-honest mode")
        self._check_round(message.session_id, message.recipient, message.round_number, state)
        survivors = message.survivors
        if any(b <= a for a, b in itertools.pairwise(survivors)):
            self._leave(AbortReason.DUPLICATE_ID, "the survivor set is not sorted and unique")
        members = frozenset(survivors)
        if self._client_id not in members:
            self._leave(AbortReason.LISTED_AS_DROPPED, "the survivor set leaves this client out")
        if not members <= frozenset(state.previous_survivors):
            # No resurrection: S_r is within S_r-1, so the cumulative dead set is signed too.
            self._leave(AbortReason.RESURRECTED_ID, "the survivor set lists a departed member")
        for v in members & self._neighbours:
            if v not in state.live:
                self._leave(AbortReason.RESURRECTED_ID, f"peer {v} had already left the session")
        self._check_enough(sum(1 for v in state.live if v in members), "live neighbours survived")
        rule = self._survivor_rule
        assert rule is not None
        # A as the finder counts it for this cohort, from the client's own rule: the one
        # bound everything subtracts (docs/XNOISE.md X10). The sum must hold min_cohort
        # honest inputs however the corrupt are placed (A5).
        corrupt = rule.corrupt
        if len(survivors) - corrupt < self._config.min_cohort:
            self._leave(
                AbortReason.COHORT_TOO_SMALL,
                f"{len(survivors)} survivors hold fewer than {self._config.min_cohort} honest "
                f"inputs if {corrupt} are corrupt",
            )
        self._check_uncut(survivors)
        chain = derivations.chain_digest(
            state.previous_chain,
            self.session.session_id,
            state.round_number,
            state.context,
            survivors,
        )
        assert self._identity is not None
        signature = self._identity.sign(derivations.consistency_signed_bytes(chain))
        self._state = Signed(state, survivors, chain)
        return SessionSignature(
            self.session.session_id, self._client_id, state.round_number, signature
        )

    def _unmask(self, message: SessionUnmaskRequest) -> SessionUnmaskResponse:
        current = self._state
        if isinstance(current, Signed):
            state, signed = current.masked, current
        else:
            state = self._expect(Masked, message)
            signed = None
            if self._config.active:
                self._leave(
                    AbortReason.UNEXPECTED_MESSAGE, "an unmask request before any signature"
                )
        self._check_round(message.session_id, message.recipient, message.round_number, state)
        u = self._client_id
        if u in message.dropped:
            self._leave(AbortReason.LISTED_AS_DROPPED, "the server lists this client as dropped")
        survivors, dropped = list(message.survivors), list(message.dropped)
        if set(survivors) & set(dropped):
            self._leave(AbortReason.BOTH_SHARES_REQUESTED, "a peer listed as survivor and dropped")
        self._check_ids(survivors + dropped, allowed=frozenset(state.live))
        if len(survivors) + len(dropped) != len(state.live):  # S13, A4
            self._leave(
                AbortReason.INCOMPLETE_REQUEST,
                "the request does not account for every neighbour this client masked with",
            )
        self._check_enough(len(survivors), "live neighbours survived")
        if signed is not None:
            self._check_certified(signed, state, message)
        # S6: each survivor's ciphertext and next-round keys, checked before anything leaves.
        forwarded = {f.sender: f for f in message.forwarded}
        if len(forwarded) != len(message.forwarded) or set(forwarded) - set(survivors):
            self._leave(
                AbortReason.INCONSISTENT_SURVIVORS,
                "ciphertexts forwarded from peers the request does not list as survivors",
            )
        r = state.round_number
        sid = self.session.session_id
        seed_shares: list[tuple[int, bytes]] = []
        next_live: dict[int, LiveNeighbour] = {}
        trouble: _Refusal | None = None
        seen_keys = {state.next_mask_keys.public, state.next_cipher_keys.public}
        for w in survivors:
            opened = self._open_round_share(state, w, forwarded.get(w), seen_keys)
            if isinstance(opened, _Refusal):
                trouble = trouble or opened
                continue
            seed_share, next_neighbour = opened
            seed_shares.append((w, seed_share))
            next_live[w] = next_neighbour
        key_shares = tuple((w, state.live[w].key_share.value_bytes()) for w in sorted(dropped))
        self._dead.update(dropped)
        if trouble is not None:
            # Round r's own checks passed: answer it, then leave (S6).
            self._state = Left(r + 1, trouble.reason, trouble.detail)
        else:
            previous = signed.survivors if signed is not None else state.previous_survivors
            chain = signed.chain if signed is not None else state.previous_chain
            self._state = Between(
                r, state.next_mask_keys, state.next_cipher_keys, next_live, previous, chain
            )
        return SessionUnmaskResponse(sid, u, r, tuple(sorted(seed_shares)), key_shares)

    def _open_round_share(
        self,
        state: Masked,
        sender: int,
        forwarded: ForwardedShare | None,
        seen_keys: set[bytes],
    ) -> tuple[bytes, LiveNeighbour] | _Refusal:
        """The sender's round-r share of its self-mask seed and what this client holds of it
        for round r + 1; or why its next-round keys cannot be trusted."""
        if forwarded is None:
            return _Refusal(
                AbortReason.BAD_PEER_KEY, f"no ciphertext or next-round keys of peer {sender}"
            )
        r = state.round_number
        u = self._client_id
        sid = self.session.session_id
        peer = state.live[sender]
        if self._config.active:
            public = self._pki.get(sender)
            signed = derivations.next_key_signed_bytes(
                sid,
                r + 1,
                sender,
                forwarded.next_mask_public,
                forwarded.next_cipher_public,
                state.context,
            )
            try:
                if public is None:
                    raise AuthenticationError("no identity key")
                ed25519_verify(public, signed, forwarded.next_signature)
            except AuthenticationError:
                return _Refusal(
                    AbortReason.BAD_SIGNATURE, f"peer {sender}'s next-round keys are not signed"
                )
        for key in (forwarded.next_mask_public, forwarded.next_cipher_public):
            if key in seen_keys or key in (peer.mask_public, peer.cipher_public):
                return _Refusal(
                    AbortReason.DUPLICATE_KEY, f"peer {sender}'s next-round key repeats a key"
                )
            seen_keys.add(key)
        try:
            fresh = state.cipher_keys.exchange(forwarded.next_cipher_public)
            share_key = derivations.round_share_key(
                peer.chain_key,
                fresh,
                state.context,
                sender,
                u,
                forwarded.next_cipher_public,
                state.cipher_keys.public,
            )
            plaintext = aead.open_sealed(
                share_key,
                forwarded.sealed,
                derivations.round_share_associated_data(
                    state.context, sender, u, r, forwarded.next_cipher_public
                ),
            )
            origin, recipient, round_number, seed_share, key_share, next_mask = (
                derivations.decode_round_share(plaintext)
            )
        except (AuthenticationError, CryptoError, DecodeError):
            return _Refusal(AbortReason.BAD_PEER_KEY, f"peer {sender}'s ciphertext does not open")
        if (origin, recipient, round_number) != (sender, u, r):
            return _Refusal(AbortReason.BAD_PEER_KEY, f"peer {sender}'s ciphertext is misaddressed")
        if next_mask != forwarded.next_mask_public:
            return _Refusal(
                AbortReason.BAD_PEER_KEY, f"peer {sender}'s next mask key is not the one it sealed"
            )
        outgoing = state.sealed_with[sender]
        low_to_high, high_to_low = (outgoing, fresh) if u < sender else (fresh, outgoing)
        chain = derivations.advance_chain(
            peer.chain_key, low_to_high, high_to_low, sid, r + 1, u, sender
        )
        x = one_shot.share_x(u)
        return seed_share, LiveNeighbour(
            next_mask,
            forwarded.next_cipher_public,
            chain,
            Share.from_value_bytes(x, key_share),
        )

    # ----------------------------------------------------------------- checks
    def _expect(self, expected: type[S], message: object = None) -> S:
        state = self._state
        if not isinstance(state, expected):
            what = type(message).__name__ if message is not None else "this call"
            self._leave(
                AbortReason.UNEXPECTED_MESSAGE,
                f"{what} is not expected in state {type(state).__name__}",
            )
        return state

    def _leave(self, reason: AbortReason, detail: str) -> NoReturn:
        """Drop every secret of the session and refuse anything more of it."""
        self._state = Left(self.closed_rounds + 1, reason, detail)
        self._input = None
        raise ClientAbort(reason, detail)

    def _check_addressed(self, session_id: bytes, recipient: int) -> None:
        if session_id != self.session.session_id:
            self._leave(AbortReason.WRONG_SESSION, "message belongs to another session")
        if recipient != self._client_id:
            self._leave(AbortReason.WRONG_SESSION, "message is addressed to another client")

    def _check_round(
        self, session_id: bytes, recipient: int, round_number: int, state: Masked
    ) -> None:
        self._check_addressed(session_id, recipient)
        if round_number != state.round_number:
            self._leave(
                AbortReason.ROUND_OUT_OF_ORDER,
                f"a message of round {round_number} during round {state.round_number}",
            )

    def _check_ids(self, ids: list[int], *, allowed: frozenset[int]) -> None:
        """Every id must be allowed now, named once, and not be this client itself."""
        seen: set[int] = set()
        for i in ids:
            if i == self._client_id:
                self._leave(AbortReason.SELF_LISTED_AS_PEER, "this client is listed as a peer")
            if i in seen:
                self._leave(AbortReason.DUPLICATE_ID, f"peer {i} is listed twice")
            seen.add(i)
            if i not in allowed:
                if i in self._dead:  # S7: dead is forever
                    self._leave(AbortReason.RESURRECTED_ID, f"peer {i} had already left")
                self._leave(AbortReason.UNKNOWN_ID, f"peer {i} is not a live neighbour here")

    def _check_enough(self, count: int, what: str) -> None:
        if count < self._config.threshold:
            self._leave(
                AbortReason.BELOW_THRESHOLD,
                f"only {count} {what}; the threshold is {self._config.threshold}",
            )

    def _check_signature(self, signer: int, signed: bytes, signature: bytes) -> None:
        public = self._pki.get(signer)
        if public is None:
            self._leave(AbortReason.UNKNOWN_ID, f"no identity key for client {signer}")
        try:
            ed25519_verify(public, signed, signature)
        except AuthenticationError:
            self._leave(AbortReason.BAD_SIGNATURE, f"client {signer}'s signature does not verify")

    def _check_uncut(self, survivors: tuple[int, ...]) -> None:
        rule = self._survivor_rule
        assert rule is not None
        if rule.quorum > len(survivors):
            self._leave(
                AbortReason.COHORT_TOO_SMALL,
                f"{len(survivors)} survivors cannot be certified by {rule.quorum} signers",
            )
        slot = thin_window_of(self._config.id_array, self.session.graph_seed, survivors, rule)
        if slot is not None:
            self._leave(
                AbortReason.SURVIVORS_CUT,
                f"ring slots {slot}..{slot + rule.window - 1} hold fewer than "
                f"{rule.least_in_window} survivors: the set would cut the graph",
            )

    def _check_certified(
        self, signed: Signed, state: Masked, message: SessionUnmaskRequest
    ) -> None:
        """The request follows from the set this client signed, which t of its live
        neighbours and a quorum of the cohort signed too, on the same H_r (S10)."""
        members = frozenset(signed.survivors)
        if (
            set(message.survivors) != set(state.live) & members
            or set(message.dropped) != set(state.live) - members
        ):
            self._leave(
                AbortReason.INCONSISTENT_SURVIVORS,
                "the request does not match the survivor set this client signed",
            )
        rule = self._survivor_rule
        assert rule is not None
        if len(message.signatures) > len(self._config.client_ids):
            self._leave(AbortReason.DUPLICATE_ID, "more signatures than cohort members")
        signers: dict[int, bytes] = {}
        for signer, signature in message.signatures:
            if signer in signers:
                self._leave(AbortReason.DUPLICATE_ID, f"two signatures from client {signer}")
            if signer in members:
                signers[signer] = signature
        near = [v for v in signers if v in state.live]
        self._check_enough(len(near), "live neighbours signed the same history")
        if len(signers) < rule.quorum:
            self._leave(
                AbortReason.BELOW_THRESHOLD,
                f"only {len(signers)} members certified the survivor set; {rule.quorum} are needed",
            )
        payload = derivations.consistency_signed_bytes(signed.chain)
        far = [v for v in signers if v not in state.live]
        checked = near[: self._config.threshold]
        checked += [v for v in (*near[len(checked) :], *far)][: max(0, rule.quorum - len(checked))]
        for signer in checked:
            self._check_signature(signer, payload, signers[signer])

    def _exchange(self, keys: X25519KeyPair, public: bytes, peer: int) -> bytes:
        try:
            return keys.exchange(public)
        except CryptoError:
            self._leave(AbortReason.BAD_PEER_KEY, f"peer {peer}'s key is invalid")

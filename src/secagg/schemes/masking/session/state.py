"""A session client's durable state as bytes, and the deployment that rebuilds a client from it
(docs/SESSIONS.md 1.3, 1.4; rules S2, S11).

``SessionClient.snapshot()`` writes what the client holds: the session's terms, its id, when
the set-up began by its own clock, the agreed session (attempt, absent members, session id and
graph seed), the neighbours it holds dead, and its current state with the keys and held
shares that state holds, nothing more. ``SessionClient.restore(blob, ...)`` rebuilds exactly
that client. It is the client's *state*, never a seed it was drawn from nor a transcript to
replay: no update, no self-mask seed, no round's DP noise, no Shamir coefficient, no private
key, chain key, exchange or held share the state has already dropped is in it (attack A1),
because none of them is in the state.

Before the session is agreed the client holds only its commit-reveal step (the attempt and its
32-byte contribution, which it reveals anyway); that is written too, so a client whose set-up
moves to another process mid-agreement can go on.

The encoding is canonical and strictly decoded: fixed-width fields, ids in increasing order,
every map keyed by increasing ids, every key set cross-checked against the session's graph,
no trailing bytes; anything else is a ``DecodeError`` whose text never holds a byte of the
blob. ``Durable`` keeps every secret out of its repr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from secagg.errors import AbortReason, ClientAbort, DecodeError, UsageError
from secagg.hazmat.keys import Ed25519SigningKey, X25519KeyPair
from secagg.hazmat.randomness import Randomness
from secagg.hazmat.shamir import SHARE_VALUE_BYTES, Share
from secagg.protocol.codec import DIGEST_BYTES, Message, Reader, Writer
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.client import (
    AwaitingContributions,
    AwaitingDigest,
    Initial,
)
from secagg.schemes.masking.client import ClientState as AgreementState
from secagg.schemes.masking.encoding import InputEncoding
from secagg.schemes.masking.graph import SurvivorRule
from secagg.schemes.masking.messages import (
    CONTRIBUTION_BYTES,
    KEY_BYTES,
    MAX_ATTEMPTS,
    SIGNATURE_BYTES,
    PeerKeyEntry,
    RoundConfig,
)
from secagg.schemes.masking.scheme import MaskingScheme
from secagg.schemes.masking.session.client import (
    Agreeing,
    AwaitingSetupKeys,
    AwaitingSetupShares,
    Between,
    ClientState,
    Left,
    LiveNeighbour,
    Masked,
    SessionClient,
    Signed,
)
from secagg.schemes.masking.session.messages import (
    SESSION_ID_BYTES,
    PeerSetupShares,
    RoundTask,
    SessionConfig,
)
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = [
    "Durable",
    "Opening",
    "Phase",
    "Progress",
    "SessionDeployment",
    "decode",
    "encode",
    "opening",
    "progress",
]

_MAGIC = b"SAss"  # "secagg session state"
_VERSION = 1

# The current state, by tag.
_AGREEING, _SETUP_KEYS, _SETUP_SHARES, _BETWEEN, _MASKED, _SIGNED, _LEFT = range(1, 8)
# The commit-reveal step of an agreeing client, by tag.
_INITIAL, _DIGEST, _CONTRIBUTIONS = range(3)

_LIVE_ENTRY_BYTES = 4 + KEY_BYTES + KEY_BYTES + DIGEST_BYTES + SHARE_VALUE_BYTES
_PEER_ENTRY_BYTES = 4 + KEY_BYTES + KEY_BYTES + 4 + DIGEST_BYTES


@dataclass(frozen=True)
class Durable:
    """What ``decode`` reads: the client's facts and state (``agreement`` is its commit-reveal
    step while ``state`` is ``Agreeing``, otherwise ``Initial``)."""

    terms: SessionTerms = field(repr=False)
    client_id: int
    started: float
    session: one_shot.Session | None = field(repr=False)
    dead: frozenset[int] = field(repr=False)
    state: ClientState = field(repr=False)
    agreement: AgreementState = field(repr=False)


# ----------------------------------------------------------------------------- encoding
def encode(
    terms: SessionTerms,
    client_id: int,
    started: float,
    session: one_shot.Session | None,
    dead: frozenset[int] | set[int],
    state: ClientState,
    agreement: AgreementState,
) -> bytes:
    """The canonical bytes of a client's durable state (``SessionClient.snapshot``)."""
    if not math.isfinite(started):
        raise UsageError("a session's start time must be finite")
    w = Writer()
    w.fixed(_MAGIC, len(_MAGIC))
    w.u8(_VERSION)
    w.blob(SessionConfig.of(terms).encode())
    w.u32(client_id)
    w.f64(started)
    if session is None:
        w.u8(0)
    else:
        w.u8(1)
        w.u32(session.attempt)
        w.ids(sorted(session.absent))
        w.fixed(session.session_id, SESSION_ID_BYTES)
        w.fixed(session.graph_seed, DIGEST_BYTES)
    w.ids(sorted(dead))
    if isinstance(state, Agreeing):
        w.u8(_AGREEING)
        _write_agreement(w, agreement)
    elif isinstance(state, AwaitingSetupKeys):
        w.u8(_SETUP_KEYS)
        _write_key(w, state.cipher_keys)
        _write_key(w, state.mask_keys)
    elif isinstance(state, AwaitingSetupShares):
        w.u8(_SETUP_SHARES)
        _write_key(w, state.cipher_keys)
        _write_key(w, state.mask_keys)
        if set(state.peers) != set(state.chain_keys):
            raise UsageError("a chain key for every peer the set-up shares went to")
        w.u32(len(state.peers))
        for v in sorted(state.peers):
            peer = state.peers[v]
            w.u32(v)
            w.fixed(peer.cipher_public, KEY_BYTES)
            w.fixed(peer.mask_public, KEY_BYTES)
            w.blob(peer.signature)
            w.fixed(state.chain_keys[v], DIGEST_BYTES)
    elif isinstance(state, Between):
        w.u8(_BETWEEN)
        w.u32(state.closed)
        _write_key(w, state.mask_keys)
        _write_key(w, state.cipher_keys)
        _write_live(w, state.live)
        w.ids(state.survivors)
        w.fixed(state.chain, DIGEST_BYTES)
    elif isinstance(state, Masked | Signed):
        masked = state if isinstance(state, Masked) else state.masked
        w.u8(_MASKED if isinstance(state, Masked) else _SIGNED)
        w.u32(masked.round_number)
        w.fixed(masked.context, DIGEST_BYTES)
        _write_key(w, masked.cipher_keys)
        _write_key(w, masked.next_mask_keys)
        _write_key(w, masked.next_cipher_keys)
        _write_live(w, masked.live)
        if set(masked.sealed_with) != set(masked.live):
            raise UsageError("the exchange that sealed the shares to every live neighbour")
        for v in sorted(masked.live):
            w.fixed(masked.sealed_with[v], DIGEST_BYTES)
        w.ids(masked.previous_survivors)
        w.fixed(masked.previous_chain, DIGEST_BYTES)
        if isinstance(state, Signed):
            w.ids(state.survivors)
            w.fixed(state.chain, DIGEST_BYTES)
    else:
        w.u8(_LEFT)
        w.u32(state.round_number)
        w.blob(state.reason.value.encode())
        w.blob(state.detail.encode())
    return w.getvalue()


def _write_key(w: Writer, keys: X25519KeyPair) -> None:
    w.fixed(keys.private_bytes(), KEY_BYTES)


def _write_live(w: Writer, live: Mapping[int, LiveNeighbour]) -> None:
    w.u32(len(live))
    for v in sorted(live):
        neighbour = live[v]
        w.u32(v)
        w.fixed(neighbour.mask_public, KEY_BYTES)
        w.fixed(neighbour.cipher_public, KEY_BYTES)
        w.fixed(neighbour.chain_key, DIGEST_BYTES)
        w.fixed(neighbour.key_share.value_bytes(), SHARE_VALUE_BYTES)


def _write_agreement(w: Writer, agreement: AgreementState) -> None:
    if isinstance(agreement, Initial):
        w.u8(_INITIAL)
    elif isinstance(agreement, AwaitingDigest):
        w.u8(_DIGEST)
        w.u32(agreement.attempt)
        w.fixed(agreement.contribution, CONTRIBUTION_BYTES)
    elif isinstance(agreement, AwaitingContributions):
        w.u8(_CONTRIBUTIONS)
        w.u32(agreement.attempt)
        w.fixed(agreement.contribution, CONTRIBUTION_BYTES)
        w.fixed(agreement.digest, DIGEST_BYTES)
        w.u32(agreement.count)
    else:
        raise UsageError(f"an agreeing session client is never {type(agreement).__name__}")


# ----------------------------------------------------------------------------- decoding
def decode(blob: bytes) -> Durable:
    """What ``encode`` wrote, checked field by field; ``DecodeError`` for anything else."""
    if not isinstance(blob, bytes):
        raise DecodeError("a session state is bytes")
    r = Reader(blob)
    if r.fixed(len(_MAGIC)) != _MAGIC:
        raise DecodeError("not a session client's state")
    if r.u8() != _VERSION:
        raise DecodeError("a session state of another version")
    try:
        terms = SessionConfig.decode(r.blob()).terms
    except DecodeError as exc:
        raise DecodeError(f"a session state's terms: {exc}") from None
    config = terms.config
    client_id = r.u32()
    if client_id not in config.cohort:
        raise DecodeError("a session state of a client outside its cohort")
    started = r.f64()
    if not math.isfinite(started):
        raise DecodeError("a session state's start time is not finite")
    session = _read_session(r, config, client_id)
    neighbours = frozenset() if session is None else frozenset(session.neighbours(client_id))
    dead = frozenset(_read_ids(r, "dead neighbours"))
    if not dead <= neighbours:
        raise DecodeError("a dead id that is no neighbour")
    tag = r.u8()
    agreement: AgreementState = Initial()
    if tag != _LEFT and (tag == _AGREEING) != (session is None):
        raise DecodeError("a session is agreed exactly when the client is past agreeing")
    participants = frozenset() if session is None else session.participants
    state: ClientState
    if tag == _AGREEING:
        agreement = _read_agreement(r)
        state = Agreeing()
    elif tag == _SETUP_KEYS:
        state = AwaitingSetupKeys(_read_key(r), _read_key(r))
    elif tag == _SETUP_SHARES:
        state = _read_setup_shares(r, neighbours)
    elif tag == _BETWEEN:
        closed = _read_round(r, terms, least=0)
        mask_keys, cipher_keys = _read_key(r), _read_key(r)
        live = _read_live(r, neighbours - dead, client_id)
        survivors = _read_ids(r, "survivors", within=participants)
        state = Between(closed, mask_keys, cipher_keys, live, survivors, r.fixed(DIGEST_BYTES))
    elif tag in (_MASKED, _SIGNED):
        round_number = _read_round(r, terms, least=1)
        context = r.fixed(DIGEST_BYTES)
        keys = (_read_key(r), _read_key(r), _read_key(r))
        live = _read_live(r, neighbours - dead, client_id)
        sealed_with = {v: r.fixed(DIGEST_BYTES) for v in sorted(live)}
        previous = _read_ids(r, "survivors", within=participants)
        chain = r.fixed(DIGEST_BYTES)
        masked = Masked(round_number, context, *keys, live, previous, chain, sealed_with)
        state = masked
        if tag == _SIGNED:
            survivors = _read_ids(r, "survivors", within=frozenset(previous))
            state = Signed(masked, survivors, r.fixed(DIGEST_BYTES))
    elif tag == _LEFT:
        round_number = _read_round(r, terms, least=1, beyond=1)
        try:
            reason = AbortReason(r.blob().decode())
            detail = r.blob().decode()
        except (UnicodeDecodeError, ValueError):
            raise DecodeError("a session state's reason for leaving is not one") from None
        state = Left(round_number, reason, detail)
    else:
        raise DecodeError(f"unknown session state tag {tag}")
    r.finish()
    return Durable(terms, client_id, started, session, dead, state, agreement)


def _read_session(r: Reader, config: RoundConfig, client_id: int) -> one_shot.Session | None:
    agreed = r.u8()
    if agreed == 0:
        return None
    if agreed != 1:
        raise DecodeError("a session state's agreement flag is 0 or 1")
    attempt = r.u32()
    if not 1 <= attempt <= MAX_ATTEMPTS:
        raise DecodeError("a session state's attempt is out of range")
    absent = frozenset(_read_ids(r, "absent members"))
    if not absent <= config.cohort or client_id in absent:
        raise DecodeError("a session state's absent members are not the cohort's others")
    session_id, graph_seed = r.fixed(SESSION_ID_BYTES), r.fixed(DIGEST_BYTES)
    return one_shot.Session(config, attempt, absent, session_id, graph_seed)


def _read_ids(r: Reader, what: str, within: frozenset[int] | None = None) -> tuple[int, ...]:
    ids = r.ids()
    if not one_shot.sorted_unique(ids):
        raise DecodeError(f"a session state's {what} are not sorted and unique")
    if within is not None and not within.issuperset(ids):
        raise DecodeError(f"a session state's {what} are not the session's")
    return ids


def _read_round(r: Reader, terms: SessionTerms, *, least: int, beyond: int = 0) -> int:
    number = r.u32()
    if not least <= number <= terms.max_rounds + beyond:
        raise DecodeError("a session state's round number is out of range")
    return number


def _read_key(r: Reader) -> X25519KeyPair:
    return X25519KeyPair.from_private_bytes(r.fixed(KEY_BYTES))


def _each_id(r: Reader, entry_bytes: int, allowed: frozenset[int], what: str) -> Iterator[int]:
    """The id of each entry of a map, read as the entry's first field (the caller reads the
    rest): increasing, each one allowed; ``entry_bytes`` is an entry's size, for the count."""
    previous = -1
    for _ in range(r.count(entry_bytes)):
        v = r.u32()
        if v <= previous or v not in allowed:
            raise DecodeError(f"a session state's {what} are not its neighbours in order")
        previous = v
        yield v


def _read_live(r: Reader, allowed: frozenset[int], client_id: int) -> dict[int, LiveNeighbour]:
    x = one_shot.share_x(client_id)
    live: dict[int, LiveNeighbour] = {}
    for v in _each_id(r, _LIVE_ENTRY_BYTES, allowed, "live neighbours"):
        mask_public, cipher_public = r.fixed(KEY_BYTES), r.fixed(KEY_BYTES)
        chain = r.fixed(DIGEST_BYTES)
        share = Share.from_value_bytes(x, r.fixed(SHARE_VALUE_BYTES))
        live[v] = LiveNeighbour(mask_public, cipher_public, chain, share)
    return live


def _read_setup_shares(r: Reader, neighbours: frozenset[int]) -> AwaitingSetupShares:
    cipher_keys, mask_keys = _read_key(r), _read_key(r)
    peers: dict[int, PeerKeyEntry] = {}
    chain_keys: dict[int, bytes] = {}
    for v in _each_id(r, _PEER_ENTRY_BYTES, neighbours, "set-up peers"):
        cipher_public, mask_public, signature = r.fixed(KEY_BYTES), r.fixed(KEY_BYTES), r.blob()
        if len(signature) not in (0, SIGNATURE_BYTES):
            raise DecodeError("a session state's peer signature is empty or 64 bytes")
        peers[v] = PeerKeyEntry(v, cipher_public, mask_public, signature)
        chain_keys[v] = r.fixed(DIGEST_BYTES)
    return AwaitingSetupShares(cipher_keys, mask_keys, peers, chain_keys)


def _read_agreement(r: Reader) -> AgreementState:
    tag = r.u8()
    if tag == _INITIAL:
        return Initial()
    if tag not in (_DIGEST, _CONTRIBUTIONS):
        raise DecodeError(f"unknown agreement step tag {tag}")
    attempt = r.u32()
    if not 1 <= attempt <= MAX_ATTEMPTS:
        raise DecodeError("a session state's attempt is out of range")
    contribution = r.fixed(CONTRIBUTION_BYTES)
    if tag == _DIGEST:
        return AwaitingDigest(attempt, contribution)
    return AwaitingContributions(attempt, contribution, r.fixed(DIGEST_BYTES), r.u32())


# ----------------------------------------------------------------------------- progress
class Phase(StrEnum):
    """Where a session client is, as its journal needs to know it."""

    AGREEING = "agreeing"  # commit and reveal: no key exists yet
    SETTING_UP = "setting up"  # advertised its round-1 keys; the set-up shares are under way
    BETWEEN = "between rounds"  # the set-up or the last round closed
    IN_ROUND = "in a round"  # sent this round's message, waits to close it
    LEFT = "left"  # left the session: answers nothing of it again


@dataclass(frozen=True)
class Progress:
    """A client's phase, the rounds it closed, and why it left (if it did)."""

    phase: Phase
    closed: int
    reason: AbortReason | None = None
    detail: str = ""


def progress(client: SessionClient) -> Progress:
    state = client.state
    closed = client.closed_rounds
    if isinstance(state, Agreeing):
        return Progress(Phase.AGREEING, closed)
    if isinstance(state, AwaitingSetupKeys | AwaitingSetupShares):
        return Progress(Phase.SETTING_UP, closed)
    if isinstance(state, Between):
        return Progress(Phase.BETWEEN, closed)
    if isinstance(state, Masked | Signed):
        return Progress(Phase.IN_ROUND, closed)
    return Progress(Phase.LEFT, closed, state.reason, state.detail)


@dataclass(frozen=True)
class Opening:
    """What a message that opens a round names: a ``RoundTask``, or the set-up's shares
    carrying round 1's task (``with_setup``)."""

    session_id: bytes = field(repr=False)
    recipient: int
    round_number: int
    task: bytes = field(repr=False)
    with_setup: bool


def opening(message: Message) -> Opening | None:
    """The round ``message`` opens, if it opens one."""
    if isinstance(message, RoundTask):
        return Opening(
            message.session_id, message.recipient, message.round_number, message.task, False
        )
    if isinstance(message, PeerSetupShares) and message.first_task:
        return Opening(message.session_id, message.recipient, 1, message.first_task, True)
    return None


# ----------------------------------------------------------------------------- the deployment
@dataclass(frozen=True)
class SessionDeployment:
    """What a client's own deployment fixes for its session clients (never the server's word):
    its signing key and every peer's identity key (active mode), its input encoding and what
    it requires of a survivor set."""

    identity: Ed25519SigningKey | None = field(repr=False)
    pki: Mapping[int, bytes] | None = field(repr=False)
    encoding: InputEncoding = field(repr=False)
    survivor_rule: SurvivorRule | None

    @classmethod
    def of(cls, scheme: object, config: RoundConfig, client_id: int) -> SessionDeployment:
        """The deployment ``scheme`` (which has checked ``config`` already) as a session
        client of ``config`` sees it."""
        if not isinstance(scheme, MaskingScheme):
            raise ClientAbort(
                AbortReason.PARAMETER_MISMATCH, "sessions are masking's; this deployment runs none"
            )
        if not config.active:
            return cls(None, None, scheme.encoding, None)
        rule = scheme.params.survivor_rule(len(config.client_ids), config.degree)
        return cls(scheme.identities.get(client_id), scheme.pki, scheme.encoding, rule)

    def client(
        self, terms: SessionTerms, client_id: int, rng: Randomness, clock: Callable[[], float]
    ) -> SessionClient:
        return SessionClient(
            terms,
            client_id,
            rng,
            identity=self.identity,
            pki=self.pki,
            encoding=self.encoding,
            survivor_rule=self.survivor_rule,
            clock=clock,
        )

    def restore(self, blob: bytes, rng: Randomness, clock: Callable[[], float]) -> SessionClient:
        return SessionClient.restore(
            blob,
            rng,
            identity=self.identity,
            pki=self.pki,
            encoding=self.encoding,
            survivor_rule=self.survivor_rule,
            clock=clock,
        )

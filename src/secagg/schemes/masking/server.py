"""The server's side of one round, as a sans-I/O state machine.

The driver (simulator or network service) feeds every client message to ``receive`` and
calls ``close_stage`` when the stage's deadline passes or ``waiting_for`` is empty;
``close_stage`` returns the messages to send for the next stage. The server never raises
because of a client: a client that misbehaves is dropped with a ``DropReason`` and the
round goes on. It raises ``RoundAborted`` only when the round cannot finish -- too few
clients remain to reconstruct what must be removed -- and it checks that *before* asking
anyone to reveal a share, so an aborted round reveals nothing.

Stages and who is expected in each (sets named after Bonawitz et al. 2017)::

    commit        the configured cohort           -> C  committed to a contribution
    reveal        C                               -> every one of C revealed a matching
                                                     contribution: the session is agreed
                                                     (if not, commit again among those who
                                                     did, at most 3 attempts)
    advertise     U0 = C                          -> U1 advertised valid keys
    share         U1 (pruned to >= t neighbours)  -> U2 sent shares to all its neighbours
    masked-input  U2 (pruned to >= t neighbours)  -> U3 sent a masked input: the included
    consistency   U3 (active mode only)           -> U3' signed the survivor set U3
    unmask        U3 (or U3' with t signatures)   -> U4 answered; then the sum is unmasked

The server is always in exactly one state, one per stage it waits in, and each state holds
the frozen records of what the stages before it established (built when each one closed)::

    Committing(attempt) --> Revealing(attempt, commitments)
      --> Advertising(agreed: SessionAgreed)
      --> Sharing(agreed, advertised: KeysAdvertised)
      --> Masking(agreed, advertised, routed: SharesRouted)
      --> [Confirming(agreed, advertised, routed, masked: InputsMasked) -->]
      --> Unmasking(agreed, advertised, routed, masked, requests)
      --> Completed(result)              (any state) --> Aborted(reason)

    Revealing --(a committed client did not reveal)--> Committing(attempt + 1)

Every cohort member has exactly one ``PeerStatus`` at every moment: ``EXPECTED`` until its
message for the current stage is taken, then ``ANSWERED``; ``DROPPED`` for good once the
server stops waiting for it (``drops`` says when and why). When a stage closes, the silent
are dropped, and those still ``ANSWERED`` are ``EXPECTED`` in the next stage.

In active mode (a ``semi-malicious`` server model) the server also checks every signature
against the clients' identity keys (``pki``) and drops a client whose signature fails.

Memory stays O(dim + clients x degree): masked inputs are added to one running sum as they
arrive.

With removable noise layers (docs/XNOISE.md) each unmask request states the count of inputs
in the sum; once the masks are off, the server rebuilds the removed layer seeds of every
included client, checks each against its commitment, and subtracts the layers it regenerates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AuthenticationError,
    CryptoError,
    DecodeError,
    DropReason,
    InconsistentSharesError,
    RoundAborted,
    UsageError,
)
from secagg.hazmat import prg
from secagg.hazmat.keys import X25519KeyPair, ed25519_verify, x25519_public_from_private
from secagg.hazmat.quantize import Quantizer
from secagg.hazmat.randomness import SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, combine
from secagg.protocol.codec import Message, decode
from secagg.protocol.runner import Aggregate, NoiseTakenOff
from secagg.protocol.stages import SESSION_AGREEMENT, Drop, Stage, missed
from secagg.schemes.masking import derivations
from secagg.schemes.masking.encoding import InputEncoding, encoding_or_quantizer
from secagg.schemes.masking.graph import SurvivorRule, thin_window_of
from secagg.schemes.masking.messages import (
    CLIENT_MESSAGE,
    MAX_ATTEMPTS,
    AdvertiseKeys,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ConsistencySignature,
    ContributionList,
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
    ciphertext_bytes,
)
from secagg.schemes.masking.removal import NoiseRemoval

__all__ = [
    "Drop",
    "PeerStatus",
    "RoundResult",
    "Server",
    "Stage",
    "check_certifiable",
    "rebuild_verified",
]


# Subsets of t shares tried before a reconstruction is given up (each try is ~20 us).
_RECONSTRUCTION_TRIES = 2000


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class RoundResult:
    """The unmasked sum over exactly the ``included`` clients, in the ring."""

    included: tuple[int, ...]
    total: NDArray[np.unsignedinteger] = field(repr=False)
    # Removable noise: what came off before the sum was revealed (None: no layers).
    noise_taken_off: NoiseTakenOff | None = None

    @property
    def total_weight(self) -> int:
        return int(self.total[-1])

    def weighted_mean(self, quantizer: Quantizer) -> NDArray[np.float64]:
        return quantizer.decode(self.total)

    def decoded(self, config: RoundConfig, encoding: InputEncoding, binding: bytes) -> Aggregate:
        """The aggregate, decoded by ``encoding`` under ``binding`` (the session id of a
        one-shot round, ctx_r of a session's round): the weighted or the noisy mean."""
        included = len(self.included)
        # The last element sums the clients' weights (quantised) or counts (distributed DP):
        # more than the included clients may carry means one of them sent a malformed weight,
        # and every value of the sum is then suspect. The round reveals nothing.
        limit = included * config.max_weight
        if int(self.total_weight) > limit:
            raise RoundAborted(
                Stage.UNMASK.value,
                f"the revealed sum weighs {int(self.total_weight)}, more than its {included} "
                f"clients may ({limit}): a client sent a malformed weight",
            )
        return Aggregate(
            self.included,
            float(self.total_weight),
            encoding.decode(self.total, included, binding),
            encoding.error_bound(included),
            ring_total=self.total,
            noise_taken_off=self.noise_taken_off,
        )


class PeerStatus(StrEnum):
    """Where one cohort member stands in the current stage (each has exactly one)."""

    EXPECTED = "expected"  # the stage waits for its message
    ANSWERED = "answered"  # its message for the stage was taken
    DROPPED = "dropped"  # the server stopped waiting for it, for good (``Server.drops``)


# ----------------------------------------------------------------- what each stage establishes
@dataclass(frozen=True)
class SessionAgreed:
    """The reveal stage, once every committed contribution is in: the session (its id and
    its SecAgg+ graph) and each cohort member's neighbours in it."""

    session: derivations.Session
    neighbours: Mapping[int, tuple[int, ...]] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.session.participants <= self.neighbours.keys():
            raise UsageError("every participant of the session needs its neighbours")


@dataclass(frozen=True)
class KeysAdvertised:
    """The advertise stage: the keys each client advertised, and whose keys each client that
    goes on was sent (its neighbours that advertised, after pruning)."""

    keys: Mapping[int, AdvertiseKeys] = field(repr=False)
    peers: Mapping[int, tuple[int, ...]] = field(repr=False)

    def __post_init__(self) -> None:
        for u, peers in self.peers.items():
            if u not in self.keys or not all(v in self.keys for v in peers):
                raise UsageError(f"client {u} or one of its peers advertised no keys")


@dataclass(frozen=True)
class SharesRouted:
    """The share stage: whose sealed shares each client that goes on was sent (so whose
    pairwise masks its masked input contains), and every sharer's self-mask commitment."""

    view: Mapping[int, tuple[int, ...]] = field(repr=False)
    self_mask_commitments: Mapping[int, bytes] = field(repr=False)
    # Removable noise: each sharer's commitments to its layer seeds (empty without layers).
    layer_commitments: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        committed = self.self_mask_commitments
        for v, view in self.view.items():
            if v not in committed or not all(u in committed for u in view):
                raise UsageError(f"client {v} or one of its peers sent no self-mask commitment")


@dataclass(frozen=True)
class InputsMasked:
    """The masked-input stage: the clients whose masked inputs are in the sum (the survivor
    set U3, also what active mode asks to sign), and which of its peers' shares each sender
    said it lacks."""

    included: tuple[int, ...]
    missing: Mapping[int, frozenset[int]] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.included or not derivations.sorted_unique(self.included):
            raise UsageError("the included clients must be a non-empty increasing sequence")
        if not all(u in self.missing for u in self.included):
            raise UsageError("every included client's missing shares must be known")


# ----------------------------------------------------------------- one state per stage
@dataclass(frozen=True)
class Committing:
    """Waits for each client's commitment to a fresh contribution."""

    stage: ClassVar[Stage] = Stage.COMMIT
    attempt: int

    def __post_init__(self) -> None:
        if not 1 <= self.attempt <= MAX_ATTEMPTS:
            raise UsageError(f"attempt {self.attempt} is outside 1..{MAX_ATTEMPTS}")


@dataclass(frozen=True)
class Revealing:
    """Sent the digest of every commitment; waits for the committed contributions."""

    stage: ClassVar[Stage] = Stage.REVEAL
    attempt: int
    commitments: Mapping[int, bytes] = field(repr=False)  # this attempt's, by client

    def __post_init__(self) -> None:
        if not 1 <= self.attempt <= MAX_ATTEMPTS:
            raise UsageError(f"attempt {self.attempt} is outside 1..{MAX_ATTEMPTS}")


@dataclass(frozen=True)
class Advertising:
    """The session is agreed; waits for each client's two public keys."""

    stage: ClassVar[Stage] = Stage.ADVERTISE
    agreed: SessionAgreed


@dataclass(frozen=True)
class Sharing:
    """Sent each client its peers' keys; waits for sealed shares addressed to those peers."""

    stage: ClassVar[Stage] = Stage.SHARE
    agreed: SessionAgreed
    advertised: KeysAdvertised


@dataclass(frozen=True)
class Masking:
    """Routed the sealed shares; waits for masked inputs (added to the running sum)."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    agreed: SessionAgreed
    advertised: KeysAdvertised
    routed: SharesRouted


@dataclass(frozen=True)
class Confirming:
    """Active mode: sent the survivor set; waits for each client's signature of it."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY
    agreed: SessionAgreed
    advertised: KeysAdvertised
    routed: SharesRouted
    masked: InputsMasked


@dataclass(frozen=True)
class Unmasking:
    """Checked that every mask can be removed; sent each askable client its request (one kind
    of share per peer); waits for the shares."""

    stage: ClassVar[Stage] = Stage.UNMASK
    agreed: SessionAgreed
    advertised: KeysAdvertised
    routed: SharesRouted
    masked: InputsMasked
    requests: Mapping[int, UnmaskRequest] = field(repr=False)

    def __post_init__(self) -> None:
        if not all(r.recipient == v for v, r in self.requests.items()):
            raise UsageError("an unmask request filed under another client")


Waiting = Committing | Revealing | Advertising | Sharing | Masking | Confirming | Unmasking


@dataclass(frozen=True)
class Completed:
    """Unmasked the sum. ``last`` is the state it completed from: what the round established
    stays readable (the session, whose masks each input held)."""

    stage: ClassVar[Stage] = Stage.COMPLETED
    last: Unmasking = field(repr=False)
    result: RoundResult


@dataclass(frozen=True)
class Aborted:
    """Gave up in the state ``last``; nothing summed or pooled is kept (``Server._fail``)."""

    stage: ClassVar[Stage] = Stage.ABORTED
    last: Waiting = field(repr=False)
    reason: RoundAborted


ServerState = Waiting | Completed | Aborted

_W = TypeVar("_W", bound=Waiting)


class Server:
    """The server's view of one round."""

    def __init__(
        self,
        config: RoundConfig,
        *,
        pki: Mapping[int, bytes] | None = None,
        apply_masks: prg.ApplyMasks = prg.apply_masks,
        encoding: InputEncoding | None = None,
        survivor_rule: SurvivorRule | None = None,
        noise_removal: NoiseRemoval | None = None,
    ) -> None:
        """``pki`` (each client's identity public key) and ``survivor_rule`` (what the
        deployment's clients require of the survivor set) are required in active mode.
        ``apply_masks`` regenerates the masks to remove; a driver may pass one that uses
        every core (``secagg.parallel.MaskApplier``). ``encoding`` reads the unmasked sum
        (default: the quantiser of the config; distributed DP needs its DP encoding).
        ``noise_removal`` takes removable noise layers off (required when the round's DP
        block has them)."""
        encoding = encoding_or_quantizer(config, encoding)
        config_layers = None if config.dp is None else config.dp.layers
        if config_layers != (None if noise_removal is None else noise_removal.layers):
            raise UsageError("the round's noise layers are not the deployment's")
        self._removal = noise_removal
        self._encoding = encoding
        self._apply_masks = apply_masks
        if config.active and (pki is None or survivor_rule is None):
            raise UsageError(
                "active mode needs the clients' identity public keys and the survivor rule"
            )
        self._survivor_rule = survivor_rule
        self._pki = dict(pki or {})
        self.config = config
        self._ring = Ring(config.ring_bits)
        self._t = config.threshold
        self._cohort = config.cohort
        # The round's one state: replaced (never edited) each time a stage closes.
        self._state: ServerState = Committing(attempt=1)
        # Each cohort member's status in the current stage, and why the dropped were dropped
        # (in the order they were; ``drop`` is the one place that writes both).
        self._status: dict[int, PeerStatus] = dict.fromkeys(config.client_ids, PeerStatus.EXPECTED)
        self._drops: dict[int, Drop] = {}
        # What the current stage has taken so far; emptied when it closes. A client dropped
        # after its message was taken keeps its answer here: at the reveal and masked-input
        # stages it still counts (its contribution is in the session, its input in the sum).
        self._answers: dict[int, Message] = {}
        self._key_owner: dict[bytes, int] = {}  # advertise: the client each key came from
        # Accumulators, mutable because they must be: masked inputs are added to one running
        # sum as they arrive (memory O(dim), never a vector per client), and unmask answers
        # pool their shares by owner. Both are cleared on abort (``_fail``).
        self._total: NDArray[np.unsignedinteger] | None = None
        self._seed_shares: dict[int, list[Share]] = {}
        self._key_shares: dict[int, list[Share]] = {}
        self._layer_shares: dict[tuple[int, int], list[Share]] = {}  # (owner, layer)
        # Observations that drop nobody.
        self._anomalies: list[Drop] = []
        self._strangers = 0
        # A throwaway key to check that advertised keys are usable X25519 points.
        self._probe_key = X25519KeyPair.generate(SystemRandomness())
        # What takes each stage's messages (the message to keep, or None if the sender was
        # dropped), and what closes each stage.
        self._handlers: dict[Stage, Callable[[int, Message], Message | None]] = {
            Stage.COMMIT: self._take_commit,
            Stage.REVEAL: self._take_reveal,
            Stage.ADVERTISE: self._take_advertise,
            Stage.SHARE: self._take_share,
            Stage.MASKED_INPUT: self._take_masked_input,
            Stage.CONSISTENCY: self._take_consistency,
            Stage.UNMASK: self._take_unmask,
        }
        self._closers: dict[Stage, Callable[[set[int]], dict[int, Message]]] = {
            Stage.COMMIT: self._close_commit,
            Stage.REVEAL: self._close_reveal,
            Stage.ADVERTISE: self._close_advertise,
            Stage.SHARE: self._close_share,
            Stage.MASKED_INPUT: self._close_masked_input,
            Stage.CONSISTENCY: self._close_consistency,
            Stage.UNMASK: self._close_unmask,
        }

    def __repr__(self) -> str:
        return f"Server(stage={self.stage.value}, waiting_for={len(self.waiting_for())})"

    # ----------------------------------------------------------------- observation
    def start(self) -> dict[int, Message]:
        """What opens the round: the configuration, for every client of the cohort (each
        answers with its commitment)."""
        state = self._state
        if not isinstance(state, Committing) or state.attempt != 1 or self._answers:
            raise UsageError("the round has already started")
        return dict.fromkeys(self.config.client_ids, self.config)

    @property
    def stage(self) -> Stage:
        return self._state.stage

    @property
    def done(self) -> bool:
        return isinstance(self._state, Completed | Aborted)

    @property
    def session(self) -> derivations.Session:
        state = self._last_waiting()
        if isinstance(state, Committing | Revealing):
            raise UsageError("the session is not agreed yet")
        return state.agreed.session

    @property
    def advertised(self) -> KeysAdvertised:
        """The keys each client advertised and the peers it shares with, once the advertise
        stage has closed (what a protocol built on this agreement shares over)."""
        state = self._last_waiting()
        if isinstance(state, Committing | Revealing | Advertising):
            raise UsageError("the keys are not advertised yet")
        return state.advertised

    @property
    def attempt(self) -> int:
        """The commit-reveal attempt this round is on (or agreed in)."""
        state = self._last_waiting()
        if isinstance(state, Committing | Revealing):
            return state.attempt
        return state.agreed.session.attempt

    @property
    def statuses(self) -> Mapping[int, PeerStatus]:
        """Each cohort member's status in the current stage (or the last, once ended)."""
        return dict(self._status)

    @property
    def drops(self) -> Mapping[int, Drop]:
        return dict(self._drops)

    @property
    def anomalies(self) -> Sequence[Drop]:
        """Misbehaviour that did not drop the client (e.g. a conflicting late duplicate)."""
        return tuple(self._anomalies)

    @property
    def strangers(self) -> int:
        """How many messages came from ids outside the cohort (ignored)."""
        return self._strangers

    @property
    def result(self) -> RoundResult:
        state = self._state
        if not isinstance(state, Completed):
            raise UsageError(f"no result: the round is at stage {state.stage.value}")
        return state.result

    @property
    def abort_reason(self) -> RoundAborted | None:
        state = self._state
        return state.reason if isinstance(state, Aborted) else None

    @property
    def threshold_margin(self) -> int | None:
        return self.unmask_answers - self.config.threshold

    @property
    def unmask_answers(self) -> int:
        """How many clients answered the unmask stage (the threshold margin is this minus t)."""
        # Counted once the unmask stage has closed (completed, or aborted while unmasking):
        # then its silent are dropped and everyone still answered is an answer.
        if not (self.done and isinstance(self._last_waiting(), Unmasking)):
            return 0
        return sum(1 for status in self._status.values() if status is PeerStatus.ANSWERED)

    def aggregate(self) -> Aggregate:
        """The aggregate of the included inputs, decoded from the ring sum by the round's
        encoding: the weighted mean (quantised) or the noisy mean (distributed DP)."""
        return self.result.decoded(self.config, self._encoding, self.session.session_id)

    def waiting_for(self) -> frozenset[int]:
        """Clients whose message for the current stage has not arrived yet."""
        return frozenset(self._expected())

    def masked_with(self, client_id: int) -> tuple[int, ...]:
        """The peers whose pairwise masks a client's masked input contains."""
        state = self._last_waiting()
        if isinstance(state, Masking | Confirming | Unmasking):
            return state.routed.view.get(client_id, ())
        return ()

    def _expected(self) -> list[int]:
        """The members still expected in the current stage, in cohort (id) order."""
        return [u for u, status in self._status.items() if status is PeerStatus.EXPECTED]

    def _last_waiting(self) -> Waiting:
        """The current state, or the one the round ended in."""
        state = self._state
        return state.last if isinstance(state, Completed | Aborted) else state

    def _current(self, kind: type[_W]) -> _W:
        """The current state, which the stage dispatch guarantees is a ``kind``."""
        state = self._state
        assert isinstance(state, kind), f"{type(state).__name__} is not {kind.__name__}"
        return state

    # ----------------------------------------------------------------- input
    def receive(self, sender: int, data: Message | bytes) -> None:
        """Take one message from ``sender`` (an authenticated id); never raises for bad input."""
        if sender not in self._cohort:
            self._strangers += 1
            return
        if self.done or self._status[sender] is PeerStatus.DROPPED:
            return  # late or from a dropped client: nothing more is taken from it
        if isinstance(data, Message):
            message = data
        else:
            try:
                message = decode(data)
            except DecodeError as exc:
                self.drop(sender, DropReason.MALFORMED, str(exc))
                return
        stage = self.stage
        expected = CLIENT_MESSAGE[stage]
        if not isinstance(message, expected):
            self.drop(
                sender,
                DropReason.WRONG_STAGE,
                f"sent {type(message).__name__} during {stage.value}",
            )
            return
        if self._binding(message) != self._expected_binding():
            self.drop(sender, DropReason.WRONG_SESSION, "message from another session")
            return
        if getattr(message, "client_id", None) != sender:
            self.drop(sender, DropReason.MALFORMED, "message claims another sender id")
            return
        if self._status[sender] is PeerStatus.ANSWERED:
            self._duplicate(sender, self._answers[sender], message)
            return
        kept = self._handlers[stage](sender, message)
        if kept is not None:
            self._answers[sender] = kept
            self._status[sender] = PeerStatus.ANSWERED

    def _expected_binding(self) -> bytes:
        if self.stage in SESSION_AGREEMENT:
            return self.config.config_id
        return self.session.session_id

    @staticmethod
    def _binding(message: Message) -> bytes | None:
        """The config id (before the session is agreed) or session id a message carries."""
        binding = getattr(message, "config_id", None)
        if binding is None:
            binding = getattr(message, "session_id", None)
        return binding if isinstance(binding, bytes) else None

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        """Stop waiting for a client (misbehaved, disconnected, or late)."""
        if client_id not in self._cohort or self.done:
            return
        if self._status[client_id] is PeerStatus.DROPPED:
            return
        self._status[client_id] = PeerStatus.DROPPED
        self._drops[client_id] = Drop(client_id, self.stage, reason, detail)

    def _duplicate(self, sender: int, first: Message, again: Message) -> None:
        if isinstance(again, MaskedInput):
            again = dataclasses.replace(again, packed_vector=_digest(again.packed_vector))
        if first == again:
            return  # a retransmission: harmless
        if self.stage in (Stage.COMMIT, Stage.ADVERTISE, Stage.SHARE):
            # Nothing of it was used yet: drop it.
            del self._answers[sender]
            self.drop(sender, DropReason.DUPLICATE, "sent two different messages in one stage")
        else:
            # Its first message is already in the sum (or in the share pool): keep that one.
            self._anomalies.append(
                Drop(sender, self.stage, DropReason.DUPLICATE, "conflicting duplicate ignored")
            )

    def _verified(self, sender: int, signed: bytes, signature: bytes) -> bool:
        public = self._pki.get(sender)
        try:
            if public is None:
                raise AuthenticationError("no identity key")
            ed25519_verify(public, signed, signature)
        except AuthenticationError:
            self.drop(sender, DropReason.BAD_SIGNATURE, "signature does not verify")
            return False
        return True

    def _take_commit(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, Commitment)
        attempt = self._current(Committing).attempt
        if message.attempt != attempt:
            self.drop(sender, DropReason.MALFORMED, f"commitment for attempt {message.attempt}")
            return None
        return message

    def _take_reveal(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, Reveal)
        state = self._current(Revealing)
        committed = derivations.contribution_commitment(
            self.config.config_id, state.attempt, sender, message.contribution
        )
        if message.attempt != state.attempt or committed != state.commitments[sender]:
            self.drop(sender, DropReason.BAD_REVEAL, "the contribution does not match")
            return None
        return message

    def _take_advertise(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, AdvertiseKeys)
        session_id = self._current(Advertising).agreed.session.session_id
        if self.config.active and not self._verified(
            sender,
            derivations.advertise_signed_bytes(
                session_id, sender, message.cipher_public, message.mask_public
            ),
            message.signature,
        ):
            return None
        if message.cipher_public == message.mask_public:
            # Its peers would (rightly) refuse a repeated key and abort: drop it here instead.
            self.drop(sender, DropReason.DUPLICATE_KEY, "advertised the same key twice")
            return None
        for key in (message.cipher_public, message.mask_public):
            owner = self._key_owner.get(key)
            if owner is not None and owner != sender:
                self.drop(sender, DropReason.DUPLICATE_KEY, f"reuses a key of client {owner}")
                return None
            try:
                self._probe_key.exchange(key)
            except CryptoError:
                self.drop(sender, DropReason.BAD_KEY, "advertised an unusable X25519 key")
                return None
        for key in (message.cipher_public, message.mask_public):
            self._key_owner[key] = sender
        return message

    def _take_share(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, EncryptedShares)
        peers = self._current(Sharing).advertised.peers[sender]
        recipients = [v for v, _ in message.ciphertexts]
        if sorted(recipients) != sorted(peers) or len(set(recipients)) != len(recipients):
            self.drop(sender, DropReason.MALFORMED, "shares not addressed to exactly its peers")
            return None
        layers = 0 if self._removal is None else self._removal.count
        if len(message.layer_commitments) != layers or any(
            len(sealed) != ciphertext_bytes(layers) for _, sealed in message.ciphertexts
        ):
            self.drop(sender, DropReason.MALFORMED, f"shares not of this round's {layers} layers")
            return None
        return message

    def _take_masked_input(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, MaskedInput)
        view = set(self._current(Masking).routed.view[sender])
        missing = message.missing_shares
        if len(set(missing)) != len(missing) or not view.issuperset(missing):
            self.drop(sender, DropReason.MALFORMED, "missing-share list names non-peers")
            return None
        length = self.config.vector_length
        if len(message.packed_vector) != self._ring.packed_size(length):
            self.drop(
                sender,
                DropReason.WRONG_LENGTH,
                f"masked input of {len(message.packed_vector)} bytes, expected "
                f"{self._ring.packed_size(length)}",
            )
            return None
        try:
            vector = self._ring.unpack(message.packed_vector, length)
        except DecodeError as exc:
            self.drop(sender, DropReason.MALFORMED, str(exc))
            return None
        if self._total is None:
            self._total = self._ring.zeros(length)
        self._ring.add_into(self._total, vector)
        # Keep the message small in memory: the vector is already in the sum; its digest is
        # enough to tell a retransmission from a conflicting duplicate.
        return MaskedInput(message.session_id, sender, missing, _digest(message.packed_vector))

    def _take_consistency(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, ConsistencySignature)
        state = self._current(Confirming)
        signed = derivations.consistency_signed_bytes(
            state.agreed.session.session_id, state.masked.included
        )
        if not self._verified(sender, signed, message.signature):
            return None
        return message

    def _take_unmask(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, UnmaskResponse)
        state = self._current(Unmasking)
        request = state.requests[sender]
        missing = state.masked.missing[sender]
        x = derivations.share_x(sender)
        parsed: list[tuple[dict[int, list[Share]], int, Share]] = []
        for pool, entries, wanted in (
            (self._seed_shares, message.self_mask_shares, request.survivors),
            (self._key_shares, message.key_shares, request.dropped),
        ):
            owners = [u for u, _ in entries]
            expected = sorted(u for u in wanted if u not in missing)
            if sorted(owners) != expected or len(set(owners)) != len(owners):
                self.drop(sender, DropReason.MALFORMED, "shares for other peers than requested")
                return None
            for owner, value in entries:
                try:
                    parsed.append((pool, owner, Share.from_value_bytes(x, value)))
                except DecodeError as exc:
                    self.drop(sender, DropReason.BAD_SHARE, str(exc))
                    return None
        layer_shares = self._parsed_layer_shares(sender, message, request, missing)
        if layer_shares is None:
            return None
        for pool, owner, share in parsed:
            pool.setdefault(owner, []).append(share)
        for key, share in layer_shares:
            self._layer_shares.setdefault(key, []).append(share)
        return message

    def _parsed_layer_shares(
        self,
        sender: int,
        message: UnmaskResponse,
        request: UnmaskRequest,
        missing: frozenset[int],
    ) -> list[tuple[tuple[int, int], Share]] | None:
        """The layer shares of an answer, (owner, layer) -> share: exactly the layers its
        count removes, of exactly the peers whose self-mask shares it holds; None (and the
        sender dropped) for anything else."""
        removal = self._removal
        if removal is None or message.layers is None:
            if (removal is None) != (message.layers is None):
                self.drop(sender, DropReason.MALFORMED, "an answer without this round's layers")
                return None
            return []
        answer = message.layers
        removed = removal.removed(answer.count)
        expected = sorted((u, j) for u in request.survivors if u not in missing for j in removed)
        keys = [(owner, layer) for owner, layer, _ in answer.shares]
        if (
            answer.count != request.count
            or answer.corrupt != removal.corrupt
            or answer.units != removal.units(answer.count)
            or sorted(keys) != expected
            or len(set(keys)) != len(keys)
        ):
            self.drop(sender, DropReason.MALFORMED, "layer shares for other layers than its count")
            return None
        x = derivations.share_x(sender)
        parsed: list[tuple[tuple[int, int], Share]] = []
        for owner, layer, value in answer.shares:
            try:
                parsed.append(((owner, layer), Share.from_value_bytes(x, value)))
            except DecodeError as exc:
                self.drop(sender, DropReason.BAD_SHARE, str(exc))
                return None
        return parsed

    # ----------------------------------------------------------------- stage transitions
    def close_stage(self) -> dict[int, Message]:
        """End the current stage: drop the silent, check feasibility, and say what to send."""
        stage = self.stage
        if self.done:
            raise UsageError(f"the round has already ended ({stage.value})")
        for u in self._expected():
            self.drop(u, missed(stage))
        if stage in (Stage.REVEAL, Stage.MASKED_INPUT):
            # A client dropped after its message arrived (say, it disconnected) goes no
            # further elsewhere; but at the masked-input stage its input is in the sum all
            # the same, and at the reveal stage its contribution is in the session.
            live = set(self._answers)
        else:
            live = {u for u in self._answers if self._status[u] is PeerStatus.ANSWERED}
        try:
            outgoing = self._closers[stage](live)
        except RoundAborted as exc:
            self._fail(exc)
            raise
        return outgoing

    def _fail(self, exc: RoundAborted) -> None:
        self._state = Aborted(self._current_waiting(), exc)
        # What was summed or pooled so far must never be revealed; nor what the unmask
        # answers held (their shares).
        self._total = None
        self._seed_shares.clear()
        self._key_shares.clear()
        self._layer_shares.clear()
        self._answers = {}

    def _current_waiting(self) -> Waiting:
        state = self._state
        assert not isinstance(state, Completed | Aborted), "the round has already ended"
        return state

    def _advance(self, state: Waiting, expected: Set[int]) -> None:
        """Enter the next stage's state. Who goes on (``expected``) is exactly who answered
        the stage that closed and was not dropped: they are expected again, and everyone
        else left with a drop record."""
        answered = {u for u, status in self._status.items() if status is PeerStatus.ANSWERED}
        assert answered == expected, "a client would go on, or leave, without a status"
        self._state = state
        self._answers = {}
        self._key_owner = {}
        for u in expected:
            self._status[u] = PeerStatus.EXPECTED

    def _prune(self, live: set[int], candidates: Callable[[int], Sequence[int]]) -> None:
        """Drop clients with fewer than t live peers, until every remaining one has t."""
        changed = True
        while changed:
            changed = False
            for u in sorted(live):
                count = sum(1 for v in candidates(u) if v in live)
                if count < self._t:
                    live.discard(u)
                    self.drop(
                        u,
                        DropReason.TOO_FEW_NEIGHBOURS,
                        f"{count} live peers, threshold {self._t}",
                    )
                    changed = True

    def _fewest_participants(self) -> int:
        """Below this many clients no round can complete: each needs t neighbours, and no sum
        of fewer than the minimum cohort is revealed."""
        return max(self._t + 1, self.config.min_cohort)

    def _close_commit(self, live: set[int]) -> dict[int, Message]:
        attempt = self._current(Committing).attempt
        if len(live) < self._fewest_participants():
            raise RoundAborted(
                Stage.COMMIT,
                f"{len(live)} clients committed; at least {self._fewest_participants()} are needed",
            )
        commitments = {
            u: m.commitment
            for u, m in sorted(self._answers.items())
            if u in live and isinstance(m, Commitment)
        }
        config_id = self.config.config_id
        digest = derivations.commitment_digest(config_id, attempt, sorted(commitments.items()))
        outgoing: dict[int, Message] = {
            u: CommitmentDigest(config_id, u, attempt, digest, len(commitments))
            for u in sorted(live)
        }
        self._advance(Revealing(attempt, commitments), live)
        return outgoing

    def _close_reveal(self, live: set[int]) -> dict[int, Message]:
        state = self._current(Revealing)
        config_id = self.config.config_id
        here = {u for u in live if self._status[u] is not PeerStatus.DROPPED}
        if live == state.commitments.keys():
            # Every committed contribution is in: the session is fixed, for all of them. The
            # list is built once, as its wire bytes, and the same one goes to everyone.
            contributions = ContributionList.of(
                (u, m.contribution)
                for u, m in sorted(self._answers.items())
                if isinstance(m, Reveal)
            )
            session = derivations.Session.agree(self.config, state.attempt, contributions)
            agreed = SessionAgreed(
                session, {u: session.neighbours(u) for u in self.config.client_ids}
            )
            outgoing: dict[int, Message] = {
                u: Contributions(config_id, u, state.attempt, contributions) for u in sorted(here)
            }
            self._advance(Advertising(agreed), here)
            return outgoing
        # A committed client did not reveal. Leaving it out would let the server choose among
        # sessions by choosing whom to leave out, so everyone who is left commits afresh.
        missing = len(state.commitments) - len(live)
        if state.attempt == MAX_ATTEMPTS:
            raise RoundAborted(
                Stage.REVEAL,
                f"{missing} committed client(s) did not reveal in {MAX_ATTEMPTS} attempts",
            )
        if len(here) < self._fewest_participants():
            raise RoundAborted(
                Stage.REVEAL,
                f"{len(here)} clients revealed; at least {self._fewest_participants()} are needed",
            )
        attempt = state.attempt + 1
        outgoing = {u: CommitRequest(config_id, u, attempt) for u in sorted(here)}
        self._advance(Committing(attempt), here)
        return outgoing

    def _close_advertise(self, live: set[int]) -> dict[int, Message]:
        agreed = self._current(Advertising).agreed
        keys = {u: m for u, m in self._answers.items() if isinstance(m, AdvertiseKeys)}
        self._prune(live, lambda u: agreed.neighbours[u])
        if not live:
            raise RoundAborted(
                Stage.ADVERTISE, f"no client has {self._t} neighbours that advertised keys"
            )
        advertised = KeysAdvertised(
            keys, {u: tuple(v for v in agreed.neighbours[u] if v in live) for u in sorted(live)}
        )
        sid = agreed.session.session_id
        outgoing: dict[int, Message] = {}
        for u, peers in advertised.peers.items():
            entries = tuple(
                PeerKeyEntry(v, keys[v].cipher_public, keys[v].mask_public, keys[v].signature)
                for v in peers
            )
            outgoing[u] = PeerKeys(sid, u, entries)
        self._advance(Sharing(agreed, advertised), live)
        return outgoing

    def _close_share(self, live: set[int]) -> dict[int, Message]:
        state = self._current(Sharing)
        sealed: dict[int, dict[int, bytes]] = {}
        self_mask_commitments: dict[int, bytes] = {}
        layer_commitments: dict[int, tuple[bytes, ...]] = {}
        for u, message in self._answers.items():
            assert isinstance(message, EncryptedShares)
            sealed[u] = dict(message.ciphertexts)
            self_mask_commitments[u] = message.self_mask_commitment
            layer_commitments[u] = message.layer_commitments
        peers = state.advertised.peers
        self._prune(live, lambda u: peers[u])
        if not live:
            raise RoundAborted(Stage.SHARE, f"no client has {self._t} neighbours that shared")
        routed = SharesRouted(
            {v: tuple(u for u in peers[v] if u in live) for v in sorted(live)},
            self_mask_commitments,
            layer_commitments,
        )
        sid = state.agreed.session.session_id
        outgoing: dict[int, Message] = {
            v: PeerShares(sid, v, tuple((u, sealed[u][v]) for u in view))
            for v, view in routed.view.items()
        }
        self._advance(Masking(state.agreed, state.advertised, routed), live)
        return outgoing

    def _holders(
        self, routed: SharesRouted, masked: InputsMasked, owner: int, survivors: Set[int]
    ) -> int:
        """Surviving clients that hold a share of ``owner``'s secrets."""
        return sum(
            1 for v in routed.view[owner] if v in survivors and owner not in masked.missing[v]
        )

    def _check_removable(
        self, stage: Stage, routed: SharesRouted, masked: InputsMasked, askable: Set[int]
    ) -> None:
        """Before anyone reveals anything: can every mask in the sum be removed by asking
        only the clients in ``askable``?"""
        included = set(masked.included)
        for u in sorted(routed.view):
            relevant = u in included or any(v in included for v in routed.view[u])
            if relevant and self._holders(routed, masked, u, askable) < self._t:
                kind = "self mask" if u in included else "pairwise masks"
                raise RoundAborted(
                    stage,
                    f"the {kind} of client {u} cannot be removed: fewer than "
                    f"{self._t} surviving holders of its shares",
                )

    def _close_masked_input(self, live: set[int]) -> dict[int, Message]:
        state = self._current(Masking)
        if not live:
            raise RoundAborted(Stage.MASKED_INPUT, "no client sent a masked input")
        # Everyone whose masked input was taken is in the sum, even if dropped since; only
        # those still here can be asked for shares.
        masked = InputsMasked(
            tuple(sorted(live)),
            {
                u: frozenset(m.missing_shares)
                for u, m in self._answers.items()
                if isinstance(m, MaskedInput)
            },
        )
        askable = {u for u in live if self._status[u] is not PeerStatus.DROPPED}
        self._check_removable(Stage.MASKED_INPUT, state.routed, masked, askable)
        if len(live) < self.config.min_cohort:
            raise RoundAborted(
                Stage.MASKED_INPUT,
                f"{len(live)} inputs; no sum of fewer than {self.config.min_cohort} is revealed",
            )
        if self.config.active:
            self._check_certifiable(masked.included, state.agreed.session.graph_seed)
            rule = self._survivor_rule
            assert rule is not None
            if len(live) - rule.corrupt < self.config.min_cohort:
                # X9: no client signs a set that may hold fewer honest inputs than that.
                raise RoundAborted(
                    Stage.MASKED_INPUT,
                    f"{len(live)} inputs hold fewer than {self.config.min_cohort} honest ones "
                    f"if {rule.corrupt} are corrupt: no client signs such a survivor set",
                )
            sid = state.agreed.session.session_id
            outgoing: dict[int, Message] = {
                v: SurvivorList(sid, v, masked.included) for v in sorted(askable)
            }
            self._advance(Confirming(state.agreed, state.advertised, state.routed, masked), askable)
            return outgoing
        return self._request_unmasking(state, masked, askable, {})

    def _check_certifiable(self, included: tuple[int, ...], graph_seed: bytes) -> None:
        rule = self._survivor_rule
        assert rule is not None
        check_certifiable(self.config, graph_seed, included, rule)

    def _close_consistency(self, live: set[int]) -> dict[int, Message]:
        state = self._current(Confirming)
        signatures = {
            u: m.signature for u, m in self._answers.items() if isinstance(m, ConsistencySignature)
        }
        # A client unmasks only with t signatures from its neighbours: those short of them
        # will not be asked, and the rest must still be able to remove every mask.
        neighbours = state.agreed.neighbours
        rule = self._survivor_rule
        assert rule is not None
        if len(signatures) < rule.quorum:
            # Every client would refuse to unmask: nothing is asked, nothing revealed.
            raise RoundAborted(
                Stage.CONSISTENCY,
                f"{len(signatures)} clients signed the survivor set; a certificate needs "
                f"{rule.quorum}",
            )
        self._prune(live, lambda v: [u for u in neighbours[v] if u in signatures])
        self._check_removable(Stage.CONSISTENCY, state.routed, state.masked, live)
        return self._request_unmasking(state, state.masked, live, signatures)

    def _request_unmasking(
        self,
        state: Masking | Confirming,
        masked: InputsMasked,
        askable: set[int],
        signatures: Mapping[int, bytes],
    ) -> dict[int, Message]:
        sid = state.agreed.session.session_id
        included = set(masked.included)
        requests: dict[int, UnmaskRequest] = {}
        for v in sorted(askable):
            view = state.routed.view[v]
            requests[v] = UnmaskRequest(
                sid,
                v,
                tuple(u for u in view if u in included),
                tuple(u for u in view if u not in included),
                _certificate(state.agreed.neighbours[v], signatures, askable),
                # The count the layers come off at: the survivor set's size (which active
                # clients take from the set they signed, not from this field).
                None if self._removal is None else len(masked.included),
            )
        self._advance(
            Unmasking(state.agreed, state.advertised, state.routed, masked, requests), askable
        )
        return dict(requests)

    def _close_unmask(self, live: set[int]) -> dict[int, Message]:
        state = self._current(Unmasking)
        total = self._total
        assert total is not None
        sid = state.agreed.session.session_id
        keys = state.advertised.keys
        view = state.routed.view
        included = set(state.masked.included)
        # First every secret (cheap), then every mask regenerated in one pass (the cost).
        masks: list[prg.Mask] = []
        for u in state.masked.included:
            commitment = state.routed.self_mask_commitments[u]

            def matches_commitment(
                seed: bytes, owner: int = u, expected: bytes = commitment
            ) -> bool:
                return derivations.self_mask_commitment(seed, sid, owner) == expected

            seed = self._reconstruct(
                u, self._seed_shares.get(u, []), matches_commitment, "self-mask seed"
            )
            masks.append((derivations.self_mask_key(seed, sid, u), True))
        for u in sorted(view):
            if u in included:
                continue
            masked_by = [v for v in view[u] if v in included]
            if not masked_by:
                continue
            advertised = keys[u].mask_public

            def matches_public_key(private: bytes, expected: bytes = advertised) -> bool:
                return x25519_public_from_private(private) == expected

            private = self._reconstruct(
                u, self._key_shares.get(u, []), matches_public_key, "mask key"
            )
            key_pair = X25519KeyPair.from_private_bytes(private)
            for v in masked_by:
                v_public = keys[v].mask_public
                key = derivations.pair_mask_key(
                    key_pair.exchange(v_public), sid, u, advertised, v, v_public
                )
                # v added this mask with v's sign: take it out with the opposite one.
                masks.append((key, not derivations.subtracts_pair_mask(v, u)))
        self._apply_masks(total, masks)
        self._ring.reduce(total)
        taken_off = None
        if self._removal is not None:
            taken_off = self._take_off_layers(state, total)
        self._state = Completed(state, RoundResult(state.masked.included, total, taken_off))
        self._total = None
        self._answers = {}
        return {}

    def _take_off_layers(
        self, state: Unmasking, total: NDArray[np.unsignedinteger]
    ) -> NoiseTakenOff:
        """Rebuild each removed layer seed of each included client from its holders' shares,
        check it against the client's commitment, regenerate the layer and subtract it modulo
        2^b (which undoes every wrap it caused: X6). A seed that cannot be rebuilt leaves its
        layer in the sum, counted in ``layers_left``: more noise, never less."""
        removal = self._removal
        assert removal is not None
        sid = state.agreed.session.session_id
        count = len(state.masked.included)
        removed = removal.removed(count)
        length = len(total) - 1  # the noisy values; the count of inputs is last
        noise = np.zeros(length, dtype=np.int64)
        left = 0
        for u in state.masked.included:
            commitments = state.routed.layer_commitments.get(u, ())
            for layer in removed:

                def matches(
                    seed: bytes,
                    owner: int = u,
                    j: int = layer,
                    expected: tuple[bytes, ...] = commitments,
                ) -> bool:
                    return derivations.layer_commitment(seed, sid, owner, j) == expected[j]

                shares = self._layer_shares.get((u, layer), [])
                rebuilt = (
                    rebuild_verified(shares, self._t, matches) if len(shares) >= self._t else None
                )
                if rebuilt is None:
                    left += 1
                    continue
                seed, window = rebuilt
                if window != shares[: self._t]:
                    self._note_bad_shares(u, shares, window, f"noise layer {layer} seed")
                noise += removal.noise(layer, seed, length)
        modulus_mask = np.int64((1 << self.config.ring_bits) - 1)
        values = (total[:-1].astype(np.int64) - noise) & modulus_mask
        total[:-1] = values.astype(total.dtype)
        self._layer_shares = {}
        return removal.taken_off(count, left)

    def _reconstruct(
        self, owner: int, shares: list[Share], verify: Callable[[bytes], bool], what: str
    ) -> bytes:
        """Rebuild a secret from t shares, checked against its public commitment.

        If the first t shares give a secret that fails the check, some holder sent a bad
        share: other subsets of t shares are tried, and the holders whose shares do not fit
        the verified secret are recorded.
        """
        t = self._t
        if len(shares) < t:
            raise RoundAborted(
                Stage.UNMASK, f"only {len(shares)} shares of client {owner}'s {what}; need {t}"
            )
        rebuilt = rebuild_verified(shares, t, verify)
        if rebuilt is not None:
            secret, window = rebuilt
            if window != shares[:t]:
                self._note_bad_shares(owner, shares, window, what)
            return secret
        raise RoundAborted(
            Stage.UNMASK, f"the shares of client {owner}'s {what} do not reconstruct it"
        )

    def _note_bad_shares(
        self, owner: int, shares: list[Share], window: list[Share], what: str
    ) -> None:
        """Record the holders whose shares do not lie on the verified polynomial."""
        for share in shares:
            if share in window:
                continue
            try:
                combine([*window, share], self._t)
            except InconsistentSharesError:
                self._anomalies.append(
                    Drop(
                        share.x - 1,
                        Stage.UNMASK,
                        DropReason.BAD_SHARE,
                        f"sent a bad share of client {owner}'s {what}",
                    )
                )


def rebuild_verified(
    shares: Sequence[Share], t: int, verify: Callable[[bytes], bool]
) -> tuple[bytes, list[Share]] | None:
    """A secret from t of ``shares`` that passes ``verify`` (its public commitment), and the
    t shares that gave it; None if no subset tried does. Consecutive windows first (one try
    when every share is good), then any t of them up to a budget: a few bad shares among good
    ones are out-voted wherever they sit."""
    candidates = itertools.chain(
        (list(shares[start : start + t]) for start in range(len(shares) - t + 1)),
        itertools.islice(itertools.combinations(shares, t), _RECONSTRUCTION_TRIES),
    )
    for window in candidates:
        try:
            secret = combine(list(window), t)
        except InconsistentSharesError:
            continue
        if verify(secret):
            return secret, list(window)
    return None


def check_certifiable(
    config: RoundConfig, graph_seed: bytes, included: tuple[int, ...], rule: SurvivorRule
) -> None:
    """The clients refuse to sign a survivor set that a quorum cannot certify or that would
    cut the graph (docs/SURVIVOR_CERTIFICATE.md): a round with such a set ends here, before
    anyone signs or reveals anything."""
    if len(included) < rule.quorum:
        raise RoundAborted(
            Stage.MASKED_INPUT,
            f"{len(included)} inputs; a survivor set needs a quorum of {rule.quorum}",
        )
    slot = thin_window_of(config.id_array, graph_seed, included, rule)
    if slot is not None:
        raise RoundAborted(
            Stage.MASKED_INPUT,
            f"ring slots {slot}..{slot + rule.window - 1} hold fewer than "
            f"{rule.least_in_window} survivors: the survivor set would cut the graph",
        )


def _certificate(
    neighbours: tuple[int, ...], signatures: Mapping[int, bytes], askable: set[int]
) -> tuple[tuple[int, bytes], ...]:
    """The consistency signatures an unmask request carries: the client's neighbours' first
    (it needs t of them), then every other signer's (it needs a quorum of the cohort on the
    same survivor set: docs/SURVIVOR_CERTIFICATE.md)."""
    near = [u for u in neighbours if u in signatures and u in askable]
    seen = set(near)
    rest = sorted(u for u in signatures if u not in seen)
    return tuple((u, signatures[u]) for u in (*near, *rest))

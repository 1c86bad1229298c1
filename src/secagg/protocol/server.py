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

In active mode (a ``semi-malicious`` server model) the server also checks every signature
against the clients' identity keys (``pki``) and drops a client whose signature fails.

Memory stays O(dim + clients x degree): masked inputs are added to one running sum as they
arrive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
from secagg.protocol import derive
from secagg.protocol.messages import (
    MAX_ATTEMPTS,
    AdvertiseKeys,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ConsistencySignature,
    Contributions,
    EncryptedShares,
    MaskedInput,
    Message,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    Reveal,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import CLIENT_MESSAGE, SESSION_AGREEMENT, Drop, Stage

__all__ = ["Drop", "RoundResult", "Server", "Stage"]


# Subsets of t shares tried before a reconstruction is given up (each try is ~20 us).
_RECONSTRUCTION_TRIES = 2000


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_MISSED: dict[Stage, DropReason] = {
    Stage.COMMIT: DropReason.MISSED_COMMIT,
    Stage.REVEAL: DropReason.MISSED_REVEAL,
    Stage.ADVERTISE: DropReason.MISSED_ADVERTISE,
    Stage.SHARE: DropReason.MISSED_SHARE,
    Stage.MASKED_INPUT: DropReason.MISSED_MASKED_INPUT,
    Stage.CONSISTENCY: DropReason.MISSED_CONSISTENCY,
    Stage.UNMASK: DropReason.MISSED_UNMASK,
}


@dataclass(frozen=True)
class RoundResult:
    """The unmasked sum over exactly the ``included`` clients, in the ring."""

    included: tuple[int, ...]
    total: NDArray[np.unsignedinteger] = field(repr=False)

    @property
    def total_weight(self) -> int:
        return int(self.total[-1])

    def weighted_mean(self, quantizer: Quantizer) -> NDArray[np.float64]:
        return quantizer.decode(self.total)


class Server:
    """The server's view of one round."""

    def __init__(
        self,
        config: RoundConfig,
        *,
        pki: Mapping[int, bytes] | None = None,
        apply_masks: Callable[[NDArray[np.unsignedinteger], Sequence[prg.Mask]], None] = (
            prg.apply_masks
        ),
    ) -> None:
        """``pki`` (each client's identity public key) is required in active mode.
        ``apply_masks`` regenerates the masks to remove; a driver may pass one that uses
        every core (``secagg.parallel.MaskApplier``)."""
        self._apply_masks = apply_masks
        if config.active and pki is None:
            raise UsageError("active mode needs the clients' identity public keys")
        self._pki = dict(pki or {})
        self.config = config
        self._ring = Ring(config.ring_bits)
        self._t = config.threshold
        self._cohort = config.cohort
        self._stage = Stage.COMMIT
        self._expected: set[int] = set(config.client_ids)
        self._attempt = 1
        self._commitments: dict[int, bytes] = {}  # this attempt's, by client
        self._session: derive.Session | None = None
        self._neighbours: dict[int, tuple[int, ...]] = {}
        self._received: dict[int, Message] = {}
        self._drops: dict[int, Drop] = {}
        self._anomalies: list[Drop] = []
        self._strangers = 0
        self._keys: dict[int, AdvertiseKeys] = {}
        self._key_owner: dict[bytes, int] = {}
        self._peers: dict[int, tuple[int, ...]] = {}  # whose keys each client was sent
        self._self_mask_commitments: dict[int, bytes] = {}
        self._view: dict[int, tuple[int, ...]] = {}  # whose shares each client was sent
        self._missing: dict[int, frozenset[int]] = {}
        self._total: NDArray[np.unsignedinteger] | None = None
        self._requests: dict[int, UnmaskRequest] = {}
        self._survivor_set: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._seed_shares: dict[int, list[Share]] = {}
        self._key_shares: dict[int, list[Share]] = {}
        self._included: tuple[int, ...] = ()
        self._unmask_answers = 0
        self._result: RoundResult | None = None
        self._abort: RoundAborted | None = None
        # A throwaway key to check that advertised keys are usable X25519 points.
        self._probe_key = X25519KeyPair.generate(SystemRandomness())
        # What takes each stage's messages, and what closes each stage.
        self._handlers: dict[Stage, Callable[[int, Message], bool]] = {
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
        return f"Server(stage={self._stage.value}, waiting_for={len(self.waiting_for())})"

    # ----------------------------------------------------------------- observation
    def start(self) -> dict[int, Message]:
        """What opens the round: the configuration, for every client of the cohort (each
        answers with its commitment)."""
        if self._stage is not Stage.COMMIT or self._attempt != 1 or self._received:
            raise UsageError("the round has already started")
        return dict.fromkeys(self.config.client_ids, self.config)

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage in (Stage.COMPLETED, Stage.ABORTED)

    @property
    def session(self) -> derive.Session:
        if self._session is None:
            raise UsageError("the session is not agreed yet")
        return self._session

    @property
    def attempt(self) -> int:
        """The commit-reveal attempt this round is on (or agreed in)."""
        return self._attempt

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
        if self._result is None:
            raise UsageError(f"no result: the round is at stage {self._stage.value}")
        return self._result

    @property
    def abort_reason(self) -> RoundAborted | None:
        return self._abort

    @property
    def unmask_answers(self) -> int:
        """How many clients answered the unmask stage (the threshold margin is this minus t)."""
        return self._unmask_answers

    def aggregate(self) -> Aggregate:
        """The weighted mean of the included inputs, decoded from the ring sum."""
        result = self.result
        quantizer = Quantizer(clip=self.config.clip, bits=self.config.value_bits)
        return Aggregate(
            result.included,
            float(result.total_weight),
            result.weighted_mean(quantizer),
            quantizer.error_bound(),
        )

    def waiting_for(self) -> frozenset[int]:
        """Clients whose message for the current stage has not arrived yet."""
        return frozenset(self._expected - self._received.keys() - self._drops.keys())

    def masked_with(self, client_id: int) -> tuple[int, ...]:
        """The peers whose pairwise masks a client's masked input contains."""
        return self._view.get(client_id, ())

    # ----------------------------------------------------------------- input
    def receive(self, sender: int, data: Message | bytes) -> None:
        """Take one message from ``sender`` (an authenticated id); never raises for bad input."""
        if sender not in self._cohort:
            self._strangers += 1
            return
        if sender in self._drops or self._stage in (Stage.COMPLETED, Stage.ABORTED):
            return  # late or from a dropped client: nothing more is taken from it
        if sender not in self._expected:
            return
        if isinstance(data, Message):
            message = data
        else:
            try:
                message = decode(data)
            except DecodeError as exc:
                self.drop(sender, DropReason.MALFORMED, str(exc))
                return
        expected = CLIENT_MESSAGE[self._stage]
        if not isinstance(message, expected):
            self.drop(
                sender,
                DropReason.WRONG_STAGE,
                f"sent {type(message).__name__} during {self._stage.value}",
            )
            return
        if self._binding(message) != self._expected_binding():
            self.drop(sender, DropReason.WRONG_SESSION, "message from another session")
            return
        if getattr(message, "client_id", None) != sender:
            self.drop(sender, DropReason.MALFORMED, "message claims another sender id")
            return
        first = self._received.get(sender)
        if first is not None:
            self._duplicate(sender, first, message)
            return
        if self._handlers[self._stage](sender, message):
            self._received[sender] = message

    def _expected_binding(self) -> bytes:
        if self._stage in SESSION_AGREEMENT:
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
        if client_id in self._drops or client_id not in self._cohort:
            return
        if self._stage in (Stage.COMPLETED, Stage.ABORTED):
            return
        self._drops[client_id] = Drop(client_id, self._stage, reason, detail)

    def _duplicate(self, sender: int, first: Message, again: Message) -> None:
        if isinstance(again, MaskedInput):
            again = dataclasses.replace(again, packed_vector=_digest(again.packed_vector))
        if first == again:
            return  # a retransmission: harmless
        if self._stage in (Stage.COMMIT, Stage.ADVERTISE, Stage.SHARE):
            # Nothing of it was used yet: drop it.
            del self._received[sender]
            self.drop(sender, DropReason.DUPLICATE, "sent two different messages in one stage")
        else:
            # Its first message is already in the sum (or in the share pool): keep that one.
            self._anomalies.append(
                Drop(sender, self._stage, DropReason.DUPLICATE, "conflicting duplicate ignored")
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

    def _take_commit(self, sender: int, message: Message) -> bool:
        assert isinstance(message, Commitment)
        if message.attempt != self._attempt:
            self.drop(sender, DropReason.MALFORMED, f"commitment for attempt {message.attempt}")
            return False
        return True

    def _take_reveal(self, sender: int, message: Message) -> bool:
        assert isinstance(message, Reveal)
        config_id = self.config.config_id
        committed = derive.contribution_commitment(
            config_id, self._attempt, sender, message.contribution
        )
        if message.attempt != self._attempt or committed != self._commitments[sender]:
            self.drop(sender, DropReason.BAD_REVEAL, "the contribution does not match")
            return False
        return True

    def _take_advertise(self, sender: int, message: Message) -> bool:
        assert isinstance(message, AdvertiseKeys)
        if self.config.active and not self._verified(
            sender,
            derive.advertise_signed_bytes(
                self.session.session_id, sender, message.cipher_public, message.mask_public
            ),
            message.signature,
        ):
            return False
        if message.cipher_public == message.mask_public:
            # Its peers would (rightly) refuse a repeated key and abort: drop it here instead.
            self.drop(sender, DropReason.DUPLICATE_KEY, "advertised the same key twice")
            return False
        for key in (message.cipher_public, message.mask_public):
            owner = self._key_owner.get(key)
            if owner is not None and owner != sender:
                self.drop(sender, DropReason.DUPLICATE_KEY, f"reuses a key of client {owner}")
                return False
            try:
                self._probe_key.exchange(key)
            except CryptoError:
                self.drop(sender, DropReason.BAD_KEY, "advertised an unusable X25519 key")
                return False
        for key in (message.cipher_public, message.mask_public):
            self._key_owner[key] = sender
        return True

    def _take_share(self, sender: int, message: Message) -> bool:
        assert isinstance(message, EncryptedShares)
        recipients = [v for v, _ in message.ciphertexts]
        if sorted(recipients) != sorted(self._peers[sender]) or len(set(recipients)) != len(
            recipients
        ):
            self.drop(sender, DropReason.MALFORMED, "shares not addressed to exactly its peers")
            return False
        return True

    def _take_masked_input(self, sender: int, message: Message) -> bool:
        assert isinstance(message, MaskedInput)
        view = set(self._view[sender])
        missing = message.missing_shares
        if len(set(missing)) != len(missing) or not view.issuperset(missing):
            self.drop(sender, DropReason.MALFORMED, "missing-share list names non-peers")
            return False
        length = self.config.vector_length
        if len(message.packed_vector) != self._ring.packed_size(length):
            self.drop(
                sender,
                DropReason.WRONG_LENGTH,
                f"masked input of {len(message.packed_vector)} bytes, expected "
                f"{self._ring.packed_size(length)}",
            )
            return False
        try:
            vector = self._ring.unpack(message.packed_vector, length)
        except DecodeError as exc:
            self.drop(sender, DropReason.MALFORMED, str(exc))
            return False
        if self._total is None:
            self._total = self._ring.zeros(length)
        self._ring.add_into(self._total, vector)
        self._missing[sender] = frozenset(missing)
        # Keep the message small in memory: the vector is already in the sum; its digest is
        # enough to tell a retransmission from a conflicting duplicate.
        self._received[sender] = MaskedInput(
            message.session_id, sender, missing, _digest(message.packed_vector)
        )
        return False

    def _take_consistency(self, sender: int, message: Message) -> bool:
        assert isinstance(message, ConsistencySignature)
        signed = derive.consistency_signed_bytes(self.session.session_id, self._survivor_set)
        if not self._verified(sender, signed, message.signature):
            return False
        self._signatures[sender] = message.signature
        return True

    def _take_unmask(self, sender: int, message: Message) -> bool:
        assert isinstance(message, UnmaskResponse)
        request = self._requests[sender]
        missing = self._missing[sender]
        x = derive.share_x(sender)
        parsed: list[tuple[dict[int, list[Share]], int, Share]] = []
        for pool, entries, wanted in (
            (self._seed_shares, message.self_mask_shares, request.survivors),
            (self._key_shares, message.key_shares, request.dropped),
        ):
            owners = [u for u, _ in entries]
            expected = sorted(u for u in wanted if u not in missing)
            if sorted(owners) != expected or len(set(owners)) != len(owners):
                self.drop(sender, DropReason.MALFORMED, "shares for other peers than requested")
                return False
            for owner, value in entries:
                try:
                    parsed.append((pool, owner, Share.from_value_bytes(x, value)))
                except DecodeError as exc:
                    self.drop(sender, DropReason.BAD_SHARE, str(exc))
                    return False
        for pool, owner, share in parsed:
            pool.setdefault(owner, []).append(share)
        return True

    # ----------------------------------------------------------------- stage transitions
    def close_stage(self) -> dict[int, Message]:
        """End the current stage: drop the silent, check feasibility, and say what to send."""
        stage = self._stage
        if stage in (Stage.COMPLETED, Stage.ABORTED):
            raise UsageError(f"the round has already ended ({stage.value})")
        for u in self.waiting_for():
            self.drop(u, _MISSED[stage])
        live = set(self._received)
        if stage not in (Stage.REVEAL, Stage.MASKED_INPUT):
            # A client dropped after its message arrived (say, it disconnected) goes no
            # further; at the masked-input stage its input is in the sum all the same, and
            # at the reveal stage its contribution is in the session all the same.
            live -= self._drops.keys()
        try:
            outgoing = self._closers[stage](live)
        except RoundAborted as exc:
            self._fail(exc)
            raise
        return outgoing

    def _fail(self, exc: RoundAborted) -> None:
        self._stage = Stage.ABORTED
        self._abort = exc
        self._total = None  # what was summed so far must never be revealed
        self._seed_shares.clear()
        self._key_shares.clear()

    def _advance(self, stage: Stage, expected: set[int]) -> None:
        self._stage = stage
        self._expected = expected
        self._received = {}

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
        if len(live) < self._fewest_participants():
            raise RoundAborted(
                Stage.COMMIT,
                f"{len(live)} clients committed; at least {self._fewest_participants()} are needed",
            )
        self._commitments = {
            u: m.commitment
            for u, m in sorted(self._received.items())
            if u in live and isinstance(m, Commitment)
        }
        config_id = self.config.config_id
        digest = derive.commitment_digest(
            config_id, self._attempt, sorted(self._commitments.items())
        )
        outgoing: dict[int, Message] = {
            u: CommitmentDigest(config_id, u, self._attempt, digest, len(self._commitments))
            for u in sorted(live)
        }
        self._advance(Stage.REVEAL, live)
        return outgoing

    def _close_reveal(self, live: set[int]) -> dict[int, Message]:
        config_id = self.config.config_id
        here = live - self._drops.keys()
        if live == set(self._commitments):
            # Every committed contribution is in: the session is fixed, for all of them.
            contributions = tuple(
                (u, m.contribution)
                for u, m in sorted(self._received.items())
                if isinstance(m, Reveal)
            )
            session = derive.Session.agree(self.config, self._attempt, contributions)
            self._session = session
            self._neighbours = {u: session.neighbours(u) for u in self.config.client_ids}
            outgoing: dict[int, Message] = {
                u: Contributions(config_id, u, self._attempt, contributions) for u in sorted(here)
            }
            self._advance(Stage.ADVERTISE, here)
            return outgoing
        # A committed client did not reveal. Leaving it out would let the server choose among
        # sessions by choosing whom to leave out, so everyone who is left commits afresh.
        missing = len(self._commitments) - len(live)
        if self._attempt == MAX_ATTEMPTS:
            raise RoundAborted(
                Stage.REVEAL,
                f"{missing} committed client(s) did not reveal in {MAX_ATTEMPTS} attempts",
            )
        if len(here) < self._fewest_participants():
            raise RoundAborted(
                Stage.REVEAL,
                f"{len(here)} clients revealed; at least {self._fewest_participants()} are needed",
            )
        self._attempt += 1
        outgoing = {u: CommitRequest(config_id, u, self._attempt) for u in sorted(here)}
        self._advance(Stage.COMMIT, here)
        return outgoing

    def _close_advertise(self, live: set[int]) -> dict[int, Message]:
        self._keys = {u: m for u, m in self._received.items() if isinstance(m, AdvertiseKeys)}
        self._prune(live, lambda u: self._neighbours[u])
        if not live:
            raise RoundAborted(
                Stage.ADVERTISE, f"no client has {self._t} neighbours that advertised keys"
            )
        sid = self.session.session_id
        outgoing: dict[int, Message] = {}
        for u in sorted(live):
            peers = tuple(v for v in self._neighbours[u] if v in live)
            self._peers[u] = peers
            entries = tuple(
                PeerKeyEntry(
                    v,
                    self._keys[v].cipher_public,
                    self._keys[v].mask_public,
                    self._keys[v].signature,
                )
                for v in peers
            )
            outgoing[u] = PeerKeys(sid, u, entries)
        self._advance(Stage.SHARE, live)
        return outgoing

    def _close_share(self, live: set[int]) -> dict[int, Message]:
        sealed: dict[int, dict[int, bytes]] = {}
        for u, message in self._received.items():
            assert isinstance(message, EncryptedShares)
            sealed[u] = dict(message.ciphertexts)
            self._self_mask_commitments[u] = message.self_mask_commitment
        self._prune(live, lambda u: self._peers[u])
        if not live:
            raise RoundAborted(Stage.SHARE, f"no client has {self._t} neighbours that shared")
        sid = self.session.session_id
        outgoing: dict[int, Message] = {}
        for v in sorted(live):
            view = tuple(u for u in self._peers[v] if u in live)
            self._view[v] = view
            outgoing[v] = PeerShares(sid, v, tuple((u, sealed[u][v]) for u in view))
        self._advance(Stage.MASKED_INPUT, live)
        return outgoing

    def _holders(self, owner: int, survivors: set[int]) -> int:
        """Surviving clients that hold a share of ``owner``'s secrets."""
        return sum(1 for v in self._view[owner] if v in survivors and owner not in self._missing[v])

    def _check_removable(self, stage: Stage, askable: set[int]) -> None:
        """Before anyone reveals anything: can every mask in the sum be removed by asking
        only the clients in ``askable``?"""
        included = set(self._included)
        for u in sorted(self._view):
            relevant = u in included or any(v in included for v in self._view[u])
            if relevant and self._holders(u, askable) < self._t:
                kind = "self mask" if u in included else "pairwise masks"
                raise RoundAborted(
                    stage,
                    f"the {kind} of client {u} cannot be removed: fewer than "
                    f"{self._t} surviving holders of its shares",
                )

    def _close_masked_input(self, live: set[int]) -> dict[int, Message]:
        if not live:
            raise RoundAborted(Stage.MASKED_INPUT, "no client sent a masked input")
        # Everyone whose masked input was taken is in the sum, even if dropped since; only
        # those still here can be asked for shares.
        self._included = tuple(sorted(live))
        askable = live - self._drops.keys()
        self._check_removable(Stage.MASKED_INPUT, askable)
        if len(live) < self.config.min_cohort:
            raise RoundAborted(
                Stage.MASKED_INPUT,
                f"{len(live)} inputs; no sum of fewer than {self.config.min_cohort} is revealed",
            )
        if self.config.active:
            self._survivor_set = self._included
            sid = self.session.session_id
            outgoing: dict[int, Message] = {
                v: SurvivorList(sid, v, self._survivor_set) for v in sorted(askable)
            }
            self._advance(Stage.CONSISTENCY, askable)
            return outgoing
        return self._request_unmasking(askable, {})

    def _close_consistency(self, live: set[int]) -> dict[int, Message]:
        # A client unmasks only with t signatures from its neighbours: those short of them
        # will not be asked, and the rest must still be able to remove every mask.
        self._prune(live, lambda v: [u for u in self._neighbours[v] if u in self._signatures])
        self._check_removable(Stage.CONSISTENCY, live)
        return self._request_unmasking(live, self._signatures)

    def _request_unmasking(
        self, askable: set[int], signatures: Mapping[int, bytes]
    ) -> dict[int, Message]:
        sid = self.session.session_id
        included = set(self._included)
        outgoing: dict[int, Message] = {}
        for v in sorted(askable):
            view = self._view[v]
            request = UnmaskRequest(
                sid,
                v,
                tuple(u for u in view if u in included),
                tuple(u for u in view if u not in included),
                tuple(
                    (u, signatures[u])
                    for u in self._neighbours[v]
                    if u in signatures and u in askable
                ),
            )
            self._requests[v] = request
            outgoing[v] = request
        self._advance(Stage.UNMASK, askable)
        return outgoing

    def _close_unmask(self, live: set[int]) -> dict[int, Message]:
        self._unmask_answers = len(live)
        total = self._total
        assert total is not None
        sid = self.session.session_id
        included = set(self._included)
        # First every secret (cheap), then every mask regenerated in one pass (the cost).
        masks: list[prg.Mask] = []
        for u in self._included:
            commitment = self._self_mask_commitments[u]

            def matches_commitment(
                seed: bytes, owner: int = u, expected: bytes = commitment
            ) -> bool:
                return derive.self_mask_commitment(seed, sid, owner) == expected

            seed = self._reconstruct(
                u, self._seed_shares.get(u, []), matches_commitment, "self-mask seed"
            )
            masks.append((derive.self_mask_key(seed, sid, u), True))
        for u in sorted(self._view):
            if u in included:
                continue
            masked_by = [v for v in self._view[u] if v in included]
            if not masked_by:
                continue
            advertised = self._keys[u].mask_public

            def matches_public_key(private: bytes, expected: bytes = advertised) -> bool:
                return x25519_public_from_private(private) == expected

            private = self._reconstruct(
                u, self._key_shares.get(u, []), matches_public_key, "mask key"
            )
            keys = X25519KeyPair.from_private_bytes(private)
            for v in masked_by:
                v_public = self._keys[v].mask_public
                key = derive.pair_mask_key(keys.exchange(v_public), sid, u, advertised, v, v_public)
                # v added this mask with v's sign: take it out with the opposite one.
                masks.append((key, not derive.subtracts_pair_mask(v, u)))
        self._apply_masks(total, masks)
        self._ring.reduce(total)
        self._result = RoundResult(self._included, total)
        self._total = None
        self._stage = Stage.COMPLETED
        self._expected = set()
        return {}

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
        # Consecutive windows first (one try when every share is good), then any t of them,
        # up to a budget: a few bad shares among good ones are out-voted wherever they sit.
        candidates = itertools.chain(
            (shares[start : start + t] for start in range(len(shares) - t + 1)),
            itertools.islice(itertools.combinations(shares, t), _RECONSTRUCTION_TRIES),
        )
        for window in candidates:
            try:
                secret = combine(list(window), t)
            except InconsistentSharesError:
                continue
            if verify(secret):
                if list(window) != shares[:t]:
                    self._note_bad_shares(owner, shares, list(window), what)
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

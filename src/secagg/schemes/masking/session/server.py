"""The server's side of a session that spans rounds, as a sans-I/O state machine
(docs/SESSIONS.md).

The set-up's commit, reveal and advertise stages are driven through a one-shot ``Server``
(the same checks, the same drops); the set-up shares and every round are this class's own.
As the one-shot server: the driver feeds each client message to ``receive`` and calls
``close_stage`` when the stage's deadline passes or ``waiting_for`` is empty; between rounds
it calls ``open_round(task)``. A client that misbehaves is dropped with a reason and the
round goes on; ``RoundAborted`` is raised, before anyone reveals anything, when a round
cannot finish, and the session then ends (a driver starts a new set-up).

Per round::

    open_round(task) -> RoundTask to every live member            stage masked-input
    close_stage      -> SessionSurvivorList (active) or requests   stage consistency / unmask
    close_stage      -> SessionUnmaskRequest (active)              stage unmask
    close_stage      -> {} ; ``result`` is the round's sum          between rounds

Who is live: after the set-up, every member whose set-up shares went out, each with the
neighbours it exchanged them with (L_u1, pruned to at least k_min); after round r, exactly
the members of S_r (those whose round-r message is in the sum), each with L_ur ∩ S_r. A
member of S_r that then fails to answer has left the session by its own rule (S4) and is an
ordinary dropout of round r + 1: its round r + 1 key is what its neighbours hold shares of.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AuthenticationError,
    CryptoError,
    DecodeError,
    DropReason,
    RoundAborted,
    UsageError,
)
from secagg.hazmat import prg
from secagg.hazmat.keys import X25519KeyPair, ed25519_verify, x25519_public_from_private
from secagg.hazmat.randomness import SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share
from secagg.protocol.codec import DIGEST_BYTES, Message, decode
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Drop, Stage, missed
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.encoding import InputEncoding, encoding_or_quantizer
from secagg.schemes.masking.graph import SurvivorRule
from secagg.schemes.masking.messages import AdvertiseKeys
from secagg.schemes.masking.server import RoundResult, check_certifiable, rebuild_verified
from secagg.schemes.masking.server import Server as AgreementServer
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

__all__ = ["Member", "SessionServer"]


def _kept(message: Message) -> Message:
    """What the server keeps of an answer it took. A round message's masked input is in the
    sum as soon as it is taken, so the digest of its packed vector stands for it: enough to
    tell a retransmission from a different answer, without holding every member's vector
    (b(m + 1) / 8 bytes each) until the stage closes (the one-shot server keeps the same
    digest)."""
    if isinstance(message, RoundMessage):
        digest = hashlib.sha256(message.packed_vector).digest()
        return dataclasses.replace(message, packed_vector=digest)
    return message


@dataclass(frozen=True)
class Member:
    """A live member for the round about to run: the neighbours it masks with (L_ur) and
    its round-r public keys."""

    live: frozenset[int]
    mask_public: bytes = field(repr=False)
    cipher_public: bytes = field(repr=False)


@dataclass(frozen=True)
class _Sent:
    """What the server keeps of one round message: the vector is already in the sum."""

    commitment: bytes = field(repr=False)
    next_mask_public: bytes = field(repr=False)
    next_cipher_public: bytes = field(repr=False)
    next_signature: bytes = field(repr=False)
    ciphertexts: Mapping[int, bytes] = field(repr=False)


class SessionServer:
    """The server's view of one session."""

    def __init__(
        self,
        terms: SessionTerms,
        *,
        pki: Mapping[int, bytes] | None = None,
        apply_masks: prg.ApplyMasks = prg.apply_masks,
        encoding: InputEncoding | None = None,
        survivor_rule: SurvivorRule | None = None,
        max_departures: int | None = None,
    ) -> None:
        """``max_departures``: the most participants that may have left before the session
        is set up again (S5's budget: the departures the graph's parameters were found for,
        floor(dropout_rate x n) by the deployment; None: no budget beyond k_min)."""
        config = terms.config
        encoding = encoding_or_quantizer(config, encoding)
        self.terms = terms
        self.config = config
        self._encoding = encoding
        self._apply_masks = apply_masks
        self._pki = dict(pki or {})
        self._survivor_rule = survivor_rule
        self._max_departures = max_departures
        self._unmask_answers = 0
        self._agreement = AgreementServer(
            config,
            pki=pki,
            apply_masks=apply_masks,
            encoding=encoding,
            survivor_rule=survivor_rule,
        )
        self._ring = Ring(config.ring_bits)
        self._t = config.threshold
        self._stage = Stage.COMMIT
        self._round = 0
        self._between = False
        self._ended: str | None = None
        self._keys: dict[int, AdvertiseKeys] = {}
        self._peers: dict[int, tuple[int, ...]] = {}  # K_u: whom u shared with at set-up
        self._members: dict[int, Member] = {}
        self._survivors: tuple[int, ...] = ()  # S_r of the last closed round (S_0: P)
        self._chain = b""
        self._key_owner: dict[bytes, int] = {}
        self._probe = X25519KeyPair.generate(SystemRandomness())
        # The current stage's answers and who is still expected.
        self._answers: dict[int, Message] = {}
        self._expected: set[int] = set()
        self._drops: dict[int, Drop] = {}
        self._strangers = 0
        # The round in progress.
        self._task = bytes(DIGEST_BYTES)
        self._context = b""
        self._sent: dict[int, _Sent] = {}
        self._total: NDArray[np.unsignedinteger] | None = None
        self._included: tuple[int, ...] = ()
        self._requests: dict[int, SessionUnmaskRequest] = {}
        self._round_chain = b""
        self._result: RoundResult | None = None

    def __repr__(self) -> str:
        return f"SessionServer(round={self._round}, stage={self.stage.value})"

    # ----------------------------------------------------------------- what it shows
    @property
    def stage(self) -> Stage:
        if self._ended is not None:
            return Stage.ABORTED
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            return self._agreement.stage
        return self._stage

    @property
    def between_rounds(self) -> bool:
        """The set-up or the last round closed: ``open_round`` may be called."""
        return self._between and self._ended is None

    @property
    def ended(self) -> str | None:
        """Why the session ended (a round aborted), or None while it runs."""
        return self._ended

    @property
    def round_number(self) -> int:
        """The round in progress, or the last one closed."""
        return self._round

    @property
    def members(self) -> Mapping[int, Member]:
        """The live members for the next round to run (or the one running)."""
        return dict(self._members)

    @property
    def drops(self) -> Mapping[int, Drop]:
        """Who was dropped in the current stage's round (or the set-up), when and why."""
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            return self._agreement.drops
        return dict(self._drops)

    @property
    def strangers(self) -> int:
        return self._strangers

    @property
    def session(self) -> one_shot.Session:
        return self._agreement.session

    @property
    def context(self) -> bytes:
        """ctx_r of the round in progress (or the last one closed)."""
        return self._context

    def waiting_for(self) -> frozenset[int]:
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            return self._agreement.waiting_for()
        return frozenset(
            u for u in self._expected if u not in self._answers and u not in self._drops
        )

    def needs_setup(self) -> str | None:
        """Why the next round cannot run in this session (rules S5, S12), or None."""
        if self._ended is not None:
            return self._ended
        if self._round >= self.terms.max_rounds:
            return f"the session has run its {self.terms.max_rounds} rounds"
        k_min = self.terms.min_live_neighbours
        for u, member in sorted(self._members.items()):
            if len(member.live) < k_min:
                return f"client {u} has {len(member.live)} live neighbours, fewer than {k_min}"
        # Round 1 runs whatever the set-up lost, as a one-shot round over the same members
        # would; the budget gates the rounds after it.
        if self._max_departures is not None and self._round > 0:
            departed = len(self.session.participants) - len(self._members)
            if departed > self._max_departures:
                return (
                    f"{departed} members have left; the graph's parameters cover "
                    f"{self._max_departures}"
                )
        if len(self._members) < self.config.min_cohort:
            return (
                f"{len(self._members)} members left; the minimum cohort is {self.config.min_cohort}"
            )
        return None

    @property
    def threshold_margin(self) -> int | None:
        """The last closed round's unmask answers minus the threshold (None before one)."""
        if self._result is None:
            return None
        return self._unmask_answers - self._t

    @property
    def result(self) -> RoundResult:
        if self._result is None:
            raise UsageError("no round has closed with a sum")
        return self._result

    def aggregate(self) -> Aggregate:
        """The last closed round's aggregate, decoded as the one-shot server decodes it."""
        return self.result.decoded(self.config, self._encoding, self._context)

    # ----------------------------------------------------------------- input
    def start(self) -> dict[int, Message]:
        """The session's configuration, for every member of the cohort."""
        self._agreement.start()  # refuses a second start
        message = SessionConfig.of(self.terms)
        return dict.fromkeys(self.config.client_ids, message)

    def receive(self, sender: int, data: Message | bytes) -> None:
        """Take one message from ``sender`` (an authenticated id); never raises for it."""
        if sender not in self.config.cohort:
            self._strangers += 1
            return
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            self._agreement.receive(sender, data)
            return
        if self._ended is not None or sender not in self._expected or sender in self._drops:
            return
        if isinstance(data, Message):
            message = data
        else:
            try:
                message = decode(data)
            except DecodeError as exc:
                self._drop(sender, DropReason.MALFORMED, str(exc))
                return
        expected = {
            Stage.SHARE: SetupShares,
            Stage.MASKED_INPUT: RoundMessage,
            Stage.CONSISTENCY: SessionSignature,
            Stage.UNMASK: SessionUnmaskResponse,
        }[self._stage]
        if not isinstance(message, expected):
            self._drop(
                sender,
                DropReason.WRONG_STAGE,
                f"sent {type(message).__name__} during {self._stage.value}",
            )
            return
        assert isinstance(
            message, SetupShares | RoundMessage | SessionSignature | SessionUnmaskResponse
        )
        if message.session_id != self.session.session_id:
            self._drop(sender, DropReason.WRONG_SESSION, "message from another session")
            return
        if message.client_id != sender:
            self._drop(sender, DropReason.MALFORMED, "message claims another sender id")
            return
        if not isinstance(message, SetupShares) and message.round_number != self._round:
            self._drop(sender, DropReason.WRONG_SESSION, "message of another round")
            return
        if sender in self._answers:
            if self._answers[sender] != _kept(message):
                self._drop(sender, DropReason.DUPLICATE, "a second, different answer")
            return
        take: Callable[[int, Message], bool] = {
            Stage.SHARE: self._take_setup_shares,
            Stage.MASKED_INPUT: self._take_round_message,
            Stage.CONSISTENCY: self._take_signature,
            Stage.UNMASK: self._take_unmask,
        }[self._stage]
        if take(sender, message):
            self._answers[sender] = _kept(message)

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        """The transport stopped hearing from ``client_id`` (disconnected, refused)."""
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            self._agreement.drop(client_id, reason, detail)
            return
        if client_id in self.config.cohort:
            self._drop(client_id, reason, detail)

    def _drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        self._drops.setdefault(client_id, Drop(client_id, self._stage, reason, detail))
        self._answers.pop(client_id, None)

    def _take_setup_shares(self, sender: int, message: Message) -> bool:
        assert isinstance(message, SetupShares)
        recipients = [v for v, _ in message.ciphertexts]
        if sorted(recipients) != sorted(self._peers[sender]) or len(set(recipients)) != len(
            recipients
        ):
            self._drop(sender, DropReason.MALFORMED, "set-up shares not addressed to its peers")
            return False
        return True

    def _take_round_message(self, sender: int, message: Message) -> bool:
        assert isinstance(message, RoundMessage)
        member = self._members[sender]
        recipients = [v for v, _ in message.ciphertexts]
        if sorted(recipients) != sorted(member.live) or len(set(recipients)) != len(recipients):
            self._drop(sender, DropReason.MALFORMED, "shares not addressed to its live neighbours")
            return False
        if self.config.active and not self._verified(
            sender,
            derivations.next_key_signed_bytes(
                self.session.session_id,
                self._round + 1,
                sender,
                message.next_mask_public,
                message.next_cipher_public,
                self._context,
            ),
            message.next_signature,
        ):
            return False
        keys = (message.next_mask_public, message.next_cipher_public)
        if keys[0] == keys[1] or any(self._key_owner.get(k, sender) != sender for k in keys):
            self._drop(sender, DropReason.DUPLICATE_KEY, "reuses a key of the session")
            return False
        for key in keys:
            try:
                self._probe.exchange(key)
            except CryptoError:
                self._drop(sender, DropReason.BAD_KEY, "an unusable X25519 key")
                return False
        length = self.config.vector_length
        if len(message.packed_vector) != self._ring.packed_size(length):
            self._drop(sender, DropReason.WRONG_LENGTH, "masked input of the wrong length")
            return False
        try:
            vector = self._ring.unpack(message.packed_vector, length)
        except DecodeError as exc:
            self._drop(sender, DropReason.MALFORMED, str(exc))
            return False
        for key in keys:
            self._key_owner[key] = sender
        if self._total is None:
            self._total = self._ring.zeros(length)
        self._ring.add_into(self._total, vector)
        self._sent[sender] = _Sent(
            message.self_mask_commitment,
            message.next_mask_public,
            message.next_cipher_public,
            message.next_signature,
            dict(message.ciphertexts),
        )
        return True

    def _take_signature(self, sender: int, message: Message) -> bool:
        assert isinstance(message, SessionSignature)
        return self._verified(
            sender, derivations.consistency_signed_bytes(self._round_chain), message.signature
        )

    def _take_unmask(self, sender: int, message: Message) -> bool:
        assert isinstance(message, SessionUnmaskResponse)
        request = self._requests[sender]
        opened = {f.sender for f in request.forwarded}
        wanted_seeds = sorted(w for w in request.survivors if w in opened)
        if sorted(w for w, _ in message.self_mask_shares) != wanted_seeds or sorted(
            w for w, _ in message.key_shares
        ) != sorted(request.dropped):
            self._drop(sender, DropReason.MALFORMED, "shares for other peers than requested")
            return False
        x = one_shot.share_x(sender)
        try:
            for _, value in (*message.self_mask_shares, *message.key_shares):
                Share.from_value_bytes(x, value)
        except DecodeError as exc:
            self._drop(sender, DropReason.BAD_SHARE, str(exc))
            return False
        return True

    def _verified(self, sender: int, signed: bytes, signature: bytes) -> bool:
        public = self._pki.get(sender)
        try:
            if public is None:
                raise AuthenticationError("no identity key")
            ed25519_verify(public, signed, signature)
        except AuthenticationError:
            self._drop(sender, DropReason.BAD_SIGNATURE, "a signature that does not verify")
            return False
        return True

    # ----------------------------------------------------------------- stages
    def close_stage(self) -> dict[int, Message]:
        """End the current stage: drop the silent, check what the next one needs, and say
        what to send. A round that cannot finish raises ``RoundAborted`` (nothing revealed)
        and ends the session."""
        if self._ended is not None or self._between:
            raise UsageError("no stage is open")
        if self._stage in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE):
            return self._close_agreement()
        for u in sorted(self._expected):
            if u not in self._answers:
                self._drop(u, missed(self._stage))
        closer = {
            Stage.SHARE: self._close_setup_shares,
            Stage.MASKED_INPUT: self._close_round_messages,
            Stage.CONSISTENCY: self._close_signatures,
            Stage.UNMASK: self._close_unmask,
        }[self._stage]
        try:
            return closer()
        except RoundAborted as exc:
            self._ended = str(exc)
            self._total = None
            self._answers = {}
            raise

    def _next_stage(self, stage: Stage, expected: set[int]) -> None:
        self._stage = stage
        self._expected = set(expected)
        self._answers = {}

    def _close_agreement(self) -> dict[int, Message]:
        try:
            outgoing = self._agreement.close_stage()
        except RoundAborted as exc:
            self._ended = str(exc)
            raise
        if self._agreement.stage is not Stage.SHARE:
            return outgoing
        # The one-shot server has checked every advertised key; the shares are ours.
        advertised = self._agreement.advertised
        self._keys = dict(advertised.keys)
        self._peers = {u: tuple(peers) for u, peers in advertised.peers.items()}
        self._drops = dict(self._agreement.drops)
        self._next_stage(Stage.SHARE, set(self._peers))
        return outgoing

    def _prune(self, live: dict[int, set[int]], least: int) -> None:
        """Drop members with fewer than ``least`` live neighbours until none is left."""
        changed = True
        while changed:
            changed = False
            for u in sorted(live):
                if u in live and len(live[u]) < least:
                    self._drop(
                        u,
                        DropReason.TOO_FEW_NEIGHBOURS,
                        f"{len(live[u])} live neighbours, at least {least} needed",
                    )
                    for v in live.pop(u):
                        live[v].discard(u)
                    changed = True

    def _close_setup_shares(self) -> dict[int, Message]:
        shares = {u: m for u, m in self._answers.items() if isinstance(m, SetupShares)}
        # L_u1: a pair exchanged set-up shares both ways, or neither masks with the other.
        live = {u: {v for v in self._peers[u] if v in shares} for u in shares}
        self._prune(live, self.terms.min_live_neighbours)
        if len(live) < self.config.min_cohort:
            raise RoundAborted(
                Stage.SHARE,
                f"{len(live)} members finished the set-up; the minimum cohort is "
                f"{self.config.min_cohort}",
            )
        sid = self.session.session_id
        sealed = {u: dict(m.ciphertexts) for u, m in shares.items()}
        outgoing: dict[int, Message] = {}
        for u in sorted(live):
            outgoing[u] = PeerSetupShares(sid, u, tuple((v, sealed[v][u]) for v in sorted(live[u])))
            keys = self._keys[u]
            self._members[u] = Member(frozenset(live[u]), keys.mask_public, keys.cipher_public)
        for keys in self._keys.values():
            self._key_owner[keys.mask_public] = keys.client_id
            self._key_owner[keys.cipher_public] = keys.client_id
        self._survivors = tuple(sorted(self.session.participants))
        self._chain = derivations.chain_start(sid, self._survivors)
        self._between = True
        self._expected = set()
        self._answers = {}
        return outgoing

    def open_round(self, task: bytes) -> dict[int, Message]:
        """Round r + 1's task (the digest of the model every member trains on) for every
        live member."""
        if not self.between_rounds:
            raise UsageError("a round is in progress, or the session has ended")
        why = self.needs_setup()
        if why is not None:
            raise UsageError(f"the session cannot run another round: {why}")
        if not isinstance(task, bytes) or len(task) != DIGEST_BYTES:
            raise UsageError(f"a task digest is {DIGEST_BYTES} bytes")
        self._round += 1
        self._between = False
        self._drops = {}
        self._task = task
        sid = self.session.session_id
        self._context = derivations.round_context(sid, self._round, self.config.config_id, task)
        self._sent = {}
        self._total = None
        self._result = None
        self._requests = {}
        self._next_stage(Stage.MASKED_INPUT, set(self._members))
        return {u: RoundTask(sid, u, self._round, task) for u in sorted(self._members)}

    def _holders(self, owner: int, askable: set[int]) -> int:
        return sum(1 for v in self._members[owner].live if v in askable)

    def _check_removable(self, stage: Stage, included: set[int], askable: set[int]) -> None:
        """Before anyone reveals anything: can every mask in the sum be removed by asking
        only ``askable``?"""
        for u, member in sorted(self._members.items()):
            relevant = u in included or any(v in included for v in member.live)
            if relevant and self._holders(u, askable) < self._t:
                kind = "self mask" if u in included else "pairwise masks"
                raise RoundAborted(
                    stage,
                    f"the {kind} of client {u} cannot be removed: fewer than {self._t} "
                    "surviving holders of its shares",
                )

    def _close_round_messages(self) -> dict[int, Message]:
        included = tuple(sorted(self._sent))
        if len(included) < self.config.min_cohort:
            raise RoundAborted(
                Stage.MASKED_INPUT,
                f"{len(included)} inputs; no sum of fewer than {self.config.min_cohort} is "
                "revealed",
            )
        members = set(included)
        askable = members - set(self._drops)
        self._check_removable(Stage.MASKED_INPUT, members, askable)
        self._included = included
        if not self.config.active:
            return self._request_unmasking(askable, {})
        rule = self._survivor_rule
        assert rule is not None
        check_certifiable(self.config, self.session.graph_seed, included, rule)
        sid = self.session.session_id
        self._round_chain = derivations.chain_digest(
            self._chain, sid, self._round, self._context, included
        )
        self._next_stage(Stage.CONSISTENCY, askable)
        return {v: SessionSurvivorList(sid, v, self._round, included) for v in sorted(askable)}

    def _close_signatures(self) -> dict[int, Message]:
        signatures = {
            u: m.signature for u, m in self._answers.items() if isinstance(m, SessionSignature)
        }
        rule = self._survivor_rule
        assert rule is not None
        if len(signatures) < rule.quorum:
            raise RoundAborted(
                Stage.CONSISTENCY,
                f"{len(signatures)} members signed the round's history; a certificate needs "
                f"{rule.quorum}",
            )
        # A member unmasks only with t signatures from its live neighbours.
        askable = {
            u
            for u in signatures
            if sum(1 for v in self._members[u].live if v in signatures) >= self._t
        }
        for u in sorted(set(signatures) - askable):
            self._drop(u, DropReason.TOO_FEW_NEIGHBOURS, "too few neighbours signed")
        self._check_removable(Stage.CONSISTENCY, set(self._included), askable)
        return self._request_unmasking(askable, signatures)

    def _request_unmasking(
        self, askable: set[int], signatures: Mapping[int, bytes]
    ) -> dict[int, Message]:
        sid = self.session.session_id
        included = set(self._included)
        for v in sorted(askable):
            live = sorted(self._members[v].live)
            survivors = tuple(w for w in live if w in included)
            forwarded = tuple(
                ForwardedShare(
                    w,
                    self._sent[w].ciphertexts[v],
                    self._sent[w].next_mask_public,
                    self._sent[w].next_cipher_public,
                    self._sent[w].next_signature,
                )
                for w in survivors
            )
            near = [w for w in live if w in signatures]
            rest = sorted(w for w in signatures if w not in set(near))
            certificate = tuple((w, signatures[w]) for w in (*near, *rest))
            self._requests[v] = SessionUnmaskRequest(
                sid,
                v,
                self._round,
                survivors,
                tuple(w for w in live if w not in included),
                forwarded,
                certificate,
            )
        self._next_stage(Stage.UNMASK, askable)
        return dict(self._requests)

    def _close_unmask(self) -> dict[int, Message]:
        total = self._total
        assert total is not None
        self._unmask_answers = len(self._answers)
        seed_shares: dict[int, list[Share]] = {}
        key_shares: dict[int, list[Share]] = {}
        for v, m in sorted(self._answers.items()):
            assert isinstance(m, SessionUnmaskResponse)
            x = one_shot.share_x(v)
            for w, value in m.self_mask_shares:
                seed_shares.setdefault(w, []).append(Share.from_value_bytes(x, value))
            for w, value in m.key_shares:
                key_shares.setdefault(w, []).append(Share.from_value_bytes(x, value))
        included = set(self._included)
        ctx = self._context
        masks: list[prg.Mask] = []
        for u in self._included:
            commitment = self._sent[u].commitment

            def matches(seed: bytes, owner: int = u, expected: bytes = commitment) -> bool:
                return derivations.self_mask_commitment(seed, ctx, owner) == expected

            seed = self._reconstruct(u, seed_shares.get(u, []), matches, "self-mask seed")
            masks.append((derivations.self_mask_key(seed, ctx, u), True))
        for w, member in sorted(self._members.items()):
            if w in included:
                continue
            masked_by = sorted(v for v in member.live if v in included)
            if not masked_by:
                continue

            def matches_key(private: bytes, expected: bytes = member.mask_public) -> bool:
                return x25519_public_from_private(private) == expected

            private = self._reconstruct(w, key_shares.get(w, []), matches_key, "mask key")
            pair = X25519KeyPair.from_private_bytes(private)
            for v in masked_by:
                v_public = self._members[v].mask_public
                key = derivations.pair_mask_key(
                    pair.exchange(v_public), ctx, w, member.mask_public, v, v_public
                )
                masks.append((key, not one_shot.subtracts_pair_mask(v, w)))
        self._apply_masks(total, masks)
        self._ring.reduce(total)
        self._result = RoundResult(self._included, total)
        self._total = None
        # Round r + 1: the members of S_r, each with its live neighbours in S_r and the keys
        # it announced for round r + 1.
        self._members = {
            u: Member(
                frozenset(v for v in self._members[u].live if v in included),
                self._sent[u].next_mask_public,
                self._sent[u].next_cipher_public,
            )
            for u in self._included
        }
        if self.config.active:
            self._chain = self._round_chain
        self._survivors = self._included
        self._sent = {}
        # The round's unmask requests (a forwarded share per member and neighbour) are answered:
        # nothing between rounds needs them.
        self._requests = {}
        self._between = True
        self._expected = set()
        self._answers = {}
        return {}

    def _reconstruct(
        self, owner: int, shares: Sequence[Share], verify: Callable[[bytes], bool], what: str
    ) -> bytes:
        t = self._t
        if len(shares) < t:
            raise RoundAborted(
                Stage.UNMASK, f"only {len(shares)} shares of client {owner}'s {what}; need {t}"
            )
        rebuilt = rebuild_verified(shares, t, verify)
        if rebuilt is not None:
            return rebuilt[0]
        raise RoundAborted(
            Stage.UNMASK, f"the shares of client {owner}'s {what} do not reconstruct it"
        )

"""The client session: every decision a client makes, over every transport, kept in its journal.

A ``ClientSession`` spans rounds. Its transport (``secagg join`` over gRPC, ``SecAggMod``
inside Flower) moves bytes, trains and keeps time; the session decides everything else:

- ``offer(offer, now)``: a round's task. The round configuration is checked against the
  deployment (its scheme's ``check``: parameters, threat model, allow-list, minimum cohort), the
  task against the hash the configuration binds, the model decoded; the round id must be one
  the journal has never held, the task one whose update never entered a sum, and under DP one
  more round must fit the client's own budget. Accepted, it returns the model to train.
- ``begin(round_id, values, weight, now)``: the trained update; the round's first message.
- ``receive(data, now)``: every later server message, answered or refused (``ClientAbort``).
- ``queued(round_id, window, now)``, ``deadline()``, ``expire(now)``: when the session gives up
  on the live round (its stage timeout after the last word of the round, stretched by the
  coordinator's queueing within a bound fixed by the cohort and window). The transport only
  keeps the time and calls ``expire``.
- ``server_ended(round_id, completed, included, now)``: the coordinator's claim, recorded as
  such; the audit line says what the client itself did.

Each of these runs inside one journal transaction (the node's lock, across threads and
processes): read, decide, append, commit durably, and only then is the answer returned. A
server message answered before gets the recorded answer again; anything but the next message
of the round's one transcript is refused and closes the round (docs/CLIENT_SESSION.md, R1-R10).

Where the transport cannot keep the round's client in memory between messages (``keep_secrets``:
Flower may run each message in another process), the journal keeps the round's seed and
update until the round closes and the client is rebuilt by replaying the transcript with the
same deterministic randomness.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np
from numpy.typing import NDArray

from secagg.dp.budget import ClientBudget
from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    DecodeError,
    InputError,
)
from secagg.hazmat.randomness import DeterministicRandomness, Randomness, SystemRandomness
from secagg.journal import Event, Journal, JournalRound, JournalTransaction, RoundSecrets, digest
from secagg.protocol.codec import Direction, Message, decode
from secagg.protocol.runner import RoundClient
from secagg.protocol.stages import Stage
from secagg.schemes.base import RoundOpening, Scheme

__all__ = ["Accepted", "Answer", "ClientSession", "Offer", "SchemeFor", "TaskCodec"]

log = logging.getLogger("secagg.client_session")

SEED_BYTES = 32
# A refusal is a decision: what the session wrote before it (the round closed, its secrets
# erased) is committed before the refusal reaches the transport.
_KEEP = (ClientAbort,)
_DETAIL_CHARS = 200


class TaskCodec(Protocol):
    """A transport's encoding of a round's task; the session decides on what it reads."""

    def binding(self) -> bytes:
        """What the round configuration's ``task_hash`` must equal."""
        ...

    def fingerprint(self) -> bytes:
        """What names the training task itself (model and step): one update per task."""
        ...

    def model(self, dim: int) -> NDArray[np.float32]:
        """The model to train, decoded (``DecodeError`` or ``ConfigurationError`` if not)."""
        ...


# The deployment's scheme as this client runs one round: (client id, members) -> scheme.
# ``members`` are the transport's ids of client ids 0..n-1 (Flower's node table), or None.
SchemeFor = Callable[[int, tuple[int, ...] | None], Scheme]


@dataclass(frozen=True)
class Offer:
    """A round's task as the transport received it."""

    round_config: bytes = field(repr=False)
    task: TaskCodec = field(repr=False)
    round_id: int | None = None  # the envelope's round id, where the transport has one
    members: tuple[int, ...] | None = field(default=None, repr=False)
    # The digest of what the transport hands the training besides the task (Flower's
    # ``node_config``): pinned in the journal at first use, so it never changes under it.
    persona: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Accepted:
    """A round the client takes part in: train ``model``."""

    round_id: int
    client_id: int
    config: RoundOpening = field(repr=False)
    round_config: bytes = field(repr=False)
    members: tuple[int, ...] | None = field(repr=False)
    model: NDArray[np.float32] = field(repr=False)


@dataclass(frozen=True)
class Answer:
    """What the client sends back, encoded, and the stage it answers (for progress)."""

    data: bytes = field(repr=False)
    stage: Stage
    # When the session gives up on the round if the server says nothing more (None: the
    # client's part of the round is done).
    deadline: float | None = None


# The event a client message records, by the stage it answers.
_ANSWER_EVENTS: dict[Stage, Event] = {
    Stage.COMMIT: Event.COMMITTED,
    Stage.ADVERTISE: Event.ADVERTISED,
    Stage.SHARE: Event.SHARED,
    Stage.MASKED_INPUT: Event.CONTRIBUTED,
    Stage.UPLOAD: Event.CONTRIBUTED,
    Stage.CONSISTENCY: Event.SIGNED,
    Stage.UNMASK: Event.REVEALED,
    Stage.DECRYPT: Event.DECRYPTED,
}


@dataclass
class _Wait:
    """How long the client still waits on the live round (in memory; the journal keeps the
    deadline itself for other processes)."""

    began: float
    bound: float | None = None


class ClientSession:
    """One client's rounds, decided against its deployment and its journal."""

    def __init__(
        self,
        scheme_for: SchemeFor,
        journal: Journal,
        *,
        self_id: int,
        allowed: frozenset[int] | None,
        stage_timeout: float,
        keep_secrets: bool = False,
        budget: ClientBudget | None = None,
        rng: Randomness | None = None,
    ) -> None:
        """``self_id`` is this client in the transport's ids (a client id, a Flower node id);
        ``allowed`` the allow-list in those ids (None: any, for a simulation that opted out)."""
        if not (stage_timeout > 0 and math.isfinite(stage_timeout)):
            raise ConfigurationError(f"the stage timeout must be positive, got {stage_timeout!r}")
        self._scheme_for = scheme_for
        self.journal = journal
        self.self_id = self_id
        self.allowed = allowed
        self.stage_timeout = float(stage_timeout)
        self.keep_secrets = keep_secrets
        self.budget = budget
        self._rng = rng or SystemRandomness()
        # round id -> (transcript length, client): valid while the journal's transcript is as
        # long; otherwise rebuilt (keep_secrets) or lost (a restarted process).
        self._clients: dict[int, tuple[int, RoundClient]] = {}
        self._wait: dict[int, _Wait] = {}
        if not keep_secrets:
            # A round left live by an earlier process cannot go on: its keys died with it.
            with journal.transaction() as txn:
                for entry in txn.live_rounds():
                    txn.note(entry.round_id, entry.accepted_at, Event.LEFT, "client restarted")
                    txn.close_round(entry.round_id, "left (the client restarted)")

    def __repr__(self) -> str:
        return f"ClientSession(self_id={self.self_id}, journal={self.journal!r})"

    # ----------------------------------------------------------------- a round's task
    def offer(self, offer: Offer, now: float) -> Accepted:
        """Check a round's task; the round is then this client's live round."""
        config = _decode_config(offer.round_config)
        round_id = config.round_id
        if offer.round_id is not None and offer.round_id != round_id:
            raise ClientAbort(AbortReason.INVALID_CONFIG, "the task and its config disagree")
        client_id = self._client_id(config, offer.members)
        with self.journal.transaction(_KEEP) as txn:
            if txn.round(round_id) is not None:
                raise ClientAbort(
                    AbortReason.REPLAYED_ROUND, f"round {round_id} is in this client's journal"
                )
            if offer.persona is not None:
                pinned = txn.pin("persona", offer.persona.hex())
                if pinned is not None and pinned != offer.persona.hex():
                    raise ClientAbort(
                        AbortReason.INVALID_CONFIG,
                        "the node's own configuration is not the one its journal began with",
                    )
            scheme = self._scheme_for(client_id, offer.members)
            scheme.check(config, client_id)
            self._check_allowed(config, offer.members)
            try:
                binding = offer.task.binding()
                fingerprint = offer.task.fingerprint()
            except (DecodeError, ConfigurationError) as exc:
                raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None
            if binding != config.task_hash:
                # The session is bound to another model: training this one would be unsafe.
                raise ClientAbort(AbortReason.MODEL_MISMATCH, "the task is not the session's")
            earlier = txn.contributed_in(fingerprint)
            if earlier is not None:
                raise ClientAbort(
                    AbortReason.REPLAYED_TASK,
                    f"this task's update already entered round {earlier}'s sum",
                )
            try:
                model = offer.task.model(scheme.dim)
            except (DecodeError, ConfigurationError) as exc:
                raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None
            charges = [] if self.budget is None else txn.dp_charges(self.budget.fingerprint)
            if self.budget is not None and not self.budget.allows(charges):
                spent = self.budget.spent(charges)
                raise ClientAbort(
                    AbortReason.BUDGET_EXHAUSTED,
                    f"epsilon {spent:.3g} spent of {self.budget.limit:g}; one more round "
                    "would exceed the deployment's budget",
                )
            for live in txn.live_rounds():
                self._close(txn, live.round_id, now, Event.LEFT, "a new round began")
            txn.compact()
            txn.add_round(round_id, fingerprint, client_id, now, offer.members)
            txn.note(round_id, now, Event.ACCEPTED, config.terms())
        return Accepted(round_id, client_id, config, offer.round_config, offer.members, model)

    def begin(
        self, accepted: Accepted, values: NDArray[np.floating], weight: int, now: float
    ) -> Answer:
        """The trained update of an accepted round: the round's first message."""
        round_id = accepted.round_id
        with self.journal.transaction(_KEEP) as txn:
            entry = self._live(txn, round_id)
            if txn.exchanges(round_id):
                raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "the round has begun already")
            config = accepted.config
            scheme = self._scheme_for(entry.client_id, accepted.members)
            seed = self._rng.bytes(SEED_BYTES)
            array = np.asarray(values)
            if self.keep_secrets:
                # Replays must see exactly what the first run saw.
                array = np.ascontiguousarray(array, dtype="<f4")
            client = scheme.client(config, entry.client_id, DeterministicRandomness(seed))
            try:
                client.set_input(array, weight)
            except InputError as exc:
                self._close(txn, round_id, now, Event.LEFT, AbortReason.INVALID_UPDATE.value)
                raise ClientAbort(AbortReason.INVALID_UPDATE, str(exc)) from None
            if self.keep_secrets:
                txn.keep_secrets(round_id, RoundSecrets(seed, array.tobytes(), int(weight)))
            return self._answer(txn, entry, client, 0, accepted.round_config, now)

    # ----------------------------------------------------------------- later messages
    def receive(self, data: bytes, now: float) -> Answer:
        """Answer one server message of the live round (its bytes), or refuse it."""
        with self.journal.transaction(_KEEP) as txn:
            # A request answered before (in the live round, or in the last one, which keeps its
            # transcript until the next round is accepted) gets the recorded answer again:
            # the same bytes were already sent, so nothing new is revealed.
            request_digest = digest(data)
            for round_id, exchange in txn.exchanges_with(request_digest):
                if exchange.request == data:
                    txn.note(round_id, now, Event.RETRANSMITTED)
                    answered = _answered(_decode(exchange.answer, AbortReason.INVALID_CONFIG))
                    entry = txn.round(round_id)
                    deadline = None if entry is None else entry.deadline
                    return Answer(exchange.answer, answered, deadline)
            live = [r for r in txn.live_rounds() if txn.exchanges(r.round_id)]
            if not live:
                raise ClientAbort(AbortReason.ROUND_CLOSED, "this client is in no round")
            entry = live[-1]
            round_id = entry.round_id
            if entry.deadline is not None and now > entry.deadline:
                self._close(txn, round_id, now, Event.EXPIRED, "the deadline passed")
                raise ClientAbort(AbortReason.STAGE_TIMEOUT, "the round's deadline passed")
            transcript = txn.exchanges(round_id)
            client = self._client(txn, entry, len(transcript))
            return self._answer(txn, entry, client, len(transcript), data, now)

    def _answer(
        self,
        txn: JournalTransaction,
        entry: JournalRound,
        client: RoundClient,
        position: int,
        data: bytes,
        now: float,
    ) -> Answer:
        """Run the client on ``data``, journal what it decided, and give its answer."""
        round_id = entry.round_id
        try:
            reply = client.receive(data)
        except ClientAbort as exc:
            self._clients.pop(round_id, None)
            self._close(txn, round_id, now, Event.LEFT, exc.reason.value)
            raise
        except Exception as exc:  # a bug on our side must not answer anything either
            self._clients.pop(round_id, None)
            self._close(txn, round_id, now, Event.LEFT, type(exc).__name__)
            raise ClientAbort(AbortReason.MALFORMED_MESSAGE, type(exc).__name__) from None
        if reply is None:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "nothing to answer")
        answer = reply.encode()
        self._record(txn, entry, reply, data, now)
        txn.add_exchange(round_id, data, answer)
        self._clients[round_id] = (position + 1, client)
        deadline = None
        if self._final(reply):
            self._clients.pop(round_id, None)
            txn.close_round(round_id, "answered to the end", included=True)
            self._wait.pop(round_id, None)
        else:
            self._wait[round_id] = _Wait(now)
            deadline = now + self.stage_timeout
            txn.set_deadline(round_id, deadline)
        return Answer(answer, _answered(reply), deadline)

    def _record(
        self,
        txn: JournalTransaction,
        entry: JournalRound,
        reply: Message,
        request: bytes,
        now: float,
    ) -> None:
        """The journal rows of one answer, before it leaves."""
        round_id = entry.round_id
        stage = _answered(reply)
        event = _ANSWER_EVENTS.get(stage)
        if event is None:
            return
        attempt = reply.opens_attempt
        if attempt is not None:
            txn.set_attempts(round_id, attempt)
        if event is Event.CONTRIBUTED:
            txn.add_contribution(entry.task, round_id)
            if self.budget is not None:
                txn.add_dp_charge(self.budget.fingerprint, round_id, self.budget.charge)
        detail = reply.audit_note(request)
        txn.note(round_id, now, event, detail)

    def _final(self, reply: Message) -> bool:
        return _answered(reply) in (Stage.UNMASK, Stage.DECRYPT)

    def _client(self, txn: JournalTransaction, entry: JournalRound, length: int) -> RoundClient:
        """The live round's client, as far as its transcript goes."""
        cached = self._clients.get(entry.round_id)
        if cached is not None and cached[0] == length:
            return cached[1]
        secrets = txn.secrets(entry.round_id)
        if secrets is None:
            self._close(txn, entry.round_id, entry.accepted_at, Event.LEFT, "keys lost")
            raise ClientAbort(
                AbortReason.ROUND_CLOSED, "this client no longer holds the round's keys"
            )
        transcript = txn.exchanges(entry.round_id)
        config = _decode_config(transcript[0].request)
        scheme = self._scheme_for(entry.client_id, entry.members)
        client = scheme.client(config, entry.client_id, DeterministicRandomness(secrets.seed))
        client.set_input(np.frombuffer(secrets.update, dtype="<f4"), secrets.weight)
        for exchange in transcript:  # what this client already answered, answered again
            replayed = client.receive(exchange.request)
            if replayed is None or replayed.encode() != exchange.answer:
                # Not the client that gave those answers: never answer from it.
                self._close(txn, entry.round_id, entry.accepted_at, Event.LEFT, "replay differs")
                raise ClientAbort(
                    AbortReason.ROUND_CLOSED, "the round's client cannot be rebuilt exactly"
                )
        return client

    # ----------------------------------------------------------------- time
    def deadline(self) -> float | None:
        """When the session gives up on its live round (None: no round waits on the server)."""
        with self.journal.transaction(_KEEP) as txn:
            deadlines = [r.deadline for r in txn.live_rounds() if r.deadline is not None]
        return min(deadlines) if deadlines else None

    def queued(self, round_id: int, cohort: int, window: int, now: float) -> None:
        """The coordinator keeps this client waiting its turn: a sign of life within a bound
        of ``ceil(cohort / window) + 3`` stage timeouts from when the wait began."""
        if window < 1:
            return
        with self.journal.transaction(_KEEP) as txn:
            entry = txn.round(round_id)
            if entry is None or not entry.live or entry.deadline is None:
                return
            wait = self._wait.setdefault(round_id, _Wait(now))
            if wait.bound is None:
                wait.bound = wait.began + (math.ceil(cohort / window) + 3) * self.stage_timeout
            txn.set_deadline(round_id, min(now + self.stage_timeout, wait.bound))

    def expire(self, now: float) -> dict[int, str]:
        """Close every live round whose deadline has passed (its secrets erased): their ids
        and why."""
        closed: dict[int, str] = {}
        with self.journal.transaction(_KEEP) as txn:
            for entry in txn.live_rounds():
                if entry.deadline is not None and now >= entry.deadline:
                    wait = self._wait.get(entry.round_id)
                    why = f"no word from the server for {self.stage_timeout:g} s"
                    if wait is not None and wait.bound is not None and now >= wait.bound:
                        why = (
                            f"queued for {now - wait.began:.0f} s, longer than the "
                            f"coordinator's windows of this cohort can take "
                            f"({wait.bound - wait.began:g} s)"
                        )
                    self._close(txn, entry.round_id, now, Event.EXPIRED, why)
                    closed[entry.round_id] = why
        return closed

    # ----------------------------------------------------------------- the round's end
    def leave(self, round_id: int, reason: AbortReason, detail: str, now: float) -> None:
        """The transport's side of leaving (the update callback failed, say)."""
        with self.journal.transaction(_KEEP) as txn:
            entry = txn.round(round_id)
            if entry is not None and entry.live:
                self._close(txn, round_id, now, Event.LEFT, f"{reason.value}: {detail}")

    def server_ended(self, round_id: int, completed: bool, included: bool, now: float) -> str:
        """Record the coordinator's word on a round's end; the audit line of the round."""
        with self.journal.transaction(_KEEP) as txn:
            entry = txn.round(round_id)
            if entry is None:
                return f"round {round_id}: not in this client's journal"
            outcome = "completed" if completed else "aborted"
            claim = f"{outcome}, {'' if included else 'not '}included"
            events = txn.events(round_id)
            if any(kind is Event.CLAIMED for _, kind, _ in events):
                # The coordinator's word on a round is taken once; a later claim changes nothing.
                return audit_line(entry, events)
            txn.note(round_id, now, Event.CLAIMED, claim)
            events = txn.events(round_id)
            encrypted = any(k is Event.CONTRIBUTED and d == "encrypted" for _, k, d in events)
            if entry.live and encrypted and completed and included:
                # An encrypted upload is all such a client does: the sum is decrypted by key
                # holders, and no answer of its own can tell it more than the server's word.
                self._clients.pop(round_id, None)
                self._wait.pop(round_id, None)
                txn.close_round(round_id, "contributed its encrypted update", included=True)
            elif entry.live:
                self._close(txn, round_id, now, Event.LEFT, "ended by the coordinator")
            return audit_line(txn.round(round_id) or entry, txn.events(round_id))

    def audit(self, round_id: int) -> str:
        with self.journal.transaction(_KEEP) as txn:
            entry = txn.round(round_id)
            if entry is None:
                return f"round {round_id}: not in this client's journal"
            return audit_line(entry, txn.events(round_id))

    def included(self, round_id: int) -> bool:
        with self.journal.transaction(_KEEP) as txn:
            entry = txn.round(round_id)
            return entry is not None and entry.included

    # ----------------------------------------------------------------- checks and helpers
    def _client_id(self, config: RoundOpening, members: tuple[int, ...] | None) -> int:
        client_ids = config.client_ids
        if members is None:
            if self.self_id not in client_ids:
                raise ClientAbort(AbortReason.UNKNOWN_ID, "this client is not in the cohort")
            return self.self_id
        if client_ids != tuple(range(len(members))):
            raise ClientAbort(AbortReason.INVALID_CONFIG, "the cohort is not the members' 0..n-1")
        if self.self_id not in members:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "this client is not in the cohort")
        return members.index(self.self_id)

    def _check_allowed(self, config: RoundOpening, members: tuple[int, ...] | None) -> None:
        if self.allowed is None:
            return
        ids = config.client_ids
        named = ids if members is None else members
        strangers = [i for i in named if i not in self.allowed]
        if strangers:
            raise ClientAbort(
                AbortReason.COHORT_NOT_ALLOWED,
                f"{len(strangers)} cohort member(s) not on the allow-list",
            )

    def _live(self, txn: JournalTransaction, round_id: int) -> JournalRound:
        entry = txn.round(round_id)
        if entry is None or not entry.live:
            raise ClientAbort(AbortReason.ROUND_CLOSED, f"round {round_id} is closed here")
        return entry

    def _close(
        self, txn: JournalTransaction, round_id: int, now: float, event: Event, detail: str
    ) -> None:
        self._clients.pop(round_id, None)
        self._wait.pop(round_id, None)
        txn.note(round_id, now, event, detail[:_DETAIL_CHARS])
        txn.close_round(round_id, f"{event.value} ({detail[:_DETAIL_CHARS]})")


def _answered(message: Message) -> Stage:
    """The stage a client's message answers, as its class declares (ABORTED: no answer)."""
    return message.STAGE if message.DIRECTION is Direction.UP else Stage.ABORTED


# The decoded round configurations this process holds, by their bytes. Sessions of one process
# that are sent the same configuration share its decoded form, which is frozen (each session
# still checks it): a process may run thousands of clients of one round (a simulator, the load
# benchmark), and the cohort in a configuration (about 0.9 MB at 10,000 clients) would
# otherwise be copied per client.
_CONFIGS: weakref.WeakValueDictionary[bytes, Message] = weakref.WeakValueDictionary()


def _decode_config(data: bytes) -> RoundOpening:
    message = _CONFIGS.get(data)
    if message is None:
        message = _decode(data, AbortReason.INVALID_CONFIG)
        if not message.OPENS_ROUND:
            raise ClientAbort(
                AbortReason.INVALID_CONFIG, f"a {type(message).__name__} is no round configuration"
            )
        _CONFIGS[data] = message
    return cast(RoundOpening, message)


def _decode(data: bytes, reason: AbortReason) -> Message:
    if not isinstance(data, bytes):
        raise ClientAbort(reason, "not bytes")
    try:
        return decode(data)
    except DecodeError as exc:
        raise ClientAbort(reason, str(exc)) from None


def audit_line(entry: JournalRound, events: list[tuple[float, Event, str]]) -> str:
    """What a client did in one round, from its own journal; the server's word beside it."""
    kinds = [kind for _, kind, _ in events]
    details = {kind: detail for _, kind, detail in events}
    head = (
        f"round {entry.round_id}: {details[Event.ACCEPTED]}"
        if Event.ACCEPTED in details
        else (f"round {entry.round_id}")
    )
    attempts = entry.attempts
    claims = [detail for _, kind, detail in events if kind is Event.CLAIMED]
    claim = f" (the coordinator says: {claims[-1]})" if claims else ""
    if Event.REVEALED in kinds:
        revealed = details[Event.REVEALED]
        return f"{head}: included; answered the unmask request ({revealed}){claim}"
    if Event.DECRYPTED in kinds:
        return f"{head}: contributed its encrypted update; decrypted the sum{claim}"
    if details.get(Event.CONTRIBUTED) == "encrypted":
        return f"{head}: contributed its encrypted update{claim}"
    done = (
        "sent its masked input (possibly in the sum: its peers hold its shares), "
        "answered no unmask request"
        if Event.CONTRIBUTED in kinds
        else "shared keys, sent no masked input"
        if Event.SHARED in kinds
        else "advertised keys, shared none"
        if Event.ADVERTISED in kinds
        else "no key advertised"
    )
    ending = next(
        (d for _, k, d in reversed(events) if k in (Event.LEFT, Event.EXPIRED)), "still live"
    )
    attempt = f" after attempt {attempts}" if attempts else ""
    if ending == "ended by the coordinator":
        return f"{head}: ended by the coordinator{attempt}; {done}{claim}"
    return f"{head}: {ending}{attempt}; {done}{claim}"

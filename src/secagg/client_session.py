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

Sessions that span rounds (docs/SESSIONS.md) go through the same doors, with their own for what
a one-shot round does not have:

- ``offer_session(config, now)``: a ``SessionConfig``, checked against the deployment as a
  round's configuration is (its scheme's ``check``, the allow-list), its caps (R_max, T_max)
  against the deployment's; accepted, it is the client's one live session (a live session or
  one-shot round is left: rule S12) and the answer is the set-up's commitment;
- ``receive(data, now)``: every later set-up message, the survivor list and the unmask
  request (``PeerSetupShares`` without a task is taken with an empty answer: nothing to send);
- ``offer_round(opening, task, now)``: the message that opens round r (a ``RoundTask``, or
  the set-up's ``PeerSetupShares`` carrying round 1's task) with its model: only round
  ``last + 1`` of the live session, within R_max and T_max (S3, S12), the model's digest the
  client computes itself equal to the task's (it goes into ``ctx_r``: S8), a task whose update
  entered no sum, and one more DP charge within budget (S14); returns the model to train;
- ``begin_round(accepted, values, weight, now)``: the round's message, computed with fresh
  randomness inside the transaction that journals it with the DP charge (S2);
- ``leave_session``, ``session_audit``, and ``deadline``/``expire`` for both kinds.

A session is never rebuilt by replay (attack A1): under ``keep_secrets`` the journal holds its
client's *state* (keys and held shares, ``secagg.schemes.masking.session.state``), replaced in
every transaction that changes it, never a seed or an update; without it (``secagg join``) the
client lives in memory only, and a restarted process leaves its session. Any refusal in a
session is a departure: the client journals why and erases the session's secrets (S4).
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
from secagg.journal import (
    Event,
    InSession,
    Journal,
    JournalRound,
    JournalSession,
    JournalSessionRound,
    JournalTransaction,
    RoundSecrets,
    Where,
    digest,
)
from secagg.protocol.codec import Direction, Message, decode
from secagg.protocol.runner import RoundClient
from secagg.protocol.stages import Stage
from secagg.schemes.base import RoundOpening, Scheme
from secagg.schemes.masking.session import derivations as session_derivations
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.messages import SessionConfig
from secagg.schemes.masking.session.state import Phase, SessionDeployment, progress
from secagg.schemes.masking.session.state import opening as session_opening
from secagg.schemes.masking.session.terms import DEFAULT_MAX_ROUNDS, DEFAULT_MAX_SECONDS

__all__ = ["Accepted", "Answer", "ClientSession", "Offer", "SchemeFor", "TaskCodec"]

log = logging.getLogger("secagg.client_session")

SEED_BYTES = 32
# A refusal is a decision: what the session wrote before it (the round closed, its secrets
# erased) is committed before the refusal reaches the transport.
_KEEP = (ClientAbort,)
_DETAIL_CHARS = 200
# Where a session client holds an agreed session.
_AGREED = (Phase.SETTING_UP, Phase.BETWEEN, Phase.IN_ROUND)


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
    """A round the client takes part in: train ``model``.

    For a round of a session, ``round_id`` is the round's number in the session, ``config``
    the session's configuration, ``round_config`` the ``RoundTask`` and ``session_id`` the
    session's id."""

    round_id: int
    client_id: int
    config: RoundOpening = field(repr=False)
    round_config: bytes = field(repr=False)
    members: tuple[int, ...] | None = field(repr=False)
    model: NDArray[np.float32] = field(repr=False)
    session_id: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Answer:
    """What the client sends back, encoded, and the stage it answers (for progress). Empty
    ``data``: nothing to send (a session's ``PeerSetupShares`` is taken without an answer)."""

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
        max_session_rounds: int = DEFAULT_MAX_ROUNDS,
        max_session_seconds: int = DEFAULT_MAX_SECONDS,
    ) -> None:
        """``self_id`` is this client in the transport's ids (a client id, a Flower node id);
        ``allowed`` the allow-list in those ids (None: any, for a simulation that opted out);
        ``max_session_rounds`` and ``max_session_seconds`` the deployment's caps on a session
        (a server's may only be lower: rule S12)."""
        if not (stage_timeout > 0 and math.isfinite(stage_timeout)):
            raise ConfigurationError(f"the stage timeout must be positive, got {stage_timeout!r}")
        for name, cap in (("rounds", max_session_rounds), ("seconds", max_session_seconds)):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigurationError(f"a session's most {name} must be a positive int")
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
        self.max_session_rounds = max_session_rounds
        self.max_session_seconds = max_session_seconds
        # The live session's client, by (session, step): valid while the journal's session is
        # at that step; otherwise restored from its state (keep_secrets) or lost.
        self._held: tuple[int, int, SessionClient] | None = None
        self._now = 0.0  # the time of the decision in progress: the session clients' clock
        if not keep_secrets:
            # A round left live by an earlier process cannot go on: its keys died with it.
            with journal.transaction() as txn:
                for entry in txn.live_rounds():
                    txn.note(entry.round_id, entry.accepted_at, Event.LEFT, "client restarted")
                    txn.close_round(entry.round_id, "left (the client restarted)")
                session = txn.live_session()
                if session is not None:
                    self._leave_session(
                        txn, session, session.set_up_at, Event.LEFT, "the client restarted"
                    )

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
            self._check_persona(txn, offer.persona)
            scheme = self._scheme_for(client_id, offer.members)
            scheme.check(config, client_id)
            self._check_allowed(config, offer.members)
            binding, fingerprint = _task_digests(offer.task)
            if binding != config.task_hash:
                # The session is bound to another model: training this one would be unsafe.
                raise ClientAbort(AbortReason.MODEL_MISMATCH, "the task is not the session's")
            self._check_fresh_task(txn, fingerprint)
            model = _model(offer.task, scheme.dim)
            self._check_budget(txn)
            for live in txn.live_rounds():
                self._close(txn, live.round_id, now, Event.LEFT, "a new round began")
            session = txn.live_session()
            if session is not None:  # one live session or round (S12)
                self._leave_session(txn, session, now, Event.LEFT, "a one-shot round began")
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
            self._now = now
            recorded = self._recorded(txn, data, now)
            if recorded is not None:
                return recorded
            session = txn.live_session()
            if session is not None:
                return self._receive_in_session(txn, session, data, now)
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
        self._record(txn, round_id, entry.task, reply, data, now)
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
        where: Where,
        task: bytes,
        reply: Message,
        request: bytes,
        now: float,
    ) -> None:
        """The journal rows of one answer, before it leaves (``task``: the fingerprint of the
        round's task, whose update a masked input carries)."""
        stage = _answered(reply)
        event = _ANSWER_EVENTS.get(stage)
        if event is None:
            return
        attempt = reply.opens_attempt
        if attempt is not None:
            txn.set_attempts(where, attempt)
        if event is Event.CONTRIBUTED:
            txn.add_contribution(task, where)
            if self.budget is not None:
                txn.add_dp_charge(self.budget.fingerprint, where, self.budget.charge)
        detail = reply.audit_note(request)
        txn.note(where, now, event, detail)

    def _recorded(self, txn: JournalTransaction, data: bytes, now: float) -> Answer | None:
        """A request answered before (in the live round, or in the last one, which keeps its
        transcript until the next round is accepted) gets the recorded answer again: the same
        bytes were already sent, so nothing new is revealed."""
        for where, exchange in txn.exchanges_with(digest(data)):
            if exchange.request == data:
                txn.note(where, now, Event.RETRANSMITTED)
                if exchange.answer:
                    answered = _answered(_decode(exchange.answer, AbortReason.INVALID_CONFIG))
                else:
                    answered = _decode(exchange.request, AbortReason.INVALID_CONFIG).STAGE
                if isinstance(where, InSession):
                    session = txn.session(where.session)
                    deadline = None if session is None else session.deadline
                else:
                    entry = txn.round(where)
                    deadline = None if entry is None else entry.deadline
                return Answer(exchange.answer, answered, deadline)
        return None

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
            session = txn.live_session()
            if session is not None and session.deadline is not None:
                deadlines.append(session.deadline)
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
        and why. A live session past its deadline is left too (``live_session`` says so)."""
        closed: dict[int, str] = {}
        with self.journal.transaction(_KEEP) as txn:
            session = txn.live_session()
            if session is not None and session.deadline is not None and now >= session.deadline:
                terms = _decode_session_config(session.config).terms
                why = f"no word from the server for {self.stage_timeout:g} s"
                if session.deadline >= session.set_up_at + terms.max_seconds:
                    why = f"the session is older than its {terms.max_seconds} s"
                self._leave_session(txn, session, now, Event.EXPIRED, why)
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

    # ----------------------------------------------------------------- sessions
    def offer_session(
        self,
        session_config: bytes,
        now: float,
        *,
        members: tuple[int, ...] | None = None,
        persona: bytes | None = None,
    ) -> Answer:
        """A session's configuration (a ``SessionConfig``'s bytes), checked against the
        deployment as a round's configuration is and its caps against the deployment's;
        accepted, it is this client's one live session (S12: a live session or one-shot round
        is left) and the answer is its commitment. ``members`` and ``persona`` as ``Offer``'s."""
        config_message = _decode_session_config(session_config)
        terms = config_message.terms
        config = terms.config
        client_id = self._client_id(config, members)
        with self.journal.transaction(_KEEP) as txn:
            self._now = now
            recorded = self._recorded(txn, session_config, now)
            if recorded is not None:
                return recorded
            if txn.session_configured(config.config_id) is not None:
                raise ClientAbort(
                    AbortReason.REPLAYED_ROUND, "this session configuration is in the journal"
                )
            self._check_persona(txn, persona)
            scheme = self._scheme_for(client_id, members)
            scheme.check(config, client_id)
            self._check_allowed(config, members)
            if (
                terms.max_rounds > self.max_session_rounds
                or terms.max_seconds > self.max_session_seconds
            ):
                raise ClientAbort(
                    AbortReason.DOWNGRADE,
                    f"a session of up to {terms.max_rounds} rounds in {terms.max_seconds} s; "
                    f"the deployment allows {self.max_session_rounds} in "
                    f"{self.max_session_seconds} s",
                )
            deployment = SessionDeployment.of(scheme, config, client_id)
            for live in txn.live_rounds():
                self._close(txn, live.round_id, now, Event.LEFT, "a session began")
            earlier = txn.live_session()
            if earlier is not None:
                self._leave_session(txn, earlier, now, Event.LEFT, "a new set-up began")
            txn.compact()
            session = txn.add_session(config.config_id, session_config, client_id, now, members)
            txn.note(
                InSession(session.seq, 0),
                now,
                Event.ACCEPTED,
                f"{config.terms()}; a session of up to {terms.max_rounds} rounds in "
                f"{terms.max_seconds} s",
            )
            client = deployment.client(terms, client_id, self._rng, self._clock)
            return self._session_answer(txn, session, client, session_config, now)

    def offer_round(
        self, opening: bytes, task: TaskCodec, now: float, *, persona: bytes | None = None
    ) -> Accepted:
        """The message that opens round r of the live session (a ``RoundTask``, or for round
        1 the set-up's ``PeerSetupShares`` carrying its task) with the model it names;
        accepted, train ``model``. The same bytes again before the round's message left give
        the same round again (nothing was sent); after, they are a retransmission, refused
        here (``replayed-round``) and answered by ``receive`` with the recorded bytes. Any
        other refusal leaves the session."""
        with self.journal.transaction(_KEEP) as txn:
            self._now = now
            session = txn.live_session()
            if session is None or session.session_id is None:
                raise ClientAbort(AbortReason.ROUND_CLOSED, "this client is in no session")
            if any(e.request == opening for _, e in txn.exchanges_with(digest(opening))):
                raise ClientAbort(
                    AbortReason.REPLAYED_ROUND, "this task was answered: its answer is recorded"
                )
            try:
                return self._accept_round(txn, session, opening, task, now, persona)
            except ClientAbort as exc:
                self._leave_session(txn, session, now, Event.LEFT, _why(exc))
                raise

    def _accept_round(
        self,
        txn: JournalTransaction,
        session: JournalSession,
        opening: bytes,
        task: TaskCodec,
        now: float,
        persona: bytes | None,
    ) -> Accepted:
        sid = session.session_id
        assert sid is not None
        opened = session_opening(_decode(opening, AbortReason.MALFORMED_MESSAGE))
        if opened is None:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "no message that opens a round")
        r = opened.round_number
        pending = txn.session_round(session.seq, r)
        # The same task again before its message left (a retry, another process): nothing
        # was sent, so it is the same round again.
        again = (
            pending is not None
            and pending.live
            and pending.request_digest == digest(opening)
            and not txn.exchanges(InSession(session.seq, r))
        )
        client = self._session_client(txn, session, now)
        if opened.session_id != sid or opened.recipient != session.client_id:
            raise ClientAbort(AbortReason.WRONG_SESSION, "a task of another session or client")
        at = progress(client)
        # S4: round r - 1 closes before round r begins (round 1's task may come with the
        # set-up's shares, which close the set-up).
        expected = Phase.SETTING_UP if opened.with_setup else Phase.BETWEEN
        if at.phase is not expected:
            raise ClientAbort(
                AbortReason.ROUND_OUT_OF_ORDER,
                f"a task for round {r} while the client is {at.phase.value}",
            )
        if r <= at.closed or (not again and txn.session_round(session.seq, r) is not None):
            raise ClientAbort(AbortReason.REPLAYED_ROUND, f"round {r} of the session was offered")
        if r != at.closed + 1:  # S3: no gap
            raise ClientAbort(
                AbortReason.ROUND_OUT_OF_ORDER, f"a task for round {r} after round {at.closed}"
            )
        terms = client.terms
        if r > terms.max_rounds or now - session.set_up_at > terms.max_seconds:  # S12
            raise ClientAbort(
                AbortReason.SESSION_EXPIRED,
                f"round {r} is past the session's {terms.max_rounds} rounds or "
                f"{terms.max_seconds} s",
            )
        self._check_persona(txn, persona)
        binding, fingerprint = _task_digests(task)
        if binding != opened.task:
            # S8: the client masks under the digest of what it trains on, computed here.
            raise ClientAbort(AbortReason.MODEL_MISMATCH, "the model is not the task's")
        self._check_fresh_task(txn, fingerprint)
        model = _model(task, terms.config.dim)
        self._check_budget(txn)
        if not again:
            context = session_derivations.round_context(sid, r, terms.config_id, binding)
            txn.compact_session(session.seq, keep_from=r - 1)
            txn.add_session_round(
                JournalSessionRound(
                    session.seq,
                    r,
                    fingerprint,
                    binding,
                    context,
                    digest(opening),
                    now,
                    None,
                    False,
                )
            )
            txn.note(InSession(session.seq, r), now, Event.ACCEPTED, f"model {binding[:4].hex()}")
        return Accepted(r, session.client_id, terms.config, opening, session.members, model, sid)

    def begin_round(
        self, accepted: Accepted, values: NDArray[np.floating], weight: int, now: float
    ) -> Answer:
        """The trained update of an accepted round of the live session: its message, computed
        with fresh randomness and journalled with the DP charge before it is returned (S2)."""
        with self.journal.transaction(_KEEP) as txn:
            self._now = now
            session = txn.live_session()
            if session is None or session.session_id != accepted.session_id:
                raise ClientAbort(AbortReason.ROUND_CLOSED, "this round's session is not live")
            where = InSession(session.seq, accepted.round_id)
            entry = txn.session_round(session.seq, accepted.round_id)
            if (
                entry is None
                or not entry.live
                or entry.request_digest != digest(accepted.round_config)
                or txn.exchanges(where)
            ):
                raise ClientAbort(AbortReason.ROUND_CLOSED, "this round is not waiting for input")
            client = self._session_client(txn, session, now)
            try:
                client.set_input(values, weight, entry.digest)
            except InputError as exc:
                self._leave_session(txn, session, now, Event.LEFT, f"invalid update: {exc}")
                raise ClientAbort(AbortReason.INVALID_UPDATE, str(exc)) from None
            return self._session_answer(
                txn, session, client, accepted.round_config, now, task=entry.task
            )

    def _receive_in_session(
        self, txn: JournalTransaction, session: JournalSession, data: bytes, now: float
    ) -> Answer:
        if session.deadline is not None and now > session.deadline:
            self._leave_session(txn, session, now, Event.EXPIRED, "the deadline passed")
            raise ClientAbort(AbortReason.STAGE_TIMEOUT, "the session's deadline passed")
        client = self._session_client(txn, session, now)
        try:
            message = _decode(data, AbortReason.MALFORMED_MESSAGE)
            if client.needs_input(message):
                raise ClientAbort(
                    AbortReason.UNEXPECTED_MESSAGE, "a round's task comes with its model"
                )
        except ClientAbort as exc:
            self._leave_session(txn, session, now, Event.LEFT, _why(exc))
            raise
        return self._session_answer(txn, session, client, data, now)

    def _session_answer(
        self,
        txn: JournalTransaction,
        session: JournalSession,
        client: SessionClient,
        data: bytes,
        now: float,
        *,
        task: bytes = b"",
    ) -> Answer:
        """Run the session's client on ``data`` and journal what it decided: the exchange,
        the audit, the contribution and DP charge of a masked input, the client's new state
        (replacing the old one: its erasures), the round's close; then give its answer."""
        self._held = None
        where = self._current(txn, session)
        before = progress(client).phase
        try:
            reply = client.receive(data)
        except ClientAbort as exc:
            self._leave_session(txn, session, now, Event.LEFT, _why(exc))
            raise
        except Exception as exc:  # a bug on our side must not answer anything either
            self._leave_session(txn, session, now, Event.LEFT, type(exc).__name__)
            raise ClientAbort(AbortReason.MALFORMED_MESSAGE, type(exc).__name__) from None
        at = progress(client)
        if before is Phase.SETTING_UP and at.phase in (Phase.BETWEEN, Phase.IN_ROUND):
            live = f"{len(client.live)} live neighbours"  # the set-up's shares were taken
            txn.note(InSession(session.seq, 0), now, Event.SET_UP, live)
        if reply is None:  # the set-up's shares without a task: nothing to send
            answer, stage = b"", _decode(data, AbortReason.MALFORMED_MESSAGE).STAGE
        else:
            answer, stage = reply.encode(), _answered(reply)
            self._record(txn, where, task, reply, data, now)
        txn.add_exchange(where, data, answer)
        if session.session_id is None and at.phase in _AGREED:
            txn.session_agreed(session.seq, client.session.session_id)
        if stage is Stage.UNMASK:
            txn.close_session_round(session.seq, where.round_number, "answered to the end")
        terms = client.terms
        if at.phase is Phase.LEFT:
            # S6: the round's own checks passed, a neighbour's next keys did not: answered,
            # then left.
            self._leave_session(txn, session, now, Event.LEFT, f"{at.reason}: {at.detail}")
            return Answer(answer, stage, None)
        if at.phase is Phase.BETWEEN and at.closed >= terms.max_rounds:
            self._leave_session(
                txn, session, now, Event.LEFT, f"the session ran its {terms.max_rounds} rounds"
            )
            return Answer(answer, stage, None)
        deadline = now + self.stage_timeout
        if at.phase is Phase.BETWEEN:
            # Between rounds the server may train as long as the session may last (T_max).
            deadline = session.set_up_at + terms.max_seconds
        if self.keep_secrets:
            txn.keep_session_state(session.seq, client.snapshot())
        self._held = (session.seq, txn.session_stepped(session.seq, deadline), client)
        return Answer(answer, stage, deadline)

    def _session_client(
        self, txn: JournalTransaction, session: JournalSession, now: float
    ) -> SessionClient:
        """The live session's client at the journal's step: held in memory, or restored from
        its journalled state (never replayed); a client that has neither leaves."""
        held = self._held
        if held is not None and held[:2] == (session.seq, session.step):
            return held[2]
        self._held = None
        state = txn.session_state(session.seq) if self.keep_secrets else None
        if state is None:
            self._leave_session(txn, session, now, Event.LEFT, "keys lost")
            raise ClientAbort(
                AbortReason.ROUND_CLOSED, "this client no longer holds the session's keys"
            )
        terms = _decode_session_config(session.config).terms
        scheme = self._scheme_for(session.client_id, session.members)
        deployment = SessionDeployment.of(scheme, terms.config, session.client_id)
        try:
            client = deployment.restore(state, self._rng, self._clock)
        except DecodeError:
            client = None
        if client is None or client.terms != terms or client.client_id != session.client_id:
            self._leave_session(txn, session, now, Event.LEFT, "its state does not restore")
            raise ClientAbort(
                AbortReason.ROUND_CLOSED, "the session's client cannot be rebuilt exactly"
            )
        return client

    def _clock(self) -> float:
        return self._now

    def _current(self, txn: JournalTransaction, session: JournalSession) -> InSession:
        """Where the session is: its latest round accepted, or its set-up (0)."""
        rounds = txn.session_rounds(session.seq)
        return InSession(session.seq, rounds[-1].round_number if rounds else 0)

    def _leave_session(
        self,
        txn: JournalTransaction,
        session: JournalSession,
        now: float,
        event: Event,
        detail: str,
    ) -> None:
        """Leave: journal why, erase every secret of the session, answer nothing more of it."""
        self._held = None
        current = txn.session(session.seq)
        if current is None or not current.live:
            return
        where = self._current(txn, session)
        detail = detail[:_DETAIL_CHARS]
        txn.note(where, now, event, detail)
        txn.close_session(session.seq, f"{event.value} at round {where.round_number} ({detail})")

    def leave_session(self, reason: AbortReason, detail: str, now: float) -> None:
        """The transport's side of leaving the live session (the update callback failed)."""
        with self.journal.transaction(_KEEP) as txn:
            session = txn.live_session()
            if session is not None:
                self._leave_session(txn, session, now, Event.LEFT, f"{reason.value}: {detail}")

    def live_session(self) -> JournalSession | None:
        """The live session as the journal holds it (None: the client is in none)."""
        with self.journal.transaction(_KEEP) as txn:
            return txn.live_session()

    def session_audit(self, round_number: int, session: int | None = None) -> str:
        """What the client did in one round of a session (0: its set-up), from its own
        journal; ``session`` is the journal's number for it (None: the latest)."""
        with self.journal.transaction(_KEEP) as txn:
            sessions = txn.all_sessions()
            chosen = [s for s in sessions if session is None or s.seq == session][-1:]
            if not chosen:
                return f"session {session}: not in this client's journal"
            entry = chosen[0]
            sid = "?" if entry.session_id is None else entry.session_id[:4].hex()
            head = f"session {sid}, " + ("set-up" if round_number == 0 else f"round {round_number}")
            attempts = entry.attempts if round_number == 0 else 0
            return _audit(head, attempts, txn.events(InSession(entry.seq, round_number)))

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

    def _check_persona(self, txn: JournalTransaction, persona: bytes | None) -> None:
        if persona is None:
            return
        pinned = txn.pin("persona", persona.hex())
        if pinned is not None and pinned != persona.hex():
            raise ClientAbort(
                AbortReason.INVALID_CONFIG,
                "the node's own configuration is not the one its journal began with",
            )

    def _check_fresh_task(self, txn: JournalTransaction, fingerprint: bytes) -> None:
        earlier = txn.contributed_in(fingerprint)
        if earlier is not None:
            where = earlier if isinstance(earlier, InSession) else f"round {earlier}"
            raise ClientAbort(
                AbortReason.REPLAYED_TASK, f"this task's update already entered {where}'s sum"
            )

    def _check_budget(self, txn: JournalTransaction) -> None:
        if self.budget is None:
            return
        charges = txn.dp_charges(self.budget.fingerprint)
        if not self.budget.allows(charges):
            spent = self.budget.spent(charges)
            raise ClientAbort(
                AbortReason.BUDGET_EXHAUSTED,
                f"epsilon {spent:.3g} spent of {self.budget.limit:g}; one more round "
                "would exceed the deployment's budget",
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
    message = _decode_opening(data)
    if message.TAG == SessionConfig.TAG:
        raise ClientAbort(
            AbortReason.INVALID_CONFIG, "a session's configuration opens a session, not a round"
        )
    return cast(RoundOpening, message)


def _decode_session_config(data: bytes) -> SessionConfig:
    message = _decode_opening(data)
    if message.TAG != SessionConfig.TAG:
        raise ClientAbort(AbortReason.INVALID_CONFIG, "not a session's configuration")
    return cast(SessionConfig, message)


def _decode_opening(data: bytes) -> Message:
    message = _CONFIGS.get(data) if isinstance(data, bytes) else None
    if message is None:
        message = _decode(data, AbortReason.INVALID_CONFIG)
        if not message.OPENS_ROUND:
            raise ClientAbort(
                AbortReason.INVALID_CONFIG, f"a {type(message).__name__} is no round configuration"
            )
        _CONFIGS[data] = message
    return message


def _task_digests(task: TaskCodec) -> tuple[bytes, bytes]:
    """What the task binds (``task_hash``, a session round's ``task_r``) and its fingerprint."""
    try:
        return task.binding(), task.fingerprint()
    except (DecodeError, ConfigurationError) as exc:
        raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None


def _model(task: TaskCodec, dim: int) -> NDArray[np.float32]:
    try:
        return task.model(dim)
    except (DecodeError, ConfigurationError) as exc:
        raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None


def _why(exc: ClientAbort) -> str:
    return f"{exc.reason.value}: {exc.detail}"


def _decode(data: bytes, reason: AbortReason) -> Message:
    if not isinstance(data, bytes):
        raise ClientAbort(reason, "not bytes")
    try:
        return decode(data)
    except DecodeError as exc:
        raise ClientAbort(reason, str(exc)) from None


def audit_line(entry: JournalRound, events: list[tuple[float, Event, str]]) -> str:
    """What a client did in one round, from its own journal; the server's word beside it."""
    return _audit(f"round {entry.round_id}", entry.attempts, events)


def _audit(name: str, attempts: int, events: list[tuple[float, Event, str]]) -> str:
    kinds = [kind for _, kind, _ in events]
    details = {kind: detail for _, kind, detail in events}
    head = f"{name}: {details[Event.ACCEPTED]}" if Event.ACCEPTED in details else name
    claims = [detail for _, kind, detail in events if kind is Event.CLAIMED]
    claim = f" (the coordinator says: {claims[-1]})" if claims else ""
    if Event.REVEALED in kinds:
        revealed = details[Event.REVEALED]
        return f"{head}: included; answered the unmask request ({revealed}){claim}"
    if Event.SET_UP in kinds:
        attempt = f" after attempt {attempts}" if attempts else ""
        return f"{head}: set up{attempt} ({details[Event.SET_UP]})"
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

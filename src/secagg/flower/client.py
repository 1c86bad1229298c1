"""The client side: a Flower mod that answers secagg's protocol and trains only inside it.

``SecAggMod(params, journal=..., allowed_nodes=...)`` is a Flower ``Mod``: put it in a
``ClientApp``'s ``mods`` and every ``TRAIN`` message goes through it. The mod is a transport
over the client session (``secagg.client_session``), which makes every decision, exactly as it
does for ``secagg join``: the round configuration against the deployment (the ``Params``, the
allow-list of node ids, the identities in active mode), the round id and the task against the
node's journal (a round is taken once, a task's update enters one sum, the DP budget), the task
against the hash the session is bound to, every protocol message against the round's one
transcript. The mod only moves bytes between Flower's records and the session, runs the app's
training (once, on the round's first message, on exactly the task the session is bound to;
the update is the difference between what it returns and the global model), and keeps time.

**Two kinds of round.** A message whose secagg record carries the node table (``wire.NODES``)
opens something: a one-shot round (a ``RoundConfig`` beside the strategy's records: offered,
trained, begun) or a session that spans rounds (a ``SessionConfig``, docs/SESSIONS.md: its
binding must be the digest of the node table it came with, ``wire.session_binding``, and it is
offered with that table, as a round's configuration is: allow-list, pki, the deployment's
session caps ``max_session_rounds`` and ``max_session_seconds``; the answer is the set-up's
commitment). A protocol message that opens a session's round (``Message.opens_training``: a
``RoundTask``, or round 1's ``PeerSetupShares`` with its task) comes beside the strategy's
records: the round's task is their ``content_digest`` (``SessionTask``), offered with
``offer_round``, trained exactly as a one-shot round is, and begun. Every other message is the
session's (``receive``). A session round's opening seen again after its message left is a
retransmission: the journal's bytes are sent again and the app does not train.

**Nothing of a round or a session is kept in Flower's ``Context``.** Flower's simulation
engine writes a node's ``Context`` back after each message with nothing serialising one node's
messages, and in simulation it lives beside the ServerApp: a stale copy written back after
later messages would roll the node's protocol state back. The state lives in the node's
journal (a SQLite file under the folder the app names in ``journal``, one per node:
``node-<id>.journal``): each message is decided under the journal's lock (across threads and
processes), appended, and made durable before the answer leaves. Since Flower may run each
message in another process, the journal keeps a one-shot round's 32-byte seed and update until
the round closes (its client is rebuilt by replaying its transcript with the same
deterministic randomness), and a session's client *state* (its next round's keys and held
shares, never a seed or an update) between rounds: that state is as sensitive as the identity
key, and one read of it yields one round of the node's input (docs/SESSIONS.md 1.4, 2.4).

**An allow-list is required.** ``allowed_nodes`` names the node ids this node takes part with
(in active mode the ``pki`` keys are the allow-list); a mod without one is a configuration
error unless the app opts out by name with ``allow_any_node=True`` (for a simulation where
every node is the app's own; logged as a warning).

**Deadlines.** The session abandons a round ``stage_timeout`` seconds after the node's last
answer: a later message is refused, and a timer erases the round's secrets when the time
passes even if no message comes. Between a session's rounds the deadline is the session's end
(its ``max_seconds`` after the set-up): the server may train as long as that.

Any refusal is a typed ``ClientAbort``: the mod logs it and answers the server with the reason
(``wire.ABORT``) so the server drops this node at once instead of waiting for a timeout. A
``TRAIN`` message that does not carry the protocol is refused with an error reply: this
deployment has no plaintext path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from numpy.typing import NDArray

from secagg.client_session import Accepted, Answer, ClientSession, Offer
from secagg.dp.budget import ClientBudget
from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    DecodeError,
    JournalError,
    one_line,
)
from secagg.flower import wire
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.journal import Journal
from secagg.protocol.codec import Message as ProtocolMessage
from secagg.protocol.codec import decode
from secagg.schemes.base import Scheme
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.session.messages import session_terms
from secagg.schemes.masking.session.terms import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_MAX_SECONDS,
    SessionTerms,
)

if TYPE_CHECKING:
    from secagg.flower.configured import NodeConfiguredMod

try:
    from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("secagg.flower needs Flower: pip install 'secagg[flower]'") from exc

__all__ = ["DEFAULT_STAGE_TIMEOUT", "REFUSED_PLAINTEXT", "SecAggMod"]

# The ClientApp callable a mod wraps: (message, context) -> reply.
ClientAppCallable: TypeAlias = Callable[[Message, Context], Message]

log = logging.getLogger("secagg.flower.client")

_DETAIL_CHARS = 200
DEFAULT_STAGE_TIMEOUT = 120.0
# Error code of the reply to a TRAIN message without the protocol (Flower's own codes are
# small integers; this one is ours and says "refused by secagg").
REFUSED_PLAINTEXT = 5301
# Flower's legacy (NumPyClient) replies keep the example count here.
_LEGACY_WEIGHT = ("fitres.num_examples", "num_examples")


# The sessions and deadline timers this process holds, by journal file and mod configuration.
_SessionKey: TypeAlias = tuple[Path, bytes]
_SESSIONS: dict[_SessionKey, ClientSession] = {}
_TIMERS: dict[_SessionKey, threading.Timer] = {}
_PROCESS_LOCK = threading.Lock()


class FlowerTask:
    """A round's task as Flower sends it (``secagg.client_session.TaskCodec``): the records
    the strategy sent, bound with the round id and node table into the session's task hash;
    the model one ``ArrayRecord`` of finite values."""

    def __init__(self, content: RecordDict, round_id: int, table: bytes) -> None:
        self.content = content
        self._round_id = round_id
        self._table = table
        self.layout: wire.ArrayLayout | None = None

    def fingerprint(self) -> bytes:
        # The model and the training config the strategy sent (its round number included),
        # as ``secagg join``'s (model, step).
        return wire.content_digest(self.content)

    def binding(self) -> bytes:
        return wire.task_digest(self._round_id, self._table, self.fingerprint())

    def model(self, dim: int) -> NDArray[np.float32]:
        record = wire.single_array_record(self.content, "the train message")
        layout = wire.ArrayLayout.of(record)
        vector = layout.flatten(record)
        if layout.size != dim:
            raise ConfigurationError(
                f"the model has {layout.size} values; the deployment's dim is {dim}"
            )
        self.layout = layout
        return vector


class SessionTask(FlowerTask):
    """A session round's task as Flower sends it: the strategy's records beside the message
    that opens the round. The round binds their ``content_digest`` alone (``RoundTask.task``,
    ``ctx_r``): the session binds the node table once, at set-up (``wire.session_binding``),
    and the round number is in every key of the round."""

    def __init__(self, content: RecordDict) -> None:
        super().__init__(content, 0, b"")

    def binding(self) -> bytes:
        return self.fingerprint()


class SecAggMod:
    """A Flower ``Mod`` running secagg's secure aggregation for every ``TRAIN`` message.

    ``params`` is this client's deployment (the same ``Params`` the server uses). ``journal``
    is the folder holding each node's journal (``node-<id>.journal``): node-local, durable,
    protected like the identity key. ``allowed_nodes`` is the allow-list of Flower node ids;
    ``allow_any_node=True`` opts out of it by name (a simulation where every node is the
    app's own). In active mode (``params.server_model`` is semi-malicious) ``identity`` is this
    node's long-term Ed25519 key and ``pki`` maps node ids to their identity public keys (and
    is the allow-list unless ``allowed_nodes`` narrows it). ``weight_key`` names the entry of
    the app's ``MetricRecord`` that weights its update (FedAvg's ``num-examples``; a legacy
    ``NumPyClient``'s example count is found too). ``stage_timeout`` is how long the node waits
    for the server's next message of a round before it forgets the round.
    ``max_session_rounds`` and ``max_session_seconds`` are the deployment's caps on a session
    that spans rounds (docs/SESSIONS.md, rule S12): a ``SessionConfig`` allowing more rounds or
    a longer life is refused.
    """

    def __init__(
        self,
        params: Params,
        *,
        journal: str | os.PathLike[str],
        allowed_nodes: Iterable[int] | None = None,
        allow_any_node: bool = False,
        weight_key: str = "num-examples",
        identity: Ed25519SigningKey | None = None,
        pki: Mapping[int, bytes] | None = None,
        stage_timeout: float = DEFAULT_STAGE_TIMEOUT,
        max_session_rounds: int = DEFAULT_MAX_ROUNDS,
        max_session_seconds: int = DEFAULT_MAX_SECONDS,
    ) -> None:
        params = Params.of(params, "SecAggMod")
        if params.active and (identity is None or pki is None):
            raise ConfigurationError(
                "a semi-malicious server model needs this node's identity and the nodes' pki"
            )
        if allowed_nodes is None and pki is not None:
            allowed_nodes = pki.keys()
        if allowed_nodes is None and not allow_any_node:
            raise ConfigurationError(
                "SecAggMod needs the allow-list of node ids (allowed_nodes=...); a simulation "
                "whose nodes are all its own may opt out with allow_any_node=True"
            )
        if allowed_nodes is not None and allow_any_node:
            raise ConfigurationError("give allowed_nodes or allow_any_node=True, not both")
        if allow_any_node:
            log.warning(
                "SecAggMod without an allow-list (allow_any_node=True): any node id the server "
                "names is accepted as a peer; use this only where every node is the app's own"
            )
        if not (isinstance(stage_timeout, int | float) and 0 < stage_timeout < float("inf")):
            raise ConfigurationError(f"stage_timeout must be positive, got {stage_timeout!r}")
        for name, cap in (
            ("max_session_rounds", max_session_rounds),
            ("max_session_seconds", max_session_seconds),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigurationError(f"{name} must be a positive int, got {cap!r}")
        self.params = params
        self.allowed_nodes = None if allowed_nodes is None else frozenset(allowed_nodes)
        self.weight_key = weight_key
        self.journal_folder = Path(journal)
        self.stage_timeout = float(stage_timeout)
        self.max_session_rounds = max_session_rounds
        self.max_session_seconds = max_session_seconds
        self._identity = identity
        self._pki = dict(pki or {})
        self._budget = None if params.dp_plan is None else ClientBudget(params.dp_plan)
        # What makes two mods (a copy Flower unpickled for one message, say) the same node
        # client: they share the process's open session of a journal only if it is equal.
        self._fingerprint = hashlib.sha256(
            repr(
                (
                    params,
                    sorted(self.allowed_nodes or ()),
                    allow_any_node,
                    self.stage_timeout,
                    max_session_rounds,
                    max_session_seconds,
                    None if identity is None else identity.public,
                    sorted(self._pki.items()),
                )
            ).encode()
        ).digest()

    @staticmethod
    def from_node_config(
        *,
        weight_key: str = "num-examples",
        stage_timeout: float | None = None,
        simulation_params: Callable[[Mapping[str, object]], Params] | None = None,
    ) -> NodeConfiguredMod:
        """The mod for Flower's deployment engine: each node's ``Params``, allow-list,
        journal and identity come from its SuperNode's own ``--node-config``
        (``secagg.flower.configured``), never from the run config the server side sets.
        ``simulation_params`` gives a simulated node its ``Params`` where the node's
        environment opts in (``SECAGG_FLOWER_SIMULATION=1``)."""
        from secagg.flower.configured import NodeConfiguredMod

        return NodeConfiguredMod(
            weight_key=weight_key, stage_timeout=stage_timeout, simulation_params=simulation_params
        )

    def __repr__(self) -> str:
        allowed = "any" if self.allowed_nodes is None else str(len(self.allowed_nodes))
        return f"SecAggMod(dim={self.params.dim}, allowed_nodes={allowed})"

    # ----------------------------------------------------------------- the Mod
    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        kind = str(msg.metadata.message_type).split(".", 1)[0]
        if kind != MessageType.TRAIN:
            # Flower's deployment engine runs each message in a process of its own, which
            # takes its deadline timer with it: any message the node gets erases the secrets
            # of a round whose deadline has passed.
            try:
                self.session(ctxt.node_id).expire(time.time())
            except (ConfigurationError, JournalError) as exc:
                log.error("node %d: %s", ctxt.node_id, one_line(str(exc), _DETAIL_CHARS))
            return call_next(msg, ctxt)
        record = msg.content.config_records.get(wire.RECORD_KEY) if msg.has_content() else None
        if record is None:
            log.warning("refused a train message without secure aggregation")
            return Message(
                Error(
                    REFUSED_PLAINTEXT,
                    "secagg: this node trains only inside secure aggregation",
                ),
                reply_to=msg,
            )
        session = self.session(ctxt.node_id)
        try:
            # A round past its deadline is refused by the session itself (and its secrets
            # erased then, or by the timer armed after the last answer).
            data = record.get(wire.MESSAGE)
            message = _peek(data)
            terms = None if message is None else session_terms(message)
            if wire.NODES in record:
                if terms is not None:
                    answer = self._set_up(session, ctxt, record, terms)
                else:
                    answer = self._begin(session, msg, ctxt, record, call_next)
            elif not isinstance(data, bytes):
                raise ClientAbort(
                    AbortReason.MALFORMED_MESSAGE, "the protocol message is not bytes"
                )
            elif message is not None and message.opens_training and not message.OPENS_ROUND:
                # A session's round: the model rides beside the message that opens it.
                answer = self._begin_round(session, msg, ctxt, data, call_next)
            else:
                answer = session.receive(data, time.time())
        except ClientAbort as exc:
            log.warning(
                "node %d leaves the round: %s", ctxt.node_id, one_line(str(exc), _DETAIL_CHARS)
            )
            refusal = ConfigRecord()
            refusal[wire.ABORT] = exc.reason.value
            refusal[wire.DETAIL] = one_line(exc.detail, _DETAIL_CHARS)
            return Message(RecordDict({wire.RECORD_KEY: refusal}), reply_to=msg)
        self._arm_timer(ctxt.node_id, session, answer.deadline)
        return Message(
            RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: answer.data})}),
            reply_to=msg,
        )

    def session(self, node_id: int) -> ClientSession:
        """This node's client session, over its journal in the app's folder: one per journal
        and process (Flower's simulation ships the ClientApp with every message, so each
        message may meet a fresh copy of this mod; its sessions are the process's)."""
        key = (self.journal_path(node_id), self._fingerprint)
        with _PROCESS_LOCK:
            session = _SESSIONS.get(key)
            if session is None:
                path = self.journal_path(node_id)
                try:
                    journal = Journal.open(path)
                except JournalError as exc:
                    raise ConfigurationError(str(exc)) from None
                session = ClientSession(
                    self._scheme_for,
                    journal,
                    self_id=node_id,
                    allowed=self.allowed_nodes,
                    stage_timeout=self.stage_timeout,
                    keep_secrets=True,
                    budget=self._budget,
                    max_session_rounds=self.max_session_rounds,
                    max_session_seconds=self.max_session_seconds,
                )
                # A fresh process (one per message in the deployment engine) first erases
                # what an earlier one left past its deadline.
                session.expire(time.time())
                _SESSIONS[key] = session
            return session

    def journal_path(self, node_id: int) -> Path:
        """The file of a node's journal: ``node-<id>.journal`` in the app's folder, or, where
        the node has an identity, its identity's (a server that calls the node by another id
        finds the same promises, and no pki entry for the new id)."""
        if self._identity is None:
            return self.journal_folder / f"node-{node_id}.journal"
        name = hashlib.sha256(b"secagg/v1/journal\x00" + self._identity.public).hexdigest()
        return self.journal_folder / f"identity-{name[:32]}.journal"

    def _arm_timer(self, node_id: int, session: ClientSession, deadline: float | None) -> None:
        """Forget the round's secrets when its deadline passes, even if no message comes."""
        key = (self.journal_path(node_id), self._fingerprint)
        with _PROCESS_LOCK:
            old = _TIMERS.pop(key, None)
            if old is not None:
                old.cancel()
            if deadline is None:
                return
            timer = threading.Timer(
                max(0.0, deadline - time.time()) + 0.01, lambda: session.expire(time.time())
            )
            timer.daemon = True
            _TIMERS[key] = timer
            timer.start()

    def _scheme_for(self, client_id: int, members: tuple[int, ...] | None) -> Scheme:
        """Masking under the deployment, signing as this node in active mode, with the
        cohort's identity keys by client id (from the pki by node id)."""
        if not self.params.active:
            return MaskingScheme(self.params)
        assert members is not None and self._identity is not None
        missing = [node for node in members if node not in self._pki]
        if missing:
            raise ClientAbort(
                AbortReason.COHORT_NOT_ALLOWED, f"{len(missing)} node(s) without an identity key"
            )
        pki = {i: self._pki[node] for i, node in enumerate(members)}
        return MaskingScheme(self.params, identities={client_id: self._identity}, pki=pki)

    # ----------------------------------------------------------------- a round's first message
    def _begin(
        self,
        session: ClientSession,
        msg: Message,
        ctxt: Context,
        record: ConfigRecord,
        call_next: ClientAppCallable,
    ) -> Answer:
        config_bytes = record.get(wire.MESSAGE)
        if not isinstance(config_bytes, bytes):
            raise ClientAbort(AbortReason.INVALID_CONFIG, "the round configuration is not bytes")
        table_bytes = record.get(wire.NODES)
        try:
            table = wire.decode_nodes(table_bytes)
        except DecodeError as exc:
            raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None
        assert isinstance(table_bytes, bytes)
        try:
            config_round = _round_id_of(config_bytes)
            content = wire.without_record(msg.content, wire.RECORD_KEY)
        except (DecodeError, ConfigurationError) as exc:
            raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None
        self._check_identity(ctxt)
        task = FlowerTask(content, config_round, table_bytes)
        offer = Offer(config_bytes, task, members=table, persona=_persona(ctxt))
        accepted = session.offer(offer, time.time())
        assert task.layout is not None
        log.info(
            "node %d: round %d, cohort %d: accepted as client %d",
            ctxt.node_id,
            accepted.round_id,
            len(table),
            accepted.client_id,
        )
        try:
            update, weight = self._train(msg, ctxt, content, task.layout, accepted, call_next)
        except ClientAbort as exc:
            session.leave(accepted.round_id, exc.reason, exc.detail, time.time())
            raise
        return session.begin(accepted, update, weight, time.time())

    def _check_identity(self, ctxt: Context) -> None:
        if self._identity is not None and self._pki.get(ctxt.node_id) != self._identity.public:
            raise ClientAbort(
                AbortReason.UNKNOWN_ID, "the pki does not give this node id this node's identity"
            )

    # ----------------------------------------------------------------- sessions
    def _set_up(
        self, session: ClientSession, ctxt: Context, record: ConfigRecord, terms: SessionTerms
    ) -> Answer:
        """A session's configuration with its node table: offered as a round's configuration
        is (the session checks it against the deployment, the allow-list and its caps); the
        answer is the set-up's commitment."""
        config_bytes = record.get(wire.MESSAGE)
        table_bytes = record.get(wire.NODES)
        assert isinstance(config_bytes, bytes)
        try:
            table = wire.decode_nodes(table_bytes)
        except DecodeError as exc:
            raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None
        assert isinstance(table_bytes, bytes)
        if terms.binding != wire.session_binding(table_bytes):
            # Client ids are positions in the table: a session bound to another table would
            # give this node's peers other names than the ones it checked.
            raise ClientAbort(
                AbortReason.INVALID_CONFIG, "the session is bound to another node table"
            )
        self._check_identity(ctxt)
        answer = session.offer_session(
            config_bytes, time.time(), members=table, persona=_persona(ctxt)
        )
        log.info(
            "node %d: a session of up to %d rounds, cohort %d: set-up accepted",
            ctxt.node_id,
            terms.max_rounds,
            len(table),
        )
        return answer

    def _begin_round(
        self,
        session: ClientSession,
        msg: Message,
        ctxt: Context,
        opening: bytes,
        call_next: ClientAppCallable,
    ) -> Answer:
        """The message that opens a session's round, beside the strategy's records: offered
        with the task they make, trained, begun (the round's message, journalled before it
        leaves)."""
        try:
            content = wire.without_record(msg.content, wire.RECORD_KEY)
        except ConfigurationError as exc:
            raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None
        task = SessionTask(content)
        try:
            accepted = session.offer_round(opening, task, time.time(), persona=_persona(ctxt))
        except ClientAbort as exc:
            if exc.reason is AbortReason.REPLAYED_ROUND and session.live_session() is not None:
                # Answered before (and still the live session's): the journal's bytes again,
                # nothing new leaves and the app does not train again.
                return session.receive(opening, time.time())
            raise
        assert task.layout is not None
        log.info(
            "node %d: round %d of the session, as client %d",
            ctxt.node_id,
            accepted.round_id,
            accepted.client_id,
        )
        try:
            update, weight = self._train(msg, ctxt, content, task.layout, accepted, call_next)
        except ClientAbort as exc:
            session.leave_session(exc.reason, exc.detail, time.time())
            raise
        return session.begin_round(accepted, update, weight, time.time())

    def _train(
        self,
        msg: Message,
        ctxt: Context,
        task: RecordDict,
        layout: wire.ArrayLayout,
        accepted: Accepted,
        call_next: ClientAppCallable,
    ) -> tuple[NDArray[np.float32], int]:
        """Run the app on exactly the task the session is bound to; its update and weight."""
        msg.content = task  # the app sees what the strategy sent, without the protocol
        try:
            reply = call_next(msg, ctxt)
        except Exception as exc:  # the user's app: its failure ends the round, not the node
            raise ClientAbort(
                AbortReason.UPDATE_FAILED, f"the client app raised {type(exc).__name__}"
            ) from None
        if reply.has_error():
            raise ClientAbort(AbortReason.UPDATE_FAILED, "the client app replied with an error")
        try:
            trained = layout.flatten(wire.single_array_record(reply.content, "the app's reply"))
        except ConfigurationError as exc:
            raise ClientAbort(AbortReason.INVALID_UPDATE, str(exc)) from None
        update = (trained.astype(np.float64) - accepted.model.astype(np.float64)).astype(np.float32)
        return update, self._weight(reply.content)

    def _weight(self, content: RecordDict) -> int:
        found: list[object] = [
            record[self.weight_key]
            for record in content.metric_records.values()
            if self.weight_key in record
        ]
        legacy_record, legacy_key = _LEGACY_WEIGHT
        if not found and legacy_record in content.metric_records:
            found = [content.metric_records[legacy_record].get(legacy_key)]
        if len(found) != 1:
            raise ClientAbort(
                AbortReason.INVALID_UPDATE,
                f"the app's reply must hold one {self.weight_key!r} metric, found {len(found)}",
            )
        value = found[0]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClientAbort(AbortReason.INVALID_UPDATE, f"{self.weight_key!r} is not a number")
        if value != int(value) or not 0 <= value <= self.params.max_weight:
            raise ClientAbort(
                AbortReason.INVALID_UPDATE,
                f"the weight {value!r} is not an integer in [0, {self.params.max_weight}] "
                "(Params.max_weight)",
            )
        return int(value)


def _persona(ctxt: Context) -> bytes:
    """The digest of the node's own configuration (the data it trains on, say), which its
    journal pins at first use: a server side that writes Contexts cannot change it later.
    The ``secagg-*`` keys are left out: they say where the node's own files are, which its
    operator may move (what the files hold is checked every round)."""
    items = sorted(
        (str(k), repr(v)) for k, v in ctxt.node_config.items() if not str(k).startswith("secagg-")
    )
    return hashlib.sha256(repr(items).encode()).digest()


def _peek(data: object) -> ProtocolMessage | None:
    """The protocol message in a record, to route it (None: not one; the session refuses)."""
    if not isinstance(data, bytes):
        return None
    try:
        return decode(data)
    except DecodeError:
        return None


def _round_id_of(config: bytes) -> int:
    """The round id a configuration names (the session checks the rest)."""
    message = decode(config)
    round_id = getattr(message, "round_id", None)
    if not isinstance(round_id, int):
        raise DecodeError(f"a {type(message).__name__} is no round configuration")
    return round_id

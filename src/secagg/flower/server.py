"""The server side: a Flower ``Grid`` that turns every training round into a secure one.

``SecureGrid(grid, params)`` wraps the ``Grid`` a ``ServerApp`` is given. Everything passes
through unchanged except ``send_and_receive`` of ``TRAIN`` messages: those are the strategy
asking a cohort to train, and the wrapper answers them by running one secagg round with
that cohort -- secagg's own ``Server`` state machine, driven stage by stage over Flower's
``send_and_receive`` -- and returning **one** reply that carries the secure aggregate: the
global model plus the weighted mean of the included clients' updates, and as its weight the
sum of their weights. FedAvg (or any strategy that takes a weighted mean of its replies)
averages that single reply into itself, so the strategy's own code runs unchanged::

    grid = SecureGrid(grid, params)            # the one line that changes in a ServerApp
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

The legacy API works the same way: ``DefaultWorkflow()(SecureGrid(grid, params), context)``.

Each stage is one ``send_and_receive`` with ``stage_timeout``: a node that answers with an
error, with a typed refusal (``wire.ABORT``) or not at all by then is dropped and the round
goes on without it, as secagg's ``Server`` decides (it recovers dropouts at every stage and
aborts, revealing nothing, only when fewer than the threshold remain). An aborted round
returns no reply, so the strategy keeps its current model. What each round did is in
``SecureGrid.reports``: each a view, in node ids, of the round engine's ``RoundRecord``
(the bytes are counted into the engine's meter as messages go out and replies come in).

**Sessions that span rounds** (docs/SESSIONS.md, docs/FLOWER_SESSIONS.md), the default: a
cohort that trains round after round is set up once (commit, reveal, advertise, set-up
shares: the set-up's last message carries round 1's task, so round 1 costs as many stages as
a one-shot round), then each round is two stages (three in active mode): the task beside the
strategy's records, answered with the masked input, and the unmask request. A new session
is set up when the sampled cohort changes, the session has run ``session_rounds`` rounds, a
member is left with too few live neighbours (k_min) or the cohort below its minimum, a round
aborted, or no member took a round's task (each refused it or said nothing: their sessions
were not this server's; the set-up then runs in the same training round, since nothing was
revealed). ``session_rounds=0`` runs every round one-shot, as a cohort that changes every
round would anyway. Each report says which kind of round it was (``kind``).

Node ids: the cohort is the strategy's sampled nodes; client id ``i`` is the ``i``-th
smallest node id (``secagg.flower.wire``), and the node table travels with the round's (or
the session's) first message, bound into its task hash (or the session's binding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.errors import ConfigurationError, DropReason, UsageError, one_line
from secagg.flower import wire
from secagg.hazmat.randomness import Randomness, SystemRandomness
from secagg.protocol.runner import RoundKind, RoundOutcome, RoundRecord, RoundRun, RoundServer
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.session.round import SessionRound
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import DEFAULT_MAX_ROUNDS, SessionTerms

try:
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.common.logger import log as flwr_log
    from flwr.serverapp import Grid
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("secagg.flower needs Flower: pip install 'secagg[flower]'") from exc

__all__ = ["SecureGrid", "SecureRoundReport"]

log = logging.getLogger("secagg.flower.server")

# The round engine's one vocabulary of round kinds (RoundKind), by the names this module has
# always given them; the operator's line says them in words.
ONE_SHOT = RoundKind.ONE_SHOT
SESSION_SETUP = RoundKind.SETUP_AND_ROUND
SESSION_ROUND = RoundKind.SESSION
_KIND_WORDS = {SESSION_SETUP: "session set-up and round", SESSION_ROUND: "session round"}

_LEGACY_PARAMETERS = "fitins.parameters"  # the model of a legacy (DefaultWorkflow) fit message
_REASON_CHARS = 200


@dataclass(frozen=True)
class SecureRoundReport:
    """What one secure round did, in Flower's node ids.

    ``included`` are the nodes whose updates are in the aggregate; ``dropped`` maps each
    other node to the stage it was dropped at and why (``DropReason`` values, and
    ``client-aborted: <AbortReason>`` for a node that refused); ``upload_bytes`` and
    ``download_bytes`` are the protocol bytes each node sent and was sent (the encoded
    secagg messages, plus the model once; Flower's own framing is not counted).
    """

    round_id: int
    outcome: RoundOutcome
    abort_reason: str | None
    nodes: tuple[int, ...]
    included: tuple[int, ...]
    dropped: Mapping[int, tuple[str, str]]
    total_weight: int
    degree: int
    threshold: int
    seconds: float
    stage_seconds: Mapping[str, float]
    upload_bytes: Mapping[int, int] = field(repr=False)
    download_bytes: Mapping[int, int] = field(repr=False)
    # One-shot, a session's first round (which runs its set-up) or a later round of a session.
    kind: RoundKind = ONE_SHOT

    def summary(self) -> str:
        """One line for the operator: the outcome, whose updates the aggregate holds, and
        who was dropped where and why."""
        kind = f" ({_KIND_WORDS[self.kind]})" if self.kind in _KIND_WORDS else ""
        head = f"secure round {self.round_id}{kind}: "
        if self.outcome is RoundOutcome.COMPLETED:
            head += (
                f"{len(self.included)} of {len(self.nodes)} nodes' updates in the aggregate "
                "(the strategy receives it as 1 result)"
            )
        else:
            head += f"aborted ({self.abort_reason}), nothing revealed"
        if self.dropped:
            drops = "; ".join(
                f"node {node} at {stage}: {reason}"
                for node, (stage, reason) in sorted(self.dropped.items())
            )
            head += f"; dropped {len(self.dropped)}: {drops}"
        return f"{head}; {self.seconds:.2f} s"

    def to_json(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "outcome": self.outcome,
            "abort_reason": self.abort_reason,
            "nodes": list(self.nodes),
            "included": list(self.included),
            "dropped": {str(n): list(v) for n, v in sorted(self.dropped.items())},
            "total_weight": self.total_weight,
            "degree": self.degree,
            "threshold": self.threshold,
            "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "kind": self.kind.value,
        }


@dataclass(frozen=True)
class _Round:
    """What one training round asks: its cohort (sorted node ids) and their table, the task
    the strategy sent and its digest, the model record, the pki by client id (active mode),
    Flower's group id and the strategy's deadline."""

    nodes: tuple[int, ...]
    table: bytes
    task: RecordDict
    task_digest: bytes
    model: ArrayRecord
    pki: Mapping[int, bytes] | None
    group_id: str
    deadline: float | None


class SecureGrid(Grid):  # type: ignore[misc,unused-ignore]  # flwr is Any without flwr
    """A ``Grid`` whose training rounds are secure aggregation rounds (see the module).

    ``params`` is the deployment, the same the clients' ``SecAggMod`` holds;
    ``stage_timeout`` the seconds each stage waits for the nodes' answers; ``pki`` (active
    mode only) each node's Ed25519 identity public key; ``rng`` the source of round nonces
    (default: the operating system); ``allowed_nodes``, if given, the deployment's node
    ids: the strategy sees only those (``get_node_ids``), so a node outside the nodes'
    allow-lists is never sampled into a cohort that every node would refuse.

    Round ids count up from ``first_round``. A node's journal refuses a round id it already
    took part in (a replay; the ids need not rise), and a node outlives any one ServerApp
    (each ``flwr run`` starts a new one), so by default the first round id is the server's
    clock in microseconds: a later run's ids differ from every earlier run's without the
    server keeping a file. Pass ``first_round`` from a counter of your own to avoid
    depending on the clock.

    ``session_rounds`` (default 100) runs training rounds in sessions of at most that many
    rounds over a stable cohort (see the module); each node refuses a session longer than its
    own caps (``SecAggMod``'s ``max_session_rounds``, 100 by default, and
    ``max_session_seconds``, 7 days), so the server's may only be lower. 0: one-shot rounds.
    """

    def __init__(
        self,
        grid: Grid,
        params: Params,
        *,
        stage_timeout: float = 60.0,
        weight_key: str = "num-examples",
        pki: Mapping[int, bytes] | None = None,
        rng: Randomness | None = None,
        first_round: int | None = None,
        allowed_nodes: Iterable[int] | None = None,
        session_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        if first_round is None:
            first_round = time.time_ns() // 1000
        if isinstance(first_round, bool) or not isinstance(first_round, int) or first_round < 1:
            raise ConfigurationError(f"first_round must be a positive integer, got {first_round!r}")
        params = Params.of(params, "SecureGrid")
        if not stage_timeout > 0:
            raise ConfigurationError("stage_timeout must be a positive number of seconds")
        if params.active and pki is None:
            raise ConfigurationError("a semi-malicious server model needs the nodes' pki")
        if isinstance(session_rounds, bool) or not isinstance(session_rounds, int):
            raise ConfigurationError(f"session_rounds must be an int, got {session_rounds!r}")
        if session_rounds < 0:
            raise ConfigurationError(f"session_rounds must be 0 or more, got {session_rounds}")
        self.session_rounds = session_rounds
        self._session: SessionServer | None = None
        self._session_nodes: tuple[int, ...] = ()
        self._grid = grid
        self.params = params
        self.stage_timeout = float(stage_timeout)
        self.weight_key = weight_key
        self._pki = dict(pki or {})
        self._rng: Randomness = rng if rng is not None else SystemRandomness()
        self._round_id = first_round - 1
        self._allowed = None if allowed_nodes is None else frozenset(allowed_nodes)
        self.reports: list[SecureRoundReport] = []

    # ----------------------------------------------------------------- delegated
    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        delegated: Iterable[int] = self._grid.get_node_ids()
        if self._allowed is None:
            return delegated
        return [node for node in delegated if node in self._allowed]

    def get_nodes(self) -> Iterable[Any]:
        delegated: Iterable[Any] = self._grid.get_nodes()
        if self._allowed is None:
            return delegated
        return [node for node in delegated if getattr(node, "node_id", None) in self._allowed]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        # Pushing bypasses the protocol: a train message pushed here would ask for a
        # plaintext update (which the clients' mod refuses anyway).
        messages = list(messages)
        if any(_is_train(m) for m in messages):
            raise UsageError("train messages go through send_and_receive on a SecureGrid")
        delegated: Iterable[str] = self._grid.push_messages(messages)
        return delegated

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        delegated: Iterable[Message] = self._grid.pull_messages(message_ids)
        return delegated

    # ----------------------------------------------------------------- the secure round
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        train = [m for m in messages if _is_train(m)]
        if not train:
            delegated: Iterable[Message] = self._grid.send_and_receive(messages, timeout=timeout)
            return delegated
        if len(train) != len(messages):
            raise UsageError("send train messages on their own: they run one secure round")
        reply = self._secure_round(train, timeout)
        return [] if reply is None else [reply]

    def _secure_round(self, train: list[Message], timeout: float | None) -> Message | None:
        deadline = None if timeout is None else time.perf_counter() + timeout
        nodes = sorted(m.metadata.dst_node_id for m in train)
        table = wire.encode_nodes(nodes)  # refuses a node sampled twice
        task = train[0].content
        task_digest = wire.content_digest(task)
        if any(wire.content_digest(m.content) != task_digest for m in train[1:]):
            raise UsageError("secure aggregation averages one model: send every node the same")
        model = wire.single_array_record(task, "a train message")
        layout = wire.ArrayLayout.of(model)
        if layout.size != self.params.dim:
            raise ConfigurationError(
                f"the model has {layout.size} floating-point values; Params.dim is "
                f"{self.params.dim}"
            )
        global_vector = layout.flatten(model).astype(np.float64)
        pki = None
        if self.params.active:
            strangers = [n for n in nodes if n not in self._pki]
            if strangers:
                raise ConfigurationError(f"node(s) {strangers[:3]} have no identity key (pki)")
            pki = {i: self._pki[n] for i, n in enumerate(nodes)}
        group_id = train[0].metadata.group_id
        round_ = _Round(tuple(nodes), table, task, task_digest, model, pki, group_id, deadline)
        report, ended = self._run(round_)
        if (
            report.kind == SESSION_ROUND
            and ended.aggregate is None
            and not any(ended.bytes_up.values())
        ):
            # Not one live member took the session's round: each refused its opening or said
            # nothing, so their sessions are not this server's (they left it: a one-shot round
            # or another server's set-up came between, their journal was lost, the session
            # outlived its time). Nothing was revealed and no update entered a sum: the cohort
            # is set up again at once, in this same training round.
            log.info("no member took the session's round: a new session is set up")
            self._session = None
            report, ended = self._run(round_)
        if ended.aggregate is None:
            # A round whose included weights are all zero has no mean either: the engine
            # ends it as an abort, and the strategy gets no reply.
            return None
        aggregate = layout.unflatten(global_vector + ended.aggregate.mean, like=model)
        return Message(self._reply(task, aggregate, report.total_weight), reply_to=train[0])

    def _run(self, round_: _Round) -> tuple[SecureRoundReport, RoundRecord]:
        """One secure round over ``round_``'s cohort (one-shot, or a round of the live
        session, setting one up if needed): its report (kept and logged) and record."""
        nodes, table, task = round_.nodes, round_.table, round_.task
        self._round_id += 1
        round_id = self._round_id
        # Masking as a scheme (quantised, or with distributed DP when Params.dp says so), or a
        # round of a session over the same cohort, driven by the one round engine: this
        # transport only delivers and collects.
        server: RoundServer
        kind: RoundKind
        if self.session_rounds:
            session = self._session_for(nodes, table, round_id, round_.pki)
            server = SessionRound(session, round_.task_digest)
            kind = SESSION_SETUP if server.setup else SESSION_ROUND
            config = session.config
        else:
            kind = ONE_SHOT
            config = self.params.round_config(
                range(len(nodes)),
                nonce=self._rng.bytes(16),
                round_id=round_id,
                task_hash=wire.task_digest(round_id, table, round_.task_digest),
            )
            server = MaskingScheme(self.params, pki=round_.pki).server(config)
        run = RoundRun(server)
        meter = run.meter
        node_of = dict(enumerate(nodes))
        client_of = {n: i for i, n in node_of.items()}
        aborts: dict[int, str] = {}
        model_bytes = sum(len(a.data) for a in round_.model.values())

        for _, outgoing in run.stages():
            out: list[Message] = []
            for cid, message in outgoing.items():
                data = message.encode()
                node = node_of[cid]
                carries_model = message.opens_training
                meter.sent(cid, len(data) + (model_bytes if carries_model else 0))
                opening = ConfigRecord({wire.MESSAGE: data})
                if message.OPENS_ROUND:  # the configuration: with the cohort's node table
                    opening[wire.NODES] = table
                if carries_model:
                    content = RecordDict({**dict(task.items()), wire.RECORD_KEY: opening})
                else:
                    content = RecordDict({wire.RECORD_KEY: opening})
                out.append(
                    Message(
                        content,
                        dst_node_id=node,
                        message_type=MessageType.TRAIN,
                        group_id=round_.group_id,
                        ttl=self.stage_timeout,
                    )
                )
            wait = self.stage_timeout
            if round_.deadline is not None:
                wait = max(0.0, min(wait, round_.deadline - time.perf_counter()))
            replies = self._grid.send_and_receive(out, timeout=wait) if out else []
            for answer in replies:
                node = answer.metadata.src_node_id
                if node not in client_of:
                    continue
                cid = client_of[node]
                if answer.has_error():
                    reason = one_line(str(answer.error.reason or answer.error.code), _REASON_CHARS)
                    server.drop(cid, DropReason.DISCONNECTED, reason)
                    continue
                record = (
                    answer.content.config_records.get(wire.RECORD_KEY)
                    if answer.has_content()
                    else None
                )
                if record is None:
                    server.drop(cid, DropReason.MALFORMED, "no secagg record in the reply")
                elif wire.ABORT in record:
                    reason = one_line(str(record.get(wire.ABORT)), _REASON_CHARS)
                    aborts[node] = reason
                    server.drop(cid, DropReason.CLIENT_ABORTED, reason)
                else:
                    payload = record.get(wire.MESSAGE)
                    if isinstance(payload, bytes):
                        meter.received(cid, len(payload))
                        server.receive(cid, payload)
                    else:
                        server.drop(cid, DropReason.MALFORMED, "the protocol message is not bytes")
        ended = run.record  # the round engine's record: the report is a view of it

        dropped = {
            node_of[d.client_id]: (
                d.stage.value,
                f"client-aborted: {aborts[node_of[d.client_id]]}"
                if node_of[d.client_id] in aborts
                else d.reason.value,
            )
            for d in ended.drops.values()
        }
        total_weight = 0
        if ended.aggregate is not None:
            total_weight = round(ended.aggregate.total_weight)
        report = SecureRoundReport(
            round_id=round_id,
            outcome=ended.outcome,
            abort_reason=None if ended.abort is None else str(ended.abort),
            nodes=tuple(nodes),
            included=tuple(node_of[c] for c in ended.included),
            dropped=dropped,
            total_weight=total_weight,
            degree=config.degree,
            threshold=config.threshold,
            seconds=ended.seconds,
            stage_seconds={s.value: t for s, t in ended.stage_seconds.items()},
            upload_bytes={n: ended.bytes_up.get(c, 0) for c, n in node_of.items()},
            download_bytes={n: ended.bytes_down.get(c, 0) for c, n in node_of.items()},
            kind=kind,
        )
        self.reports.append(report)
        # In Flower's own log, where a Flower user reads it: the strategy's next line says it
        # "received 1 result" (the one secure aggregate), so this one says whose it holds.
        flwr_log(logging.INFO, "%s", report.summary())
        return report, ended

    def _session_for(
        self,
        nodes: tuple[int, ...],
        table: bytes,
        round_id: int,
        pki: Mapping[int, bytes] | None,
    ) -> SessionServer:
        """The live session if it can run this cohort's next round, else a new one."""
        session = self._session
        if (
            session is not None
            and self._session_nodes == nodes
            and session.ended is None
            and session.needs_setup() is None
        ):
            return session
        if session is not None:
            why = session.ended or session.needs_setup() or "the sampled cohort changed"
            log.info("a new session is set up: %s", why)
        config = self.params.round_config(
            range(len(nodes)), nonce=self._rng.bytes(16), round_id=round_id
        )
        terms = SessionTerms.carrying(
            config, max_rounds=self.session_rounds, binding=wire.session_binding(table)
        )
        session = MaskingScheme(self.params, pki=pki).session_server(terms)
        self._session, self._session_nodes = session, nodes
        return session

    def _reply(self, task: RecordDict, aggregate: ArrayRecord, weight: int) -> RecordDict:
        """The one reply the strategy aggregates, in the shape its own clients' take."""
        if _LEGACY_PARAMETERS in task.array_records:
            # A legacy FitRes (flwr.compat's layout): parameters, example count, status.
            return RecordDict(
                {
                    "fitres.parameters": aggregate,
                    "fitres.num_examples": MetricRecord({"num_examples": weight}),
                    "fitres.metrics": ConfigRecord({}),
                    "fitres.status": ConfigRecord({"code": 0, "message": "secure aggregate"}),
                }
            )
        return RecordDict({"arrays": aggregate, "metrics": MetricRecord({self.weight_key: weight})})


def _is_train(message: Message) -> bool:
    return bool(str(message.metadata.message_type).split(".", 1)[0] == MessageType.TRAIN)

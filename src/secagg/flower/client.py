"""The client side: a Flower mod that answers secagg's protocol and trains only inside it.

``SecAggMod(params, ...)`` is a Flower ``Mod``: put it in a ``ClientApp``'s ``mods`` and
every ``TRAIN`` message goes through it. The mod is built by the client app from its own
deployment (the ``Params``, the allowed nodes, the weight key); nothing in it is taken from
the server. For each round it checks, exactly as ``secagg join`` does (``secagg.service
.client``):

1. the round configuration against the deployment (``ClientPolicy``: server model,
   protocol, dimension, quantiser, ring, minimum cohort, graph), for a round id after every
   round this node took part in, and the node table (``secagg.flower.wire``): canonical,
   holding this node, and every node on the allow-list;
2. the task: the model and training config it was sent must be the ones the round's task
   hash names (so the ones its session is bound to), the model one ``ArrayRecord`` of
   finite values of the deployment's dimension;
3. the update: the app's reply must hold arrays of the model's layout with finite values and
   an integer weight (``weight_key``, FedAvg's ``num-examples``) in ``[0, max_weight]``.

Only then does the app train (``call_next``), once, on the first message of the round; the
update is the difference between the arrays it returns and the global model, so what is
clipped and quantised is the small update, not the weights. Every later message of the round
is answered by the sans-I/O ``Client`` alone; the app is never called again for it. The only
vector that leaves the node is the masked input. A ``TRAIN`` message that does not carry the
protocol is refused with an error reply: this deployment has no plaintext path.

Between messages Flower may run the mod in another process (a simulation actor, or a fresh
``flwr-clientapp`` process per message in deployment), so the round's state lives in the
node's ``Context`` (``ctxt.state``, which stays on the node) as a 32-byte seed, the
round's configuration and update, and the server messages answered so far. The ``Client``
is rebuilt for each message by replaying them with ``DeterministicRandomness(seed)``; the
seed is fresh from the operating system for every round, so replay reproduces the same keys
and shares, and nothing else does. The cost is that each message repeats the work of the
earlier ones (the masking once more at the unmask stage).

Any refusal is a typed ``ClientAbort``: the mod logs it, forgets the round, and answers the
server with the reason (``wire.ABORT``) so the server drops this node at once instead of
waiting for a timeout.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import AbortReason, ClientAbort, ConfigurationError, DecodeError, InputError
from secagg.flower import wire
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness, SystemRandomness
from secagg.params import Params
from secagg.policy import ClientPolicy
from secagg.protocol.client import Client
from secagg.protocol.messages import Message as ProtocolMessage
from secagg.protocol.messages import RoundConfig, UnmaskResponse
from secagg.schemes.masking import MaskingScheme

try:
    from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("secagg.flower needs Flower: pip install 'secagg[flower]'") from exc

__all__ = ["REFUSED_PLAINTEXT", "STATE_KEY", "SecAggMod"]

# The ClientApp callable a mod wraps: (message, context) -> reply.
ClientAppCallable: TypeAlias = Callable[[Message, Context], Message]
_T = TypeVar("_T")

log = logging.getLogger("secagg.flower.client")

STATE_KEY = "secagg.state"  # the ConfigRecord in ctxt.state holding this node's round state
_LAST_ROUND = "last-round"
_ROUND_FIELDS = ("config", "nodes", "client-id", "seed", "update", "weight", "transcript")
_SEED_BYTES = 32
_DETAIL_CHARS = 200
# Error code of the reply to a TRAIN message without the protocol (Flower's own codes are
# small integers; this one is ours and says "refused by secagg").
REFUSED_PLAINTEXT = 5301
# Flower's legacy (NumPyClient) replies keep the example count here.
_LEGACY_WEIGHT = ("fitres.num_examples", "num_examples")


@dataclass(frozen=True)
class _RoundState:
    """What this node keeps between the messages of one round (in its own Context)."""

    config: bytes
    nodes: bytes  # the node table: the cohort's Flower node ids, client id i at index i
    client_id: int
    seed: bytes  # the round's secret: with the transcript it reproduces every key and share
    update: bytes  # float32, little-endian
    weight: int
    transcript: tuple[bytes, ...]  # the server messages answered after the commitment


class SecAggMod:
    """A Flower ``Mod`` running secagg's secure aggregation for every ``TRAIN`` message.

    ``params`` is this client's deployment (the same ``Params`` the server uses).
    ``allowed_nodes`` is the allow-list of Flower node ids (``None``: any node, for a
    simulation where every node is ours); in active mode (``params.server_model`` is
    semi-malicious) ``identity`` is this node's long-term Ed25519 key and ``pki`` maps
    node ids to their identity public keys (and defaults the allow-list to its keys).
    ``weight_key`` names the entry of the app's ``MetricRecord`` that weights its update
    (FedAvg's ``num-examples``; a legacy ``NumPyClient``'s example count is found too).
    """

    def __init__(
        self,
        params: Params,
        *,
        allowed_nodes: Iterable[int] | None = None,
        weight_key: str = "num-examples",
        identity: Ed25519SigningKey | None = None,
        pki: Mapping[int, bytes] | None = None,
    ) -> None:
        if not isinstance(params, Params):
            raise ConfigurationError(f"params must be a secagg Params, got {type(params)}")
        if params.active and (identity is None or pki is None):
            raise ConfigurationError(
                "a semi-malicious server model needs this node's identity and the nodes' pki"
            )
        self.params = params
        if allowed_nodes is None and pki is not None:
            allowed_nodes = pki.keys()
        self.allowed_nodes = None if allowed_nodes is None else frozenset(allowed_nodes)
        self.weight_key = weight_key
        self._identity = identity
        self._pki = dict(pki or {})

    def __repr__(self) -> str:
        allowed = "any" if self.allowed_nodes is None else str(len(self.allowed_nodes))
        return f"SecAggMod(dim={self.params.dim}, allowed_nodes={allowed})"

    # ----------------------------------------------------------------- the Mod
    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        kind = str(msg.metadata.message_type).split(".", 1)[0]
        if kind != MessageType.TRAIN:
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
        try:
            if wire.NODES in record:
                answer = self._begin(msg, ctxt, record, call_next)
            else:
                answer = self._continue(ctxt, record)
        except ClientAbort as exc:
            self._forget_round(ctxt)
            log.warning("node %d leaves the round: %s", ctxt.node_id, _one_line(str(exc)))
            refusal = ConfigRecord()
            refusal[wire.ABORT] = exc.reason.value
            refusal[wire.DETAIL] = _one_line(exc.detail)
            return Message(RecordDict({wire.RECORD_KEY: refusal}), reply_to=msg)
        return Message(
            RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: answer.encode()})}),
            reply_to=msg,
        )

    # ----------------------------------------------------------------- a round's first message
    def _begin(
        self, msg: Message, ctxt: Context, record: ConfigRecord, call_next: ClientAppCallable
    ) -> ProtocolMessage:
        # A new round ends whatever this node was doing in an earlier one.
        self._forget_round(ctxt)
        config = _decode_config(record.get(wire.MESSAGE))
        table_bytes = record.get(wire.NODES)
        if not isinstance(table_bytes, bytes):
            raise ClientAbort(AbortReason.INVALID_CONFIG, "the node table is not bytes")
        try:
            table = wire.decode_nodes(table_bytes)
        except DecodeError as exc:
            raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None
        last_text = self._state(ctxt).get(_LAST_ROUND)
        last = int(last_text) if isinstance(last_text, str) and last_text.isdigit() else None
        if last is not None and config.round_id <= last:
            raise ClientAbort(
                AbortReason.REPLAYED_ROUND, f"round {config.round_id} is not after round {last}"
            )
        client_id = self._check_cohort(config, table, ctxt.node_id)
        task = wire.without_record(msg.content, wire.RECORD_KEY)
        expected = wire.task_digest(config.round_id, table_bytes, wire.content_digest(task))
        if expected != config.task_hash:
            # The session is bound to another model (or config, or cohort): never train this.
            raise ClientAbort(AbortReason.MODEL_MISMATCH, "the task is not the session's")
        try:
            model = wire.single_array_record(task, "the train message")
            layout = wire.ArrayLayout.of(model)
            global_vector = layout.flatten(model)
        except ConfigurationError as exc:
            raise ClientAbort(AbortReason.INVALID_MODEL, str(exc)) from None
        if layout.size != config.dim:
            raise ClientAbort(
                AbortReason.INVALID_MODEL,
                f"the model has {layout.size} values; the deployment's dim is {config.dim}",
            )
        # This round id is spent from here on, whatever happens next.
        self._state(ctxt)[_LAST_ROUND] = str(config.round_id)  # a u64: beyond a ConfigRecord int
        update, weight = self._train(msg, ctxt, task, layout, global_vector, call_next)
        seed = SystemRandomness().bytes(_SEED_BYTES)
        state = _RoundState(
            config=config.encode(),
            nodes=table_bytes,
            client_id=client_id,
            seed=seed,
            update=np.ascontiguousarray(update, dtype="<f4").tobytes(),
            weight=weight,
            transcript=(),
        )
        client = self._client(config, state)
        try:
            client.set_input(update, weight)
        except InputError as exc:
            raise ClientAbort(AbortReason.INVALID_UPDATE, str(exc)) from None
        commitment = client.start()
        self._save_round(ctxt, state)
        log.info(
            "node %d: round %d, server model %s, %s k=%d t=%d, cohort %d, min cohort %d: "
            "accepted as client %d",
            ctxt.node_id,
            config.round_id,
            config.server_model,
            config.protocol,
            config.degree,
            config.threshold,
            len(config.client_ids),
            config.min_cohort,
            client_id,
        )
        return commitment

    def _check_cohort(self, config: RoundConfig, table: tuple[int, ...], node_id: int) -> int:
        """This node's client id in the round, after checking the cohort against the
        deployment (the policy sees the allow-list translated into client ids)."""
        if config.client_ids != tuple(range(len(table))):
            raise ClientAbort(
                AbortReason.INVALID_CONFIG, "the cohort is not the node table's 0..n-1"
            )
        if node_id not in table:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "this node is not in the cohort")
        client_id = table.index(node_id)
        allowed = (
            None
            if self.allowed_nodes is None
            else frozenset(i for i, node in enumerate(table) if node in self.allowed_nodes)
        )
        ClientPolicy(self.params, allowed).check(config, client_id)
        return client_id

    def _train(
        self,
        msg: Message,
        ctxt: Context,
        task: RecordDict,
        layout: wire.ArrayLayout,
        global_vector: NDArray[np.float32],
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
        update = (trained.astype(np.float64) - global_vector.astype(np.float64)).astype(np.float32)
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

    # ----------------------------------------------------------------- later messages
    def _continue(self, ctxt: Context, record: ConfigRecord) -> ProtocolMessage:
        state = self._load_round(ctxt)
        if state is None:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "no round is in progress here")
        data = record.get(wire.MESSAGE)
        if not isinstance(data, bytes):
            raise ClientAbort(AbortReason.MALFORMED_MESSAGE, "the protocol message is not bytes")
        try:
            config = RoundConfig.decode(state.config)
            client = self._client(config, state)
            client.set_input(np.frombuffer(state.update, dtype="<f4"), state.weight)
            client.start()
            for earlier in state.transcript:  # replays what this node already answered
                client.receive(earlier)
            answer = client.receive(data)
        except ClientAbort:
            raise
        except Exception as exc:  # a bug on our side must not crash the node either
            raise ClientAbort(AbortReason.MALFORMED_MESSAGE, type(exc).__name__) from None
        if isinstance(answer, UnmaskResponse):
            self._forget_round(ctxt)  # the node's part is done: drop every secret
            log.info("node %d: round %d answered to the end", ctxt.node_id, config.round_id)
        else:
            self._save_round(
                ctxt,
                _RoundState(
                    state.config,
                    state.nodes,
                    state.client_id,
                    state.seed,
                    state.update,
                    state.weight,
                    (*state.transcript, data),
                ),
            )
        return answer

    def _client(self, config: RoundConfig, state: _RoundState) -> Client:
        pki = None
        if config.active:
            table = wire.decode_nodes(state.nodes)
            pki = {i: self._pki[node] for i, node in enumerate(table) if node in self._pki}
            missing = len(table) - len(pki)
            if missing:
                raise ClientAbort(
                    AbortReason.COHORT_NOT_ALLOWED, f"{missing} node(s) without an identity key"
                )
        # Masking as a scheme: the client gets the deployment's encoding (quantised, or
        # distributed DP when Params.dp says so) exactly as ``secagg join`` does.
        identities = {state.client_id: self._identity} if config.active and self._identity else {}
        scheme = MaskingScheme(self.params, identities=identities, pki=pki)
        return scheme.client(config, state.client_id, DeterministicRandomness(state.seed))

    # ----------------------------------------------------------------- the node's state
    @staticmethod
    def _state(ctxt: Context) -> ConfigRecord:
        records = ctxt.state.config_records
        if STATE_KEY not in records:
            records[STATE_KEY] = ConfigRecord()
        record = records[STATE_KEY]
        assert isinstance(record, ConfigRecord)
        return record

    def _save_round(self, ctxt: Context, state: _RoundState) -> None:
        record = self._state(ctxt)
        record["config"] = state.config
        record["nodes"] = state.nodes
        record["client-id"] = state.client_id
        record["seed"] = state.seed
        record["update"] = state.update
        record["weight"] = state.weight
        record["transcript"] = _join(state.transcript)

    def _load_round(self, ctxt: Context) -> _RoundState | None:
        record = self._state(ctxt)
        if any(name not in record for name in _ROUND_FIELDS):
            return None
        try:
            return _RoundState(
                config=_typed(record["config"], bytes),
                nodes=_typed(record["nodes"], bytes),
                client_id=_typed(record["client-id"], int),
                seed=_typed(record["seed"], bytes),
                update=_typed(record["update"], bytes),
                weight=_typed(record["weight"], int),
                transcript=_split(_typed(record["transcript"], bytes)),
            )
        except DecodeError:
            return None

    def _forget_round(self, ctxt: Context) -> None:
        record = self._state(ctxt)
        for name in _ROUND_FIELDS:
            if name in record:
                del record[name]


def _decode_config(data: object) -> RoundConfig:
    if not isinstance(data, bytes):
        raise ClientAbort(AbortReason.INVALID_CONFIG, "the round configuration is not bytes")
    try:
        return RoundConfig.decode(data)
    except DecodeError as exc:
        raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DecodeError(f"state field is {type(value).__name__}, not {kind.__name__}")
    return value


def _join(parts: tuple[bytes, ...]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _split(data: bytes) -> tuple[bytes, ...]:
    parts: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise DecodeError("truncated transcript")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise DecodeError("truncated transcript")
        parts.append(data[offset : offset + length])
        offset += length
    return tuple(parts)


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:_DETAIL_CHARS]

"""SecAggMod: a node trains only inside a round its own deployment accepts.

The tests play a server that lies: each builds the first message of a round as
``SecureGrid`` would, changes one claim, and hands it to a real ``ClientApp`` carrying the
mod. The node must refuse with the typed reason, before training (the app is never called),
and answer with the refusal rather than raise.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from secagg import Params
from secagg.errors import AbortReason, ConfigurationError
from secagg.flower import REFUSED_PLAINTEXT, STATE_KEY, SecAggMod, wire
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.messages import Commitment, RoundConfig
from tests.flower.helpers import PARAMS, client_app, model, node_ids, secagg_record, task

NODES = node_ids(5)
ME = next(iter(NODES))  # the node under test
STRANGER = max(n for n in NODES if n != ME)  # a cohort member some deployments do not allow


def context(node: int = ME) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={"partition-id": NODES.get(node, 0), "num-partitions": len(NODES)},
        state=RecordDict(),
        run_config={},
    )


def first_message(
    *,
    params: Params = PARAMS,
    nodes: list[int] | None = None,
    table: bytes | None = None,
    round_id: int = 1,
    bound_to: RecordDict | None = None,
    sent: RecordDict | None = None,
    config_bytes: bytes | None = None,
) -> Message:
    """A round's first message to ME; by default exactly what SecureGrid sends."""
    cohort = sorted(NODES) if nodes is None else nodes
    table = wire.encode_nodes(cohort) if table is None else table
    sent = task() if sent is None else sent
    bound = sent if bound_to is None else bound_to
    config = params.round_config(
        range(len(cohort)),
        nonce=DeterministicRandomness(b"secagg/tests/flower/nonce").bytes(16),
        round_id=round_id,
        task_hash=wire.task_digest(round_id, table, wire.content_digest(bound)),
    )
    record = ConfigRecord(
        {wire.MESSAGE: config.encode() if config_bytes is None else config_bytes, wire.NODES: table}
    )
    return Message(
        RecordDict({**dict(sent.items()), wire.RECORD_KEY: record}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )


def answer(mod: SecAggMod, message: Message, ctxt: Context, trained: list[int]) -> Message:
    return client_app([mod], trained)(message, ctxt)


def refusal(reply: Message) -> str:
    record = secagg_record(reply)
    assert wire.MESSAGE not in record
    return str(record[wire.ABORT])


def test_an_honest_first_message_is_answered_with_a_commitment_after_training_once() -> None:
    trained: list[int] = []
    reply = answer(SecAggMod(PARAMS), first_message(), context(), trained)
    commitment = Commitment.decode(secagg_record(reply)[wire.MESSAGE])
    assert commitment.client_id == sorted(NODES).index(ME)
    assert trained == [NODES[ME]]


def test_a_train_message_without_the_protocol_is_refused_and_never_trained() -> None:
    trained: list[int] = []
    plain = Message(task(), dst_node_id=ME, message_type=MessageType.TRAIN)
    reply = answer(SecAggMod(PARAMS), plain, context(), trained)
    assert reply.has_error()
    assert reply.error.code == REFUSED_PLAINTEXT
    assert trained == []


def _other_params() -> Params:
    return Params(dim=PARAMS.dim, max_clients=8, clip=4.0, value_bits=16, max_weight=100)


LIES: dict[str, tuple[Callable[[], Message], AbortReason, SecAggMod]] = {
    "a wider clip range": (
        lambda: first_message(params=_other_params()),
        AbortReason.PARAMETER_MISMATCH,
        SecAggMod(PARAMS),
    ),
    "a node the deployment does not allow": (
        first_message,
        AbortReason.COHORT_NOT_ALLOWED,
        SecAggMod(PARAMS, allowed_nodes=[n for n in NODES if n != STRANGER]),
    ),
    "a cohort without this node": (
        lambda: first_message(nodes=[n for n in sorted(NODES) if n != ME] + [1]),
        AbortReason.UNKNOWN_ID,
        SecAggMod(PARAMS),
    ),
    "a node table out of order": (
        lambda: first_message(table=b"".join(n.to_bytes(8, "big") for n in sorted(NODES)[::-1])),
        AbortReason.INVALID_CONFIG,
        SecAggMod(PARAMS),
    ),
    "a model other than the one the session is bound to": (
        lambda: first_message(bound_to=task(server_round=2)),
        AbortReason.MODEL_MISMATCH,
        SecAggMod(PARAMS),
    ),
    "a configuration that does not decode": (
        lambda: first_message(config_bytes=b"junk"),
        AbortReason.INVALID_CONFIG,
        SecAggMod(PARAMS),
    ),
    "a model of another size": (
        lambda: first_message(
            sent=task(arrays=ArrayRecord({"w": model()["w"]})),
            params=Params(dim=4, max_clients=8, clip=1.0, max_weight=100),
        ),
        AbortReason.PARAMETER_MISMATCH,
        SecAggMod(PARAMS),
    ),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_first_message_is_refused_before_training(lie: str) -> None:
    build, reason, mod = LIES[lie]
    trained: list[int] = []
    ctxt = context()
    reply = answer(mod, build(), ctxt, trained)
    assert refusal(reply) == reason.value
    assert trained == []
    assert "seed" not in ctxt.state.config_records.get(STATE_KEY, {})


def test_a_round_id_that_is_not_after_the_last_one_is_refused() -> None:
    trained: list[int] = []
    mod, ctxt = SecAggMod(PARAMS), context()
    answer(mod, first_message(round_id=5), ctxt, trained)
    reply = answer(mod, first_message(round_id=5), ctxt, trained)
    assert refusal(reply) == AbortReason.REPLAYED_ROUND.value
    reply = answer(mod, first_message(round_id=4), ctxt, trained)
    assert refusal(reply) == AbortReason.REPLAYED_ROUND.value
    assert len(trained) == 1


def test_an_update_whose_weight_exceeds_the_deployment_is_refused() -> None:
    trained: list[int] = []
    app = client_app([SecAggMod(PARAMS)], trained, bad_weight=PARAMS.max_weight + 1)
    reply = app(first_message(), context())
    assert refusal(reply) == AbortReason.INVALID_UPDATE.value


def test_a_protocol_message_outside_any_round_is_refused() -> None:
    stray = Message(
        RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: b"anything"})}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    reply = answer(SecAggMod(PARAMS), stray, context(), [])
    assert refusal(reply) == AbortReason.UNEXPECTED_MESSAGE.value


def test_junk_in_the_middle_of_a_round_ends_it_with_a_typed_refusal() -> None:
    mod, ctxt = SecAggMod(PARAMS), context()
    answer(mod, first_message(), ctxt, [])
    junk = Message(
        RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: b"\x00" * 40})}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    reply = answer(mod, junk, ctxt, [])
    assert refusal(reply) == AbortReason.MALFORMED_MESSAGE.value
    assert set(ctxt.state.config_records[STATE_KEY]) == {"last-round"}  # secrets forgotten


def test_an_active_deployment_needs_its_identity() -> None:
    active = Params(dim=6, max_clients=8, server_model="semi-malicious")
    with pytest.raises(ConfigurationError, match="identity"):
        SecAggMod(active)


def test_the_round_config_the_node_accepted_is_the_one_it_was_sent() -> None:
    message = first_message()
    sent = RoundConfig.decode(secagg_record(message)[wire.MESSAGE])
    ctxt = context()
    answer(SecAggMod(PARAMS), message, ctxt, [])
    kept = ctxt.state.config_records[STATE_KEY]["config"]
    assert isinstance(kept, bytes)
    assert RoundConfig.decode(kept) == sent

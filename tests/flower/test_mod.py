"""SecAggMod: a node trains only inside a round its own deployment accepts.

The tests play a server that lies: each builds the first message of a round as
``SecureGrid`` would, changes one claim, and hands it to a real ``ClientApp`` carrying the
mod. The node must refuse with the typed reason, before training (the app is never called),
and answer with the refusal rather than raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from secagg import Params
from secagg.errors import AbortReason, ConfigurationError
from secagg.flower import REFUSED_PLAINTEXT, SecAggMod, wire
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.schemes.masking.messages import Commitment, RoundConfig
from tests.flower.helpers import (
    PARAMS,
    client_app,
    model,
    node_ids,
    secagg_mod,
    secagg_record,
    task,
)
from tests.waiting import wait_until

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
    reply = answer(secagg_mod(PARAMS), first_message(), context(), trained)
    commitment = Commitment.decode(secagg_record(reply)[wire.MESSAGE])
    assert commitment.client_id == sorted(NODES).index(ME)
    assert trained == [NODES[ME]]


def test_a_train_message_without_the_protocol_is_refused_and_never_trained() -> None:
    trained: list[int] = []
    plain = Message(task(), dst_node_id=ME, message_type=MessageType.TRAIN)
    reply = answer(secagg_mod(PARAMS), plain, context(), trained)
    assert reply.has_error()
    assert reply.error.code == REFUSED_PLAINTEXT
    assert trained == []


def _other_params() -> Params:
    return Params(dim=PARAMS.dim, max_clients=8, clip=4.0, value_bits=16, max_weight=100)


LIES: dict[str, tuple[Callable[[], Message], AbortReason, SecAggMod]] = {
    "a wider clip range": (
        lambda: first_message(params=_other_params()),
        AbortReason.PARAMETER_MISMATCH,
        secagg_mod(PARAMS),
    ),
    "a node the deployment does not allow": (
        first_message,
        AbortReason.COHORT_NOT_ALLOWED,
        secagg_mod(PARAMS, allowed_nodes=[n for n in NODES if n != STRANGER]),
    ),
    "a cohort without this node": (
        lambda: first_message(nodes=[n for n in sorted(NODES) if n != ME] + [1]),
        AbortReason.UNKNOWN_ID,
        secagg_mod(PARAMS),
    ),
    "a node table out of order": (
        lambda: first_message(table=b"".join(n.to_bytes(8, "big") for n in sorted(NODES)[::-1])),
        AbortReason.INVALID_CONFIG,
        secagg_mod(PARAMS),
    ),
    "a model other than the one the session is bound to": (
        lambda: first_message(bound_to=task(server_round=2)),
        AbortReason.MODEL_MISMATCH,
        secagg_mod(PARAMS),
    ),
    "a configuration that does not decode": (
        lambda: first_message(config_bytes=b"junk"),
        AbortReason.INVALID_CONFIG,
        secagg_mod(PARAMS),
    ),
    "a model of another size": (
        lambda: first_message(
            sent=task(arrays=ArrayRecord({"w": model()["w"]})),
            params=Params(dim=4, max_clients=8, clip=1.0, max_weight=100),
        ),
        AbortReason.PARAMETER_MISMATCH,
        secagg_mod(PARAMS),
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
    assert len(ctxt.state.config_records) == 0  # nothing of a round lives in the Context
    assert mod.session(ME).journal.rounds() == []  # a refused task promised nothing


def test_a_round_id_the_node_took_part_in_is_refused_and_no_id_locks_it_out() -> None:
    trained: list[int] = []
    mod, ctxt = secagg_mod(PARAMS), context()
    answer(mod, first_message(round_id=2**64 - 1), ctxt, trained)
    reply = answer(mod, first_message(round_id=2**64 - 1), ctxt, trained)
    assert refusal(reply) == AbortReason.REPLAYED_ROUND.value
    # Freshness comes from the journal, not from the largest id ever seen.
    reply = answer(mod, first_message(round_id=4, sent=task(server_round=4)), ctxt, trained)
    assert wire.MESSAGE in secagg_record(reply)
    assert len(trained) == 2


def test_an_update_whose_weight_exceeds_the_deployment_is_refused() -> None:
    trained: list[int] = []
    app = client_app([secagg_mod(PARAMS)], trained, bad_weight=PARAMS.max_weight + 1)
    reply = app(first_message(), context())
    assert refusal(reply) == AbortReason.INVALID_UPDATE.value


def test_a_protocol_message_outside_any_round_is_refused() -> None:
    stray = Message(
        RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: b"anything"})}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    reply = answer(secagg_mod(PARAMS), stray, context(), [])
    assert refusal(reply) == AbortReason.ROUND_CLOSED.value


def test_junk_in_the_middle_of_a_round_ends_it_with_a_typed_refusal() -> None:
    mod, ctxt = secagg_mod(PARAMS), context()
    answer(mod, first_message(), ctxt, [])
    junk = Message(
        RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: b"\x00" * 40})}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    reply = answer(mod, junk, ctxt, [])
    assert refusal(reply) == AbortReason.MALFORMED_MESSAGE.value
    (entry,) = mod.session(ME).journal.rounds()
    assert not entry.live
    with mod.session(ME).journal.transaction() as txn:
        assert txn.secrets(entry.round_id) is None  # secrets forgotten


def test_an_active_deployment_needs_its_identity() -> None:
    active = Params(dim=6, max_clients=8, server_model="semi-malicious")
    with pytest.raises(ConfigurationError, match="identity"):
        SecAggMod(active, journal="unused", allowed_nodes=list(NODES))


def test_a_mod_without_an_allow_list_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="allow_any_node=True"):
        SecAggMod(PARAMS, journal="unused")


def test_the_round_config_the_node_accepted_is_the_one_it_was_sent() -> None:
    message = first_message()
    sent = RoundConfig.decode(secagg_record(message)[wire.MESSAGE])
    ctxt = context()
    mod = secagg_mod(PARAMS)
    answer(mod, message, ctxt, [])
    with mod.session(ME).journal.transaction() as txn:
        (opening, _) = txn.exchanges(sent.round_id)[0], None
    assert RoundConfig.decode(opening.request) == sent


def test_a_node_whose_configuration_changes_under_it_is_refused_before_training() -> None:
    """The ServerApp side writes Contexts in simulation: handing a node another partition
    (say the victim's, to every node) after its first round is refused."""
    trained: list[int] = []
    mod = secagg_mod(PARAMS)
    answer(mod, first_message(round_id=1), context(), trained)
    swapped = context()
    swapped.node_config["partition-id"] = 0 if NODES[ME] != 0 else 1
    reply = answer(mod, first_message(round_id=2, sent=task(server_round=2)), swapped, trained)
    assert refusal(reply) == AbortReason.INVALID_CONFIG.value
    assert len(trained) == 1


def test_an_active_node_refuses_an_id_the_pki_does_not_give_its_identity() -> None:
    """A server that calls a node by another id would otherwise reach a fresh journal."""
    active = Params(dim=6, max_clients=8, clip=1.0, max_weight=100, server_model="semi-malicious")
    keys = {n: Ed25519SigningKey.generate(DeterministicRandomness(n.to_bytes(32))) for n in NODES}
    pki = {n: key.public for n, key in keys.items()}
    mod = secagg_mod(active, identity=keys[STRANGER], pki=pki)
    trained: list[int] = []
    reply = answer(mod, first_message(params=active), context(ME), trained)
    assert refusal(reply) == AbortReason.UNKNOWN_ID.value
    assert trained == []


def test_a_silent_server_loses_the_round_and_its_secrets_at_the_deadline() -> None:
    """The mod's deadline timer erases the round's seed and update even if no message comes;
    the server's next message is then refused."""
    mod, ctxt = secagg_mod(PARAMS, stage_timeout=0.05), context()
    first = answer(mod, first_message(), ctxt, [])
    assert wire.MESSAGE in secagg_record(first)
    journal = mod.session(ME).journal

    def erased() -> bool:
        with journal.transaction() as txn:
            return txn.secrets(1) is None

    # The timer's thread, however busy the machine.
    wait_until(erased, "the deadline timer to erase the round's secrets", interval=0.1)
    (entry,) = journal.rounds()
    assert not entry.live and entry.outcome is not None and entry.outcome.startswith("expired")
    late = Message(
        RecordDict({wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: b"\x00" * 40})}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    assert refusal(answer(mod, late, ctxt, [])) == AbortReason.ROUND_CLOSED.value


def test_a_process_that_outlived_its_timer_erases_an_expired_round_at_the_next_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower's deployment engine runs each message in a process that exits after it, taking
    the deadline timer along: the next message of any kind, in whatever process, erases the
    secrets of a round whose deadline passed."""
    from secagg.flower import client as flower_client

    mod, ctxt = secagg_mod(PARAMS, stage_timeout=30.0), context()
    answer(mod, first_message(), ctxt, [])
    for timer in flower_client._TIMERS.values():  # the process that armed it is gone
        timer.cancel()
    journal = mod.session(ME).journal
    with journal.transaction() as txn:
        assert txn.secrets(1) is not None
    (entry,) = journal.rounds()
    assert entry.deadline is not None
    later = entry.deadline + 1.0  # a second past the round's deadline, read from its journal
    monkeypatch.setattr(time, "time", lambda: later)
    query = Message(RecordDict(), dst_node_id=ME, message_type=MessageType.QUERY)
    app = client_app([mod], [])

    @app.query()
    def reply(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    app(query, ctxt)
    with journal.transaction() as txn:
        assert txn.secrets(1) is None
    (entry,) = journal.rounds()
    assert entry.outcome is not None and entry.outcome.startswith("expired")

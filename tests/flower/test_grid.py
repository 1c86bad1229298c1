"""SecureGrid: a strategy's training round becomes one secagg round, in Flower messages.

One-shot rounds here (``session_rounds=0``: every round its own set-up); rounds of a session
that spans rounds are ``test_session_mod.py``'s.

Real ``SecAggMod`` clients in real ``ClientApp``s, reached through ``LoopbackGrid`` (Flower's
serialisation both ways, in process); the protocol is secagg's own ``Server`` and ``Client``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Message, MessageType

from secagg import Params, ServerModel
from secagg.errors import ConfigurationError, UsageError
from secagg.flower import SecureGrid as SessionGrid
from secagg.flower import wire
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from tests.flower.helpers import (
    PARAMS,
    client_app,
    delta,
    flat,
    model,
    node_ids,
    secagg_mod,
    task,
    weight,
)
from tests.flower.loopback import LoopbackGrid

SecureGrid = functools.partial(SessionGrid, session_rounds=0)
STEP = PARAMS.quantizer.error_bound()  # per coordinate, on the mean of the updates
FLOAT32 = 1e-6  # the aggregate is written back as float32 (|values| < 2)


def train_messages(nodes: dict[int, int], content=None) -> list[Message]:  # type: ignore[no-untyped-def]
    content = task() if content is None else content
    return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def expected_mean(partitions: list[int]) -> np.ndarray:
    weights = [weight(p) for p in partitions]
    return np.average([delta(p) for p in partitions], axis=0, weights=weights)


def test_a_train_round_returns_one_reply_holding_the_secure_weighted_mean() -> None:
    nodes = node_ids(6)
    trained: list[int] = []
    grid = SecureGrid(LoopbackGrid(client_app([secagg_mod(PARAMS)], trained), nodes), PARAMS)
    replies = list(grid.send_and_receive(train_messages(nodes)))
    assert len(replies) == 1
    content = replies[0].content
    aggregate = content["arrays"]
    got = flat(aggregate) - flat(model())
    assert np.max(np.abs(got - expected_mean(list(nodes.values())))) <= STEP + FLOAT32
    assert content["metrics"]["num-examples"] == sum(weight(p) for p in nodes.values())
    # The int64 counter is not aggregated: it is the global model's.
    assert aggregate["steps"].numpy().tolist() == [7]
    assert sorted(trained) == sorted(nodes.values())  # each node trained exactly once
    report = grid.reports[-1]
    assert report.outcome == "completed"
    assert set(report.included) == set(nodes)
    assert report.dropped == {}


def test_every_message_of_the_round_carries_only_protocol_bytes_after_the_first() -> None:
    nodes = node_ids(5)
    loopback = LoopbackGrid(client_app([secagg_mod(PARAMS)], []), nodes)
    SecureGrid(loopback, PARAMS).send_and_receive(train_messages(nodes))
    first, later = loopback.sent[: len(nodes)], loopback.sent[len(nodes) :]
    assert all(set(m.content.keys()) == {"arrays", "config", wire.RECORD_KEY} for m in first)
    assert later and all(set(m.content.keys()) == {wire.RECORD_KEY} for m in later)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in loopback.sent)


def test_nodes_that_fail_refuse_or_fall_silent_are_dropped_and_the_rest_aggregated() -> None:
    nodes = node_ids(7)
    by_partition = {p: n for n, p in nodes.items()}
    trained: list[int] = []

    def crash_in_training(msg, ctxt, call_next):  # type: ignore[no-untyped-def]
        if ctxt.node_config["partition-id"] == 0 and wire.NODES in msg.content.config_records.get(
            wire.RECORD_KEY, {}
        ):
            raise RuntimeError("the node's hardware failed")
        return call_next(msg, ctxt)

    loopback = LoopbackGrid(client_app([crash_in_training, secagg_mod(PARAMS)], trained), nodes)
    loopback.silent.add(by_partition[1])
    grid = SecureGrid(loopback, PARAMS)
    replies = list(grid.send_and_receive(train_messages(nodes)))
    report = grid.reports[-1]
    assert report.outcome == "completed"
    assert report.dropped == {
        by_partition[0]: ("commit", "disconnected"),
        by_partition[1]: ("commit", "missed-commit"),
    }
    survivors = [p for p in range(7) if p not in (0, 1)]
    assert set(report.included) == {by_partition[p] for p in survivors}
    got = flat(replies[0].content["arrays"]) - flat(model())
    assert np.max(np.abs(got - expected_mean(survivors))) <= STEP + FLOAT32


def test_a_node_that_refuses_is_dropped_with_its_typed_reason() -> None:
    nodes = node_ids(5)
    # One node's deployment allows only some of the cohort: it refuses the round.
    strict = secagg_mod(PARAMS, allowed_nodes=list(nodes)[:3])
    lenient = secagg_mod(PARAMS)
    by_partition = {p: n for n, p in nodes.items()}

    def pick(msg, ctxt, call_next):  # type: ignore[no-untyped-def]
        mod = strict if ctxt.node_config["partition-id"] == 4 else lenient
        return mod(msg, ctxt, call_next)

    grid = SecureGrid(LoopbackGrid(client_app([pick], []), nodes), PARAMS)
    grid.send_and_receive(train_messages(nodes))
    report = grid.reports[-1]
    assert report.dropped == {by_partition[4]: ("commit", "client-aborted: cohort-not-allowed")}
    assert len(report.included) == 4
    # The operator's line (in Flower's log, beside FedAvg's "Received 1 results").
    assert report.summary() == (
        f"secure round {report.round_id}: 4 of 5 nodes' updates in the aggregate (the "
        f"strategy receives it as 1 result); dropped 1: node {by_partition[4]} at commit: "
        f"client-aborted: cohort-not-allowed; {report.seconds:.2f} s"
    )


def test_a_round_that_cannot_finish_returns_no_reply_so_the_strategy_keeps_its_model() -> None:
    nodes = node_ids(5)
    loopback = LoopbackGrid(client_app([secagg_mod(PARAMS)], []), nodes)
    loopback.silent.update(list(nodes)[:3])  # 2 of 5 left: below any threshold
    grid = SecureGrid(loopback, PARAMS)
    assert list(grid.send_and_receive(train_messages(nodes))) == []
    report = grid.reports[-1]
    assert report.outcome == "aborted"
    assert report.included == ()
    assert report.abort_reason is not None


def test_the_next_round_runs_with_a_new_round_id_and_the_nodes_keep_no_secret() -> None:
    nodes = node_ids(5)
    mod = secagg_mod(PARAMS)
    loopback = LoopbackGrid(client_app([mod], []), nodes)
    grid = SecureGrid(loopback, PARAMS, first_round=1)
    grid.send_and_receive(train_messages(nodes))
    grid.send_and_receive(train_messages(nodes, task(server_round=2)))
    assert [r.round_id for r in grid.reports] == [1, 2]
    assert [r.outcome for r in grid.reports] == ["completed", "completed"]
    for node, context in loopback.contexts.items():
        assert len(context.state.config_records) == 0
        journal = mod.session(node).journal
        assert [(r.round_id, r.included) for r in journal.rounds()] == [(1, True), (2, True)]
        with journal.transaction() as txn:
            assert txn.secrets(1) is None and txn.secrets(2) is None


def test_a_new_server_app_numbers_its_rounds_after_every_earlier_run_by_default() -> None:
    """Each ``flwr run`` starts a new ServerApp before the same nodes and journals: its round
    ids come from the clock, so the nodes take its rounds instead of refusing a replay."""
    nodes = node_ids(5)
    mod = secagg_mod(PARAMS)
    loopback = LoopbackGrid(client_app([mod], []), nodes)
    first = SecureGrid(loopback, PARAMS)
    first.send_and_receive(train_messages(nodes))
    second = SecureGrid(loopback, PARAMS)  # the next run, on the same nodes (a new task:
    # the same model and config again would be refused as a replayed task)
    second.send_and_receive(train_messages(nodes, task(server_round=2)))
    assert [r.outcome for r in first.reports + second.reports] == ["completed", "completed"]
    assert second.reports[0].round_id > first.reports[0].round_id
    # A run that counts its rounds over ids the nodes took part in (as counting from 1 on
    # every run would) is refused: every node's journal calls it a replay.
    again = SecureGrid(loopback, PARAMS, first_round=second.reports[0].round_id)
    assert list(again.send_and_receive(train_messages(nodes, task(server_round=3)))) == []
    assert {reason for _, reason in again.reports[0].dropped.values()} == {
        "client-aborted: replayed-round"
    }


def test_other_message_types_pass_through_untouched() -> None:
    nodes = node_ids(4)
    grid = SecureGrid(LoopbackGrid(client_app([secagg_mod(PARAMS)], []), nodes), PARAMS)
    evaluate = [Message(task(), dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]
    replies = list(grid.send_and_receive(evaluate))
    assert len(replies) == 4
    assert all(r.content["metrics"]["loss"] == 0.5 for r in replies)
    assert grid.reports == []


def test_misuse_is_refused_up_front() -> None:
    nodes = node_ids(4)
    grid = SecureGrid(LoopbackGrid(client_app([secagg_mod(PARAMS)], []), nodes), PARAMS)
    mixed = train_messages(nodes)[:2] + [
        Message(task(), dst_node_id=n, message_type=MessageType.EVALUATE) for n in list(nodes)[2:]
    ]
    with pytest.raises(UsageError, match="on their own"):
        grid.send_and_receive(mixed)
    different = train_messages(nodes)[:3] + train_messages(nodes, task(server_round=9))[3:]
    with pytest.raises(UsageError, match="the same"):
        grid.send_and_receive(different)
    with pytest.raises(UsageError, match="send_and_receive"):
        grid.push_messages(train_messages(nodes))
    with pytest.raises(ConfigurationError, match=r"Params\.dim"):
        SecureGrid(grid, Params(dim=7, max_clients=8)).send_and_receive(train_messages(nodes))
    with pytest.raises(ConfigurationError, match="stage_timeout"):
        SecureGrid(grid, PARAMS, stage_timeout=0)
    with pytest.raises(ConfigurationError, match="first_round"):
        SecureGrid(grid, PARAMS, first_round=0)


def test_a_semi_malicious_deployment_runs_with_signed_keys_and_a_consistency_check() -> None:
    params = Params(
        dim=PARAMS.dim,
        max_clients=8,
        clip=1.0,
        max_weight=100,
        server_model=ServerModel.SEMI_MALICIOUS,
        min_cohort=3,
    )
    nodes = node_ids(6)
    keys = {
        n: Ed25519SigningKey.generate(DeterministicRandomness(f"identity/{n}".encode()))
        for n in nodes
    }
    pki = {n: k.public for n, k in keys.items()}
    mods = {n: secagg_mod(params, identity=keys[n], pki=pki) for n in nodes}

    def own_mod(msg, ctxt, call_next):  # type: ignore[no-untyped-def]
        return mods[ctxt.node_id](msg, ctxt, call_next)

    grid = SecureGrid(LoopbackGrid(client_app([own_mod], []), nodes), params, pki=pki)
    replies = list(grid.send_and_receive(train_messages(nodes)))
    report = grid.reports[-1]
    assert report.outcome == "completed"
    assert "consistency" in report.stage_seconds
    got = flat(replies[0].content["arrays"]) - flat(model())
    assert np.max(np.abs(got - expected_mean(list(nodes.values())))) <= STEP + FLOAT32

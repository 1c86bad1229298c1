"""SecAggMod in sessions that span rounds (docs/SESSIONS.md), through Flower's Message API.

Real ``SecAggMod`` nodes in real ``ClientApp``s behind ``LoopbackGrid`` (Flower's serialisation
both ways, in process), driven by ``SecureGrid(session_rounds=...)`` or by messages made as a
lying server would make them. The sessions in Flower's simulation engine are
``test_sessions.py`` and ``test_session_attacks.py``; here: the mod's routing, its refusals
before anything is promised, the node's caps, and a retransmitted opening.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from secagg import Params, ServerModel
from secagg.errors import AbortReason, ConfigurationError
from secagg.flower import SecAggMod, SecureGrid, wire
from secagg.flower.configured import MISCONFIGURED, SESSION_ROUNDS_KEY, SESSION_SECONDS_KEY
from secagg.flower.nodes import provision_nodes
from secagg.flower.server import ONE_SHOT, SESSION_ROUND, SESSION_SETUP
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import decode
from secagg.schemes.masking.session.messages import RoundMessage, RoundTask, SessionConfig
from secagg.schemes.masking.session.terms import SessionTerms
from tests.flower.helpers import (
    PARAMS,
    client_app,
    delta,
    flat,
    model,
    node_ids,
    secagg_mod,
    secagg_record,
    task,
    weight,
)
from tests.flower.loopback import LoopbackGrid
from tests.flower.test_configured import node_config, write_deployment
from tests.flower.test_mod import ME, NODES, STRANGER, context

STEP = PARAMS.quantizer.error_bound()  # per coordinate, on the mean of the updates
FLOAT32 = 1e-6  # the aggregate is written back as float32 (|values| < 2)
ACTIVE = Params(
    dim=PARAMS.dim,
    max_clients=8,
    clip=1.0,
    max_weight=100,
    server_model=ServerModel.SEMI_MALICIOUS,
    min_cohort=3,
)


def train_messages(nodes: dict[int, int], step: int) -> list[Message]:
    content = task(server_round=step)
    return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def expected_mean(partitions: list[int]) -> np.ndarray:
    weights = [weight(p) for p in partitions]
    return np.average([delta(p) for p in partitions], axis=0, weights=weights)


def session_config(
    *,
    params: Params = PARAMS,
    nodes: list[int] | None = None,
    bound_table: list[int] | None = None,
    max_rounds: int = 3,
    max_seconds: int = 3600,
) -> Message:
    """A session's configuration to ME, with its node table; by default as SecureGrid sends
    it (``bound_table``: the table the configuration binds, if another)."""
    cohort = sorted(NODES) if nodes is None else nodes
    table = wire.encode_nodes(cohort)
    bound = table if bound_table is None else wire.encode_nodes(bound_table)
    config = params.round_config(
        range(len(cohort)),
        nonce=DeterministicRandomness(b"secagg/tests/flower/session").bytes(16),
        round_id=1,
    )
    terms = SessionTerms.carrying(
        config,
        max_rounds=max_rounds,
        max_seconds=max_seconds,
        binding=wire.session_binding(bound),
    )
    record = ConfigRecord({wire.MESSAGE: SessionConfig.of(terms).encode(), wire.NODES: table})
    return Message(
        RecordDict({wire.RECORD_KEY: record}), dst_node_id=ME, message_type=MessageType.TRAIN
    )


def refusal(reply: Message) -> str:
    record = secagg_record(reply)
    assert wire.MESSAGE not in record
    return str(record[wire.ABORT])


class Nodes:
    """Each node's own mod (so each may hold its own identity), behind one loopback grid."""

    def __init__(self, nodes: dict[int, int], params: Params, **options: Any) -> None:
        self.trained: list[int] = []
        self.pki: dict[int, bytes] | None = None
        keys: dict[int, Ed25519SigningKey] = {}
        if params.active:
            keys = {
                n: Ed25519SigningKey.generate(DeterministicRandomness(f"identity/{n}".encode()))
                for n in nodes
            }
            self.pki = {n: k.public for n, k in keys.items()}
        if params.active:
            options = {**options, "pki": self.pki}
        self.mods = {
            n: secagg_mod(params, **options, **({"identity": keys[n]} if keys else {}))
            for n in nodes
        }

        def own_mod(msg, ctxt, call_next):
            return self.mods[ctxt.node_id](msg, ctxt, call_next)

        self.loopback = LoopbackGrid(client_app([own_mod], self.trained), nodes)


@pytest.mark.parametrize("params", [PARAMS, ACTIVE], ids=["semi-honest", "active"])
def test_a_session_sums_every_round_and_costs_each_node_two_messages_a_round(
    params: Params,
) -> None:
    """Five rounds over one cohort with sessions of three: set-up at round 1 and again at
    round 4 (the session ran its rounds); every aggregate is the weighted mean of every node's
    update; after a set-up each round is two exchanges (three in active mode), one message
    each to every node, and each node trains exactly once a round."""
    nodes = node_ids(6)
    world = Nodes(nodes, params)
    grid = SecureGrid(world.loopback, params, pki=world.pki, session_rounds=3)
    per_round = []
    for step in range(1, 6):
        exchanges, sent = world.loopback.exchanges, len(world.loopback.sent)
        replies = list(grid.send_and_receive(train_messages(nodes, step)))
        per_round.append(
            (world.loopback.exchanges - exchanges, (len(world.loopback.sent) - sent) / len(nodes))
        )
        got = flat(replies[0].content["arrays"]) - flat(model())
        assert np.max(np.abs(got - expected_mean(list(nodes.values())))) <= STEP + FLOAT32
        assert set(grid.reports[-1].included) == set(nodes)
    kinds = [r.kind for r in grid.reports]
    assert kinds == [SESSION_SETUP, SESSION_ROUND, SESSION_ROUND, SESSION_SETUP, SESSION_ROUND]
    setup, later = (7, 3) if params.active else (6, 2)
    assert per_round == [(n, float(n)) for n in (setup, later, later, setup, later)]
    assert sorted(world.trained) == sorted(list(nodes.values()) * 5)
    for node, ctxt in world.loopback.contexts.items():
        assert len(ctxt.state.config_records) == 0  # nothing of a session in the Context
        # The node's own journal: two sessions, the second live at round 2.
        live = world.mods[node].session(node).live_session()
        assert live is not None
        audit = world.mods[node].session(node).session_audit(2)
        assert ": included; answered the unmask request" in audit


def test_a_one_shot_round_leaves_the_session_and_the_grid_sets_up_again_in_the_same_round() -> None:
    """S12: a one-shot round (another grid over the same nodes) makes every node leave its
    session. The session grid's next round finds no member in its session (each refuses the
    opening: round-closed), so nothing was revealed and no update entered a sum, and it sets
    the cohort up again at once: the strategy still gets its aggregate that round."""
    nodes = node_ids(5)
    world = Nodes(nodes, PARAMS)
    sessions = SecureGrid(world.loopback, PARAMS, session_rounds=5, first_round=1)
    one_shot = SecureGrid(world.loopback, PARAMS, first_round=100, session_rounds=0)
    for step, grid in enumerate([sessions, sessions, one_shot, sessions, sessions], start=1):
        replies = list(grid.send_and_receive(train_messages(nodes, step)))
        got = flat(replies[0].content["arrays"]) - flat(model())
        assert np.max(np.abs(got - expected_mean(list(nodes.values())))) <= STEP + FLOAT32
    kinds = [(r.kind, r.outcome) for r in sessions.reports]
    assert kinds == [
        (SESSION_SETUP, "completed"),
        (SESSION_ROUND, "completed"),
        (SESSION_ROUND, "aborted"),
        (SESSION_SETUP, "completed"),
        (SESSION_ROUND, "completed"),
    ]
    refused = sessions.reports[2]
    assert {reason for _, reason in refused.dropped.values()} == {"client-aborted: round-closed"}
    assert [r.kind for r in one_shot.reports] == [ONE_SHOT]
    assert sorted(world.trained) == sorted(list(nodes.values()) * 5)


def test_sessions_are_the_grids_default_and_one_shot_rounds_are_there_by_name() -> None:
    """SecureGrid runs sessions of up to 100 rounds (the nodes' own default cap) unless told
    ``session_rounds=0``."""
    nodes = node_ids(5)
    world = Nodes(nodes, PARAMS)
    default = SecureGrid(world.loopback, PARAMS)
    assert default.session_rounds == 100 == world.mods[ME].max_session_rounds
    default.send_and_receive(train_messages(nodes, 1))
    one_shot = SecureGrid(world.loopback, PARAMS, session_rounds=0)
    one_shot.send_and_receive(train_messages(nodes, 2))
    assert [r.kind for r in default.reports + one_shot.reports] == [SESSION_SETUP, ONE_SHOT]
    for bad in (-1, True, 2.0):
        with pytest.raises(ConfigurationError, match="session_rounds"):
            SecureGrid(world.loopback, PARAMS, session_rounds=bad)


def test_a_session_bound_to_another_node_table_is_refused_before_anything_is_promised() -> None:
    mod, ctxt = secagg_mod(PARAMS), context()
    others = [n for n in sorted(NODES) if n != STRANGER] + [STRANGER + 1]
    reply = client_app([mod], [])(session_config(bound_table=others), ctxt)
    assert refusal(reply) == AbortReason.INVALID_CONFIG.value
    assert mod.session(ME).live_session() is None


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"max_rounds": 4}, AbortReason.DOWNGRADE),
        ({"max_seconds": 3601}, AbortReason.DOWNGRADE),
        (
            {"params": Params(dim=PARAMS.dim, max_clients=8, clip=4.0)},
            AbortReason.PARAMETER_MISMATCH,
        ),
        ({"nodes": [n for n in sorted(NODES) if n != ME] + [1]}, AbortReason.UNKNOWN_ID),
    ],
    ids=["more-rounds", "longer", "wider-clip", "without-this-node"],
)
def test_a_session_the_deployment_does_not_allow_is_refused(
    config: dict[str, Any], reason: AbortReason
) -> None:
    """The node's caps (here 3 rounds in an hour) and its deployment, checked at set-up."""
    mod, ctxt = secagg_mod(PARAMS, max_session_rounds=3, max_session_seconds=3600), context()
    reply = client_app([mod], [])(session_config(**config), ctxt)
    assert refusal(reply) == reason.value
    assert mod.session(ME).live_session() is None


def test_a_session_with_a_node_the_deployment_does_not_allow_is_refused() -> None:
    mod = secagg_mod(PARAMS, allowed_nodes=[n for n in NODES if n != STRANGER])
    reply = client_app([mod], [])(session_config(), context())
    assert refusal(reply) == AbortReason.COHORT_NOT_ALLOWED.value
    assert mod.session(ME).live_session() is None


def test_the_session_caps_must_be_positive_ints() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_session_rounds"):
            secagg_mod(PARAMS, max_session_rounds=bad)
        with pytest.raises(ConfigurationError, match="max_session_seconds"):
            secagg_mod(PARAMS, max_session_seconds=bad)


def round_openings(world: Nodes, node: int) -> list[tuple[Message, Message]]:
    """Each message that opened a session round at ``node``, with the reply it got."""
    replies = {r.metadata.reply_to_message_id: r for r in world.loopback.replies}
    out = []
    for sent in world.loopback.sent:
        if sent.metadata.dst_node_id != node:
            continue
        if "arrays" in sent.content and wire.NODES not in secagg_record(sent):
            out.append((sent, replies[sent.metadata.message_id]))
    return out


def resend(world: Nodes, sent: Message) -> Message:
    copy = Message(sent.content, dst_node_id=sent.metadata.dst_node_id, message_type="train")
    (reply,) = world.loopback.send_and_receive([copy])
    return reply


def test_a_retransmitted_opening_gets_the_journalled_bytes_and_the_app_does_not_train() -> None:
    """S2/S3: a round's opening again, byte for byte (the engine or a server retrying) after
    its message left: the same bytes, nothing new, no training. An opening of a closed round
    that is not one the node answered: refused, and the node leaves the session."""
    nodes = node_ids(5)
    world = Nodes(nodes, PARAMS)
    grid = SecureGrid(world.loopback, PARAMS, session_rounds=5)
    for step in (1, 2):
        grid.send_and_receive(train_messages(nodes, step))
    openings = round_openings(world, ME)
    assert len(openings) == 2  # round 1's rode on the set-up's shares, round 2's alone
    trained = len(world.trained)
    for sent, answered in openings:
        again = resend(world, sent)
        assert secagg_record(again)[wire.MESSAGE] == secagg_record(answered)[wire.MESSAGE]
    assert isinstance(decode(secagg_record(again)[wire.MESSAGE]), RoundMessage)
    assert len(world.trained) == trained
    session = world.mods[ME].session(ME)
    live = session.live_session()
    assert live is not None and live.session_id is not None
    content = task(server_round=1)
    replayed = RoundTask(live.session_id, sorted(nodes).index(ME), 1, wire.content_digest(content))
    record = ConfigRecord({wire.MESSAGE: replayed.encode()})
    lie = Message(
        RecordDict({**dict(content.items()), wire.RECORD_KEY: record}),
        dst_node_id=ME,
        message_type=MessageType.TRAIN,
    )
    assert refusal(resend(world, lie)) == AbortReason.REPLAYED_ROUND.value
    assert len(world.trained) == trained
    assert session.live_session() is None  # it left (S3)


def test_an_opening_beside_records_that_are_not_its_task_is_refused_and_the_node_leaves() -> None:
    """S8: a round's task is the digest of the records beside it, computed by the node; other
    records (another model) under the same RoundTask are refused before training."""
    nodes = node_ids(5)
    world = Nodes(nodes, PARAMS)
    grid = SecureGrid(world.loopback, PARAMS, session_rounds=5)
    grid.send_and_receive(train_messages(nodes, 1))
    session = world.mods[ME].session(ME)
    live = session.live_session()
    assert live is not None and live.session_id is not None
    client_id = sorted(nodes).index(ME)
    opening = RoundTask(live.session_id, client_id, 2, wire.content_digest(task(server_round=2)))
    lie = RecordDict(
        {
            **dict(task(server_round=3).items()),
            wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: opening.encode()}),
        }
    )
    trained = len(world.trained)
    reply = client_app([world.mods[ME]], world.trained)(
        Message(lie, dst_node_id=ME, message_type=MessageType.TRAIN), world.loopback.contexts[ME]
    )
    assert refusal(reply) == AbortReason.MODEL_MISMATCH.value
    assert len(world.trained) == trained
    assert session.live_session() is None


# ----------------------------------------------------------------------------- deployment
def configured_reply(tmp_path: Path, message: Message, **extra: object) -> Message:
    write_deployment(tmp_path, PARAMS)
    provision_nodes(tmp_path / "secagg", NODES)
    config = node_config(tmp_path)
    config.update(extra)
    ctxt = Context(run_id=1, node_id=ME, node_config=config, state=RecordDict(), run_config={})
    return client_app([SecAggMod.from_node_config()], [])(message, ctxt)


def test_a_configured_node_takes_a_session_within_its_own_caps(tmp_path: Path) -> None:
    reply = configured_reply(tmp_path, session_config(max_rounds=100, max_seconds=7 * 24 * 3600))
    assert wire.MESSAGE in secagg_record(reply)


@pytest.mark.parametrize(
    ("caps", "config"),
    [
        ({SESSION_ROUNDS_KEY: 2}, {"max_rounds": 3}),
        ({SESSION_SECONDS_KEY: 600}, {"max_seconds": 601}),
    ],
    ids=["rounds", "seconds"],
)
def test_a_configured_node_refuses_a_session_beyond_its_node_configs_caps(
    tmp_path: Path, caps: dict[str, int], config: dict[str, int]
) -> None:
    reply = configured_reply(tmp_path, session_config(**config), **caps)
    assert refusal(reply) == AbortReason.DOWNGRADE.value


@pytest.mark.parametrize("bad", [0, "100", 2.5])
def test_a_session_cap_that_is_not_a_positive_integer_is_a_misconfigured_node(
    tmp_path: Path, bad: object
) -> None:
    reply = configured_reply(tmp_path, session_config(), **{SESSION_ROUNDS_KEY: bad})
    assert reply.has_error() and reply.error.code == MISCONFIGURED
    assert SESSION_ROUNDS_KEY in reply.error.reason

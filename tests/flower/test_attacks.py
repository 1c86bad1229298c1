"""Issue 18's attacks on ``SecAggMod``, played by a lying ServerApp in Flower's own engine.

A specification read as attacks. The attacker is a ``ServerApp`` written from public APIs only:
Flower's ``Grid``, secagg's wire format (``secagg.flower.wire``) and secagg's protocol messages
and ``Server`` (to make the honest-looking part of a round), then it lies. It runs in Flower's
real simulation engine (``flwr.simulation.run_simulation``, flwr 1.42) against a ``ClientApp``
carrying the unmodified ``SecAggMod``. Each attack worked against the mod that kept a node's
round in Flower's ``Context`` (before its promises went into a journal). Each verdict is on
what the attacker actually holds (``tests/protocol/loot.py`` rebuilds every secret its loot
allows).

How the engine schedules (``flwr/server/superlink/fleet/vce/vce_api.py`` and the Ray backend),
which the attacks use and nothing else:

- a feeder thread hands the worker queue at most one message per node per 0.1 s tick, oldest
  first; one worker thread per Ray actor (``init_args.num_cpus / client_resources.num_cpus``
  of them) takes a message, reads the node's ``Context``, runs the ClientApp in its actor and,
  when the app returns, writes that ``Context`` back, with nothing ordering one node's
  messages: a message that took long writes back the ``Context`` it read, over the ones
  written by the messages answered meanwhile.
- the ServerApp runs in a thread of this process; the ClientApps run in actor processes, so
  what the two sides share in this test is a folder: the operator's provisioning, the nodes'
  journals, and the files the test's timing hooks wait on.

Nothing here relies on timing luck: a slow evaluation ends when the ServerApp says so (it stands
for however long an honest app's evaluation takes), and two messages for one node are held at
the node's door until both are inside (the engine may deliver them together, and the attacker
chooses the timing); every wait has a generous upper bound that only turns a hang into an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from numpy.typing import NDArray

from secagg import Params, ServerModel
from secagg.errors import AbortReason, ConfigurationError, DecodeError, DropReason
from secagg.flower import SecAggMod, SecureGrid, SecureRoundReport, wire
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import SystemRandomness
from secagg.journal import Event, Journal
from secagg.protocol import codec
from secagg.protocol.stages import Stage
from secagg.schemes.masking import messages as pm
from secagg.schemes.masking.server import Server
from tests.flower.helpers import DIM, PARAMS, delta, flat, model, task, weight
from tests.protocol.loot import Loot
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GROUP = 5  # nodes of each deployment
VICTIM = 0  # the client id whose input the attacker is after, in every lie round
# Active mode: signed keys and survivor sets; 5 nodes on the complete graph (k = 4), t = 3.
ACTIVE = Params(
    dim=DIM,
    max_clients=8,
    clip=1.0,
    value_bits=16,
    max_weight=100,
    server_model=ServerModel.SEMI_MALICIOUS,
    degree=4,
    threshold=3,
    min_cohort=3,
)
SEMI_HONEST = PARAMS  # 5 nodes: the complete graph, t = 3
GROUPS = {"active": ACTIVE, "semi-honest": SEMI_HONEST}
# Ray actors, so one node's slow evaluation may hold one each while the rest go on.
ACTORS = 6
WAIT = 120.0  # the bound on any wait: only a hang ever reaches it
STEP = PARAMS.quantizer.error_bound()  # per coordinate, on the mean of the updates
FLOAT32 = 1e-6  # the aggregate is written back as float32 (|values| < 2)


# ============================================================================ shared helpers
def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition`` holds (a hang becomes an error after ``WAIT`` seconds)."""
    wait_until(condition, what, timeout=WAIT, interval=0.005)


def describe(msg: Message) -> str:
    """What a message asks of a node, for the app's own log."""
    kind = str(msg.metadata.message_type).split(".", 1)[0]
    record = msg.content.config_records.get(wire.RECORD_KEY) if msg.has_content() else None
    if kind != MessageType.TRAIN or record is None:
        return kind
    if wire.NODES in record:
        return "train:round-config"
    data = record.get(wire.MESSAGE)
    try:
        return f"train:{wire.requested_stage(data).value}"  # type: ignore[arg-type]
    except (DecodeError, TypeError):
        return "train:?"


def provision_path(folder: Path, node: int) -> Path:
    return folder / "provision" / f"node-{node}.json"


def journal_folder(folder: Path, group: str) -> Path:
    return folder / "journals" / group


# ============================================================================ the nodes
# Everything in this section runs in the nodes (Ray actor processes): the app's own code.
def app_log(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """An honest app keeping a log of what it was asked in its ``Context`` (what ``Context``
    is for): the log shows when the engine rolls the node's ``Context`` back."""
    record = ctxt.state.config_records.get("app.log")
    seen = [*(record["seen"] if record is not None else []), describe(msg)]  # type: ignore[misc]
    ctxt.state.config_records["app.log"] = ConfigRecord({"seen": seen})
    return call_next(msg, ctxt)


@dataclass(frozen=True)
class Door:
    """The test's hold on a node's door: while ``hold-<node>`` names a count, each train
    message waits inside the node until that many are in (the engine delivering them at once,
    at the attacker's choice of timing)."""

    folder: Path

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        hold = self.folder / f"hold-{ctxt.node_id}"
        if str(msg.metadata.message_type).startswith(MessageType.TRAIN) and hold.exists():
            count = int(hold.read_text())
            (self.folder / f"inside-{ctxt.node_id}-{os.urandom(8).hex()}").touch()
            wait_for(
                lambda: len(list(self.folder.glob(f"inside-{ctxt.node_id}-*"))) >= count,
                f"{count} messages inside node {ctxt.node_id}",
            )
        return call_next(msg, ctxt)


@dataclass(frozen=True)
class ProvisionedSecAgg:
    """Each node's ``SecAggMod``, unmodified, built from what the operator provisioned on the
    node (its deployment, allow-list, identity key and the nodes' pki) and with its journal in
    the node's folder."""

    folder: Path

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        return provisioned_mod(self.folder, ctxt.node_id)(msg, ctxt, call_next)


def provisioned_mod(folder: Path, node: int) -> SecAggMod:
    """A node's ``SecAggMod`` as its operator provisioned it."""
    plan = json.loads(provision_path(folder, node).read_text())
    group = plan["group"]
    journal = journal_folder(folder, group)
    if plan["identity"] is None:
        return SecAggMod(GROUPS[group], journal=journal, allowed_nodes=plan["allowed"])
    return SecAggMod(
        GROUPS[group],
        journal=journal,
        identity=Ed25519SigningKey.from_private_bytes(bytes.fromhex(plan["identity"])),
        pki={int(n): bytes.fromhex(k) for n, k in plan["pki"].items()},
    )


def client_app(folder: Path) -> ClientApp:
    """Trains ``delta(partition)`` (recording each call in the node's folder), evaluates
    slowly (until the test ends the evaluation) and answers queries with its log."""
    app = ClientApp(mods=[app_log, Door(folder), ProvisionedSecAgg(folder)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        step = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        with (folder / f"trained-{context.node_id}").open("a") as log:
            log.write(f"{step}\n")
        arrays = msg.content["arrays"]
        layout = wire.ArrayLayout.of(arrays)
        new = layout.unflatten(layout.flatten(arrays) + delta(partition), like=arrays)
        metrics = MetricRecord({"num-examples": weight(partition)})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # A slow evaluation: it ends when the test releases it.
        (folder / f"evaluating-{context.node_id}").touch()
        release = folder / f"release-{context.node_id}"
        wait_for(release.exists, f"the end of node {context.node_id}'s evaluation")
        return Message(RecordDict({"metrics": MetricRecord({"loss": 0.5})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        record = context.state.config_records["app.log"]
        info = ConfigRecord(
            {"partition-id": int(context.node_config["partition-id"]), "seen": record["seen"]}
        )
        return Message(RecordDict({"info": info}), reply_to=msg)

    return app


# ============================================================================ the attacker
@dataclass(frozen=True)
class Answer:
    """What a node sent back: a protocol message, or a typed refusal (``wire.ABORT``)."""

    node: int
    message: codec.Message | None = None
    refusal: str | None = None
    data: bytes | None = field(default=None, repr=False)


def read_answer(reply: Message) -> Answer:
    node = reply.metadata.src_node_id
    if reply.has_error():
        raise AssertionError(f"node {node} answered with an error: {reply.error.reason}")
    record = reply.content.config_records[wire.RECORD_KEY]
    if wire.ABORT in record:
        return Answer(node, refusal=str(record[wire.ABORT]))
    data = record[wire.MESSAGE]
    assert isinstance(data, bytes)
    return Answer(node, message=codec.decode(data), data=data)


class Liar:
    """The attacking ServerApp's one channel: Flower's ``Grid``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def exchange(self, sends: Sequence[tuple[int, RecordDict]]) -> list[Answer]:
        """Push train messages (in this order, in one push) and every answer, in that order."""
        out = [
            Message(content, dst_node_id=node, message_type=MessageType.TRAIN, ttl=WAIT)
            for node, content in sends
        ]
        replies = {
            r.metadata.reply_to_message_id: r for r in self.grid.send_and_receive(out, timeout=WAIT)
        }
        return [read_answer(replies[m.metadata.message_id]) for m in out]

    def ask(self, nodes: Sequence[int]) -> dict[int, tuple[int, list[str]]]:
        """Each node's partition and its app's log (a query: public bookkeeping)."""
        out = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        answers: dict[int, tuple[int, list[str]]] = {}
        for reply in self.grid.send_and_receive(out, timeout=WAIT):
            info = reply.content["info"]
            answers[reply.metadata.src_node_id] = (int(info["partition-id"]), list(info["seen"]))
        assert set(answers) == set(nodes)
        return answers

    def evaluate_slowly(self, nodes: Sequence[int], folder: Path) -> Callable[[], None]:
        """Push an evaluation to each node and wait until each has begun (its ``Context`` is
        read); the call returned ends them and waits for their answers (each ``Context``,
        stale by then, written back)."""
        out = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes
        ]
        ids = set(self.grid.push_messages(out))
        wait_for(
            lambda: all((folder / f"evaluating-{n}").exists() for n in nodes),
            "the slow evaluations to begin",
        )

        def finish() -> None:
            for n in nodes:
                (folder / f"release-{n}").touch()
            got: list[Message] = []

            def answered() -> bool:
                got.extend(
                    self.grid.pull_messages(ids - {m.metadata.reply_to_message_id for m in got})
                )
                return len(got) == len(ids)

            wait_for(answered, "the slow evaluations to end")
            assert not any(m.has_error() for m in got)
            for n in nodes:
                (folder / f"evaluating-{n}").unlink()
                (folder / f"release-{n}").unlink()

        return finish

    @contextmanager
    def together(self, node: int, count: int, folder: Path) -> Iterator[list[int]]:
        """Hold ``count`` train messages at ``node``'s door until all are inside; the list
        yielded holds, after the block, how many were inside at once."""
        hold = folder / f"hold-{node}"
        hold.write_text(str(count))
        inside: list[int] = []
        try:
            yield inside
        finally:
            hold.unlink()
            entered = list(folder.glob(f"inside-{node}-*"))
            inside.append(len(entered))
            for path in entered:
                path.unlink()


class LieRound:
    """One round as the attacker plays it: secagg's own ``Server`` makes the honest-looking
    messages, the attacker sends what it likes and keeps every answer."""

    def __init__(
        self,
        liar: Liar,
        params: Params,
        cohort: Sequence[int],
        round_id: int,
        content: RecordDict,
        pki: dict[int, bytes] | None = None,
    ) -> None:
        self.liar = liar
        self.nodes = tuple(sorted(cohort))
        self.table = wire.encode_nodes(self.nodes)
        self.content = content
        self.config = params.round_config(
            range(len(self.nodes)),
            nonce=SystemRandomness().bytes(16),
            round_id=round_id,
            task_hash=wire.task_digest(round_id, self.table, wire.content_digest(content)),
        )
        self.pki = None if pki is None else {i: pki[n] for i, n in enumerate(self.nodes)}
        self.survivor_rule = (
            params.survivor_rule(len(self.nodes), self.config.degree) if params.active else None
        )
        self._server: Server | None = None
        self.sent: list[tuple[int, codec.Message]] = []
        self.received: list[tuple[int, codec.Message]] = []

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = Server(self.config, pki=self.pki, survivor_rule=self.survivor_rule)
        return self._server

    def opening(self) -> RecordDict:
        """The round's first message, as SecureGrid sends it: the task and the protocol."""
        record = ConfigRecord({wire.MESSAGE: self.config.encode(), wire.NODES: self.table})
        return RecordDict({**dict(self.content.items()), wire.RECORD_KEY: record})

    def open(self, nodes: Sequence[int] | None = None) -> dict[int, Answer]:
        """Offer the round to ``nodes`` (default: the cohort)."""
        to = self.nodes if nodes is None else nodes
        return {a.node: a for a in self.liar.exchange([(n, self.opening()) for n in to])}

    def send(
        self, pairs: Sequence[tuple[int, codec.Message]], *, opening: bool = False
    ) -> list[Answer]:
        """Send each (client id, message) in one push; their answers, in order."""
        sends = []
        for cid, message in pairs:
            self.sent.append((cid, message))
            if opening:
                content = self.opening()
            else:
                content = RecordDict(
                    {wire.RECORD_KEY: ConfigRecord({wire.MESSAGE: message.encode()})}
                )
            sends.append((self.nodes[cid], content))
        answers = self.liar.exchange(sends)
        for (cid, _), answer in zip(pairs, answers, strict=True):
            if answer.message is not None:
                self.received.append((cid, answer.message))
        return answers

    def feed(self, pairs: Sequence[tuple[int, codec.Message]], answers: Sequence[Answer]) -> None:
        """Hand the answers to the attacker's own ``Server``."""
        for (cid, _), answer in zip(pairs, answers, strict=True):
            if answer.data is not None:
                self.server.receive(cid, answer.data)
            else:
                self.server.drop(cid, DropReason.CLIENT_ABORTED, str(answer.refusal))

    def play_honestly_until(self, stop: Stage) -> dict[int, codec.Message]:
        """Run the round as secagg's ``Server`` would until it asks for ``stop``: what it
        would send then, by client id."""
        outgoing = self.server.start()
        opening = True
        while self.server.stage is not stop:
            pairs = sorted(outgoing.items())
            self.feed(pairs, self.send(pairs, opening=opening))
            opening = False
            outgoing = self.server.close_stage()
        return outgoing

    def loot(self) -> Loot:
        """Everything the attacker holds of this round."""
        loot = Loot(self.config, self.server.session.session_id)
        for cid, message in self.received:
            loot.take(cid, message)
        for cid, message in self.sent:
            loot.sent(cid, message)
        return loot


# ============================================================================ the run
@dataclass(frozen=True)
class HonestRound:
    group: str
    report: SecureRoundReport
    mean: NDArray[np.float64] | None  # the aggregate minus the global model


@dataclass(frozen=True)
class StaleContextLie:
    """Attack 1: survivor sets A (with the victim) and B (without), each neighbour's
    ``Context`` rolled back in between."""

    round_id: int
    victim: int  # node id
    neighbours: tuple[int, ...]
    before: dict[int, list[str]]  # each neighbour's Context log before the stale write-back
    after: dict[int, list[str]]  # ... and after it
    signed: dict[int, list[Answer]]  # answers to survivor set A, then B
    unmasked: dict[int, list[Answer]]  # answers to unmask request A, then B
    b_signatures: int  # valid signatures on B the attacker could forward
    loot: Loot


@dataclass(frozen=True)
class AtOnceLie:
    """Attack 2: two unmask requests for one node in one push, inside the node together."""

    round_id: int
    victim: int  # node id
    forged_first: bool
    inside: dict[int, int]  # node -> how many requests were inside it at once
    answers: dict[int, list[Answer]]  # node -> answers to (honest, forged), in push order
    kinds: dict[int, list[str]]  # node -> "honest"/"forged", in push order
    loot: Loot


@dataclass
class Record:
    """What the attacking ServerApp did and got, for the tests to judge."""

    folder: Path
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    partitions: dict[int, int] = field(default_factory=dict)
    schedule: dict[str, list[str]] = field(default_factory=dict)
    honest: list[HonestRound] = field(default_factory=list)
    stale: dict[str, StaleContextLie] = field(default_factory=dict)
    at_once: list[AtOnceLie] = field(default_factory=list)
    replays: dict[str, dict[str, dict[int, Answer]]] = field(default_factory=dict)
    invented: dict[str, dict[int, Answer]] = field(default_factory=dict)
    trained_before: dict[int, list[str]] = field(default_factory=dict)
    trained_after: dict[int, list[str]] = field(default_factory=dict)


def trained(folder: Path, nodes: Sequence[int]) -> dict[int, list[str]]:
    """The steps each node's app trained, from its own record."""
    out = {}
    for n in nodes:
        path = folder / f"trained-{n}"
        out[n] = path.read_text().split() if path.exists() else []
    return out


def provision(folder: Path, active: Sequence[int], semi_honest: Sequence[int]) -> dict[int, bytes]:
    """The operator's step, out of band and before any message: each node's deployment,
    allow-list and (active mode) its identity key and the nodes' pki. Returns the pki."""
    private = {n: secrets.token_bytes(32) for n in active}
    pki = {n: Ed25519SigningKey.from_private_bytes(k).public for n, k in private.items()}
    (folder / "provision").mkdir()
    for n in active:
        plan = {
            "group": "active",
            "identity": private[n].hex(),
            "pki": {str(m): p.hex() for m, p in pki.items()},
            "allowed": list(active),
        }
        provision_path(folder, n).write_text(json.dumps(plan))
    for n in semi_honest:
        plan = {"group": "semi-honest", "identity": None, "pki": None, "allowed": list(semi_honest)}
        provision_path(folder, n).write_text(json.dumps(plan))
    return pki


class Script:
    """The ServerApp's program: honest rounds (``SecureGrid``) with lies between them."""

    def __init__(self, grid: Grid, record: Record) -> None:
        self.grid = grid
        self.record = record
        self.folder = record.folder
        self.liar = Liar(grid)

    def run(self) -> None:
        wait_for(lambda: len(list(self.grid.get_node_ids())) >= 2 * GROUP, "the nodes")
        nodes = tuple(sorted(self.grid.get_node_ids()))
        active, semi_honest = nodes[:GROUP], nodes[GROUP:]
        self.pki = provision(self.folder, active, semi_honest)
        self.record.groups = {"active": active, "semi-honest": semi_honest}
        self.record.partitions = {n: p for n, (p, _) in self.liar.ask(nodes).items()}
        self.secure = {
            # Round ids from 1: the liar's own rounds are numbered between the honest ones.
            # One-shot rounds: this module's lies are one-shot rounds between them.
            "active": SecureGrid(
                self.grid, ACTIVE, pki=self.pki, stage_timeout=WAIT, first_round=1, session_rounds=0
            ),
            "semi-honest": SecureGrid(
                self.grid, SEMI_HONEST, stage_timeout=WAIT, first_round=1, session_rounds=0
            ),
        }
        # Active mode: a stale Context written back, twice, between honest rounds.
        self.honest("active", 1)
        replayed = self.stale_context(101, unmask_first=True)
        self.honest("active", 2)
        self.stale_context(102, unmask_first=False)
        self.honest("active", 3)
        self.replay("active", replayed, fresh_round=103)
        self.invent("active", 104)
        self.honest("active", 4)
        # Semi-honest: two unmask requests at once, twice, between honest rounds.
        self.honest("semi-honest", 1)
        replayed = self.at_once(201, forged_first=False)
        self.honest("semi-honest", 2)
        self.at_once(202, forged_first=True)
        self.honest("semi-honest", 3)
        self.replay("semi-honest", replayed, fresh_round=203)
        self.invent("semi-honest", 204)
        self.honest("semi-honest", 4)

    def note(self, group: str, what: str) -> None:
        self.record.schedule.setdefault(group, []).append(what)

    def honest(self, group: str, step: int) -> None:
        """One honest round of the group with its ``SecureGrid``, training step ``step``."""
        nodes = self.record.groups[group]
        out = [
            Message(task(server_round=step), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in nodes
        ]
        replies = list(self.secure[group].send_and_receive(out, timeout=WAIT))
        mean = flat(replies[0].content["arrays"]) - flat(model()) if replies else None
        self.record.honest.append(HonestRound(group, self.secure[group].reports[-1], mean))
        self.note(group, "honest")

    # ------------------------------------------------------------------ attack 1
    def stale_context(self, round_id: int, *, unmask_first: bool) -> LieRound:
        """Attack 1: after the masked inputs, a slow evaluation is pushed to each of the
        victim's neighbours (its Context read then); survivor set A and (``unmask_first``) its
        unmask requests are answered meanwhile; the evaluations end (the stale Contexts
        written back); then each neighbour is shown survivor set B, without the victim, and
        both unmask requests: A's and B's (with whatever signatures on B it could get)."""
        group = self.record.groups["active"]
        r = LieRound(self.liar, ACTIVE, group, round_id, task(server_round=round_id), self.pki)
        survivor_lists = r.play_honestly_until(Stage.CONSISTENCY)
        sid = r.server.session.session_id
        neighbours = [c for c in r.config.client_ids if c != VICTIM]
        neighbour_nodes = tuple(r.nodes[c] for c in neighbours)
        finish = self.liar.evaluate_slowly(neighbour_nodes, self.folder)
        # Survivor set A: everyone, with t valid signatures on it in each unmask request.
        pairs = sorted(survivor_lists.items())
        answers = r.send(pairs)
        r.feed(pairs, answers)
        sign_a = dict(zip((c for c, _ in pairs), answers, strict=True))
        requests_a = sorted(r.server.close_stage().items())
        unmask_a: list[Answer] = []
        if unmask_first:
            unmask_a = r.send(requests_a)
        before = {n: seen for n, (_, seen) in self.liar.ask(neighbour_nodes).items()}
        finish()  # the stale Contexts are written back
        after = {n: seen for n, (_, seen) in self.liar.ask(neighbour_nodes).items()}
        # Survivor set B: the victim dropped.
        without = tuple(c for c in r.config.client_ids if c != VICTIM)
        sign_b = r.send([(c, pm.SurvivorList(sid, c, without)) for c in neighbours])
        signatures_b = [
            (c, a.message.signature)
            for c, a in zip(neighbours, sign_b, strict=True)
            if isinstance(a.message, pm.ConsistencySignature)
        ]
        requests_b = [
            (
                c,
                pm.UnmaskRequest(
                    sid,
                    c,
                    tuple(u for u in r.server.masked_with(c) if u != VICTIM),
                    (VICTIM,),
                    tuple((s, sig) for s, sig in signatures_b if s != c),
                ),
            )
            for c in neighbours
        ]
        if not unmask_first:
            unmask_a = r.send(requests_a)
        unmask_b = r.send(requests_b)
        answers_a = dict(zip((c for c, _ in requests_a), unmask_a, strict=True))
        label = "unmask-first" if unmask_first else "sign-first"
        self.record.stale[label] = StaleContextLie(
            round_id=round_id,
            victim=r.nodes[VICTIM],
            neighbours=neighbour_nodes,
            before=before,
            after=after,
            signed={r.nodes[c]: [sign_a[c], sign_b[i]] for i, c in enumerate(neighbours)},
            unmasked={r.nodes[c]: [answers_a[c], unmask_b[i]] for i, c in enumerate(neighbours)},
            b_signatures=len(signatures_b),
            loot=r.loot(),
        )
        self.note("active", "lie")
        return r

    # ------------------------------------------------------------------ attack 2
    def at_once(self, round_id: int, *, forged_first: bool) -> LieRound:
        """Attack 2: each of the victim's neighbours gets its honest unmask request and a
        forged one (the victim dropped) in one push, both inside the node at once."""
        group = self.record.groups["semi-honest"]
        r = LieRound(self.liar, SEMI_HONEST, group, round_id, task(server_round=round_id))
        requests = r.play_honestly_until(Stage.UNMASK)
        inside: dict[int, int] = {}
        answers: dict[int, list[Answer]] = {}
        kinds: dict[int, list[str]] = {}
        for c in r.config.client_ids:
            if c == VICTIM:
                continue
            honest = requests[c]
            assert isinstance(honest, pm.UnmaskRequest)
            forged = dataclasses.replace(
                honest,
                survivors=tuple(u for u in honest.survivors if u != VICTIM),
                dropped=tuple(sorted((*honest.dropped, VICTIM))),
            )
            pair = [("forged", forged), ("honest", honest)]
            if not forged_first:
                pair.reverse()
            node = r.nodes[c]
            with self.liar.together(node, 2, self.folder) as count:
                answers[node] = r.send([(c, m) for _, m in pair])
            inside[node] = count[0]
            kinds[node] = [k for k, _ in pair]
        r.send([(VICTIM, requests[VICTIM])])
        self.record.at_once.append(
            AtOnceLie(round_id, r.nodes[VICTIM], forged_first, inside, answers, kinds, r.loot())
        )
        self.note("semi-honest", "lie")
        return r

    # ------------------------------------------------------------------ attack 3
    def replay(self, group: str, earlier: LieRound, *, fresh_round: int) -> None:
        """Attack 3, after rounds ran: an honest round's id again (with a new task), an
        earlier round's first message byte for byte, and an honest round's task under a
        fresh round id."""
        nodes = self.record.groups[group]
        params, pki = GROUPS[group], self.pki if group == "active" else None
        self.record.trained_before.update(trained(self.folder, nodes))
        self.record.replays[group] = {
            "round id of honest round 1, a new task": LieRound(
                self.liar, params, nodes, 1, task(server_round=901), pki
            ).open(),
            f"round {earlier.config.round_id}'s first message again": earlier.open(),
            "honest round 1's task, a fresh round id": LieRound(
                self.liar, params, nodes, fresh_round, task(server_round=1), pki
            ).open(),
        }
        self.note(group, "replay")

    # ------------------------------------------------------------------ attack 4
    def invent(self, group: str, round_id: int) -> None:
        """Attack 4: a cohort of the group's nodes and two node ids no node holds."""
        nodes = self.record.groups[group]
        everyone = set(self.grid.get_node_ids())
        invented = [
            n for n in (2**64 - 1, min(everyone) - 1, max(everyone) + 1) if n not in everyone
        ]
        cohort = [*nodes, *invented[:2]]
        r = LieRound(self.liar, GROUPS[group], cohort, round_id, task(server_round=round_id))
        self.record.invented[group] = r.open(nodes)
        self.record.trained_after.update(trained(self.folder, nodes))
        self.note(group, "invented")


def server_app(record: Record) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        Script(grid, record).run()

    return app


@pytest.fixture(scope="module")
def run() -> Iterator[Record]:
    folder = Path(tempfile.mkdtemp(prefix="secagg-attacks-"))
    record = Record(folder)
    # Ray's workers import this module by name: they start from this environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    run_simulation(
        server_app=server_app(record),
        client_app=client_app(folder),
        num_supernodes=2 * GROUP,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": ACTORS,
                "include_dashboard": False,
                "logging_level": "error",
                "log_to_driver": False,
            },
        },
    )
    yield record
    shutil.rmtree(folder, ignore_errors=True)


def events(record: Record, group: str, node: int, round_id: int) -> list[Event]:
    """What a node's own journal says it did in a round."""
    journal = Journal.open(provisioned_mod(record.folder, node).journal_path(node))
    try:
        return [kind for _, kind, _ in journal.events(round_id)]
    finally:
        journal.close()


# ============================================================================ the verdicts
def assert_not_stolen(run: Record, loot: Loot, params: Params, victim: int) -> None:
    """The loot does not strip the victim's masks (if it did, the message shows its update
    beside what the attacker decoded)."""
    recovered = loot.recover(VICTIM)
    if recovered is not None:
        stolen = params.quantizer.decode(recovered)
        update = delta(run.partitions[victim])
        raise AssertionError(f"the attacker decoded {stolen}; the victim's update is {update}")


@pytest.mark.parametrize("order", ["unmask-first", "sign-first"])
def test_a_stale_context_written_back_does_not_let_a_node_sign_or_unmask_twice(
    run: Record, order: str
) -> None:
    """Attack 1 (active mode, twice in one run): each neighbour of the victim is shown
    survivor set A, with the victim, and B, without it, and both unmask requests, its
    ``Context`` rolled back by the engine in between (after answering A's unmask request, or
    after signing A). Before the fix it signed both and answered both: the attacker decoded
    the victim's update."""
    lie = run.stale[order]
    # What the attacker holds does not unmask the victim.
    loot = lie.loot
    assert_not_stolen(run, loot, ACTIVE, lie.victim)
    assert loot.mask_key(VICTIM) is None and not loot.key_shares.get(VICTIM)
    if order == "unmask-first":
        # The honest outcome only: the victim's self mask, removed from the sum of A.
        assert loot.self_mask_seed(VICTIM) is not None
    else:
        assert not loot.self_mask_shares.get(VICTIM)
    assert lie.b_signatures == 0  # no valid signature on B to back its unmask requests
    forgotten = (
        ["train:consistency", "train:unmask"] if order == "unmask-first" else ["train:consistency"]
    )
    for node in lie.neighbours:
        # The premise holds: the engine wrote the stale Context back, and the node's Context
        # forgot the messages it had answered meanwhile.
        before, after = lie.before[node], lie.after[node]
        assert after[-2:] == ["evaluate", "query"]
        kept = len(after) - 2
        assert after[:kept] == before[:kept]
        assert before[kept:-1] == forgotten
        # Yet the node signed one survivor set and answered at most one unmask request.
        sign_a, sign_b = lie.signed[node]
        assert isinstance(sign_a.message, pm.ConsistencySignature)
        assert sign_b.message is None
        unmask_a, unmask_b = lie.unmasked[node]
        assert unmask_b.message is None and unmask_b.refusal == AbortReason.ROUND_CLOSED
        if order == "unmask-first":
            assert sign_b.refusal == AbortReason.ROUND_CLOSED  # its round ended with A's
            assert isinstance(unmask_a.message, pm.UnmaskResponse)
        else:
            assert sign_b.refusal == AbortReason.UNEXPECTED_MESSAGE  # B is not next
            assert unmask_a.refusal == AbortReason.ROUND_CLOSED  # B closed the round
        kinds = events(run, "active", node, lie.round_id)
        assert kinds.count(Event.SIGNED) == 1
        assert kinds.count(Event.REVEALED) == (1 if order == "unmask-first" else 0)


def test_two_unmask_requests_at_once_get_one_answer_and_one_typed_refusal(run: Record) -> None:
    """Attack 2 (semi-honest, twice in one run): each neighbour gets its unmask request and a
    forged one listing the victim as dropped, in one push, both inside the node at once."""
    assert [lie.forged_first for lie in run.at_once] == [False, True]
    for lie in run.at_once:
        assert_not_stolen(run, lie.loot, SEMI_HONEST, lie.victim)
        for node, answers in lie.answers.items():
            assert lie.inside[node] == 2  # both requests were inside the node at once
            assert lie.kinds[node] == (
                ["forged", "honest"] if lie.forged_first else ["honest", "forged"]
            )
            answered = [
                (k, a)
                for k, a in zip(lie.kinds[node], answers, strict=True)
                if a.message is not None
            ]
            refused = [a.refusal for a in answers if a.message is None]
            assert len(answered) == 1 and refused == [AbortReason.ROUND_CLOSED]
            # The answer is the one its request asked for: the victim's self-mask share if
            # the victim survived, its key share if it dropped.
            kind, answer = answered[0]
            assert isinstance(answer.message, pm.UnmaskResponse)
            shares = (
                answer.message.self_mask_shares if kind == "honest" else answer.message.key_shares
            )
            assert VICTIM in {owner for owner, _ in shares}
            assert events(run, "semi-honest", node, lie.round_id).count(Event.REVEALED) == 1
        # Each neighbour gave the victim's self-mask share or its key share, never both; t = 3
        # of 4 neighbours for either leaves too few for the other.
        loot = lie.loot
        holders_of_seed = set(loot.self_mask_shares.get(VICTIM, {}))
        holders_of_key = set(loot.key_shares.get(VICTIM, {}))
        assert not holders_of_seed & holders_of_key
        assert len(holders_of_seed) + len(holders_of_key) == GROUP - 1
        assert loot.self_mask_seed(VICTIM) is None or loot.mask_key(VICTIM) is None


def test_a_replayed_round_or_task_is_refused_and_the_app_does_not_train_again(
    run: Record,
) -> None:
    """Attack 3, after rounds ran (and Contexts were rolled back): a round id offered again,
    and a task whose update already entered a sum, under a fresh round id."""
    expected = {
        "round id of honest round 1, a new task": AbortReason.REPLAYED_ROUND,
        "honest round 1's task, a fresh round id": AbortReason.REPLAYED_TASK,
    }
    for group, offers in run.replays.items():
        for what, answers in offers.items():
            reason = expected.get(what, AbortReason.REPLAYED_ROUND)
            assert set(answers) == set(run.groups[group])
            assert {a.refusal for a in answers.values()} == {reason}, (group, what)
    assert run.trained_after == run.trained_before
    assert set(run.trained_before) == set(run.partitions)


def test_a_cohort_with_invented_node_ids_is_refused_by_every_real_node(run: Record) -> None:
    """Attack 4: the real nodes of a deployment and two node ids no node holds (active mode:
    the pki is the allow-list; semi-honest: ``allowed_nodes``)."""
    for group, answers in run.invented.items():
        assert set(answers) == set(run.groups[group])
        assert {a.refusal for a in answers.values()} == {AbortReason.COHORT_NOT_ALLOWED}


def test_a_mod_without_an_allow_list_is_a_configuration_error(tmp_path: Path) -> None:
    """Attack 4's root: a mod had no allow-list by default and took any cohort."""
    with pytest.raises(ConfigurationError, match="allow-list"):
        SecAggMod(SEMI_HONEST, journal=tmp_path)


def test_several_rounds_of_lies_in_one_run_and_the_honest_rounds_still_complete(
    run: Record,
) -> None:
    """Attack 5: lies and honest rounds alternate in one run, on the same nodes and
    journals; every honest round completes with the exact weighted mean of all five."""
    plan = ["honest", "lie", "honest", "lie", "honest", "replay", "invented", "honest"]
    assert run.schedule == {"active": plan, "semi-honest": plan}
    for group, nodes in run.groups.items():
        rounds = [h for h in run.honest if h.group == group]
        assert [h.report.round_id for h in rounds] == [1, 2, 3, 4]
        for h in rounds:
            assert h.report.outcome == "completed", h.report.abort_reason
            assert set(h.report.included) == set(nodes)
            partitions = [run.partitions[n] for n in h.report.included]
            expected = np.average(
                [delta(p) for p in partitions], axis=0, weights=[weight(p) for p in partitions]
            )
            assert h.mean is not None
            assert np.max(np.abs(h.mean - expected)) <= STEP + FLOAT32

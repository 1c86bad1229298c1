"""docs/SESSIONS.md's attacks on sessions, played by a lying ServerApp in Flower's own engine.

A specification read as attacks (docs/SESSIONS.md 4.5, "In Flower's simulation engine"). The
attacker is a ``ServerApp`` written from public APIs only: Flower's ``Grid``, secagg's wire
format (``secagg.flower.wire``) and secagg's own ``SessionServer`` (to make the honest-looking
part of a session), then it lies. It runs in Flower's real simulation engine
(``flwr.simulation.run_simulation``, flwr 1.42) against ``ClientApp``s carrying the
unmodified ``SecAggMod`` (``tests/flower/session_nodes.py``): two deployments, semi-honest
(seven nodes, the complete graph, t = 3) and active (five nodes, t = 3).

Each attack sets a session up on its deployment's nodes (a new set-up: every node leaves the
session it was in), runs honest rounds, lies, and keeps everything the nodes sent. Each verdict
is on what the attacker holds: ``tests.sessions.loot.recovered`` opens every input whose
self-mask seed and round mask key the transcript (and, for a read of a journal, the copy)
rebuilds, and what it opens is decoded and compared with the node's real update. At the end,
an honest ``SecureGrid`` session runs on each deployment and sums exactly: every node is alive.

How the engine schedules, which the attacks use and nothing else: see ``test_attacks.py``
(one worker per Ray actor takes a message, reads the node's ``Context``, runs the ClientApp and
writes that ``Context`` back, with nothing ordering one node's messages). The ServerApp runs in
a thread of this process and the nodes in actor processes: what the two sides share is a
folder (the provisioning, the journals, the record of what each app trained, the hooks'
files). The app copies and restores journal files there, as an app beside the nodes' folder
can: in simulation that folder is no boundary against the app (docs/SESSIONS.md 4.4).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from numpy.typing import NDArray

from secagg.errors import AbortReason, DropReason, InconsistentSharesError, RoundAborted
from secagg.flower import SecureGrid, SecureRoundReport, wire
from secagg.hazmat import prg
from secagg.hazmat.keys import ed25519_verify, x25519_public_from_private
from secagg.hazmat.randomness import SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, combine
from secagg.protocol import codec
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.session import derivations
from secagg.schemes.masking.session import state as session_state
from secagg.schemes.masking.session.client import Between
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    RoundMessage,
    RoundTask,
    SessionSignature,
    SessionSurvivorList,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
)
from secagg.schemes.masking.session.round import SessionRound
from secagg.schemes.masking.session.terms import SessionTerms
from tests.flower.helpers import flat, model, task, weight
from tests.flower.session_nodes import (
    FLOAT32,
    GROUPS,
    RETRAINED,
    STEP,
    WAIT,
    client_app,
    provision,
    provisioned_mod,
    simulation_env,
    trained,
    update,
    wait_for,
)
from tests.sessions.adversary import Transcript
from tests.sessions.loot import pooled_shares, recovered

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"semi-honest": 7, "active": 5}
ACTORS = 4  # two slow evaluations or two messages held inside one node, and the rest go on
# A lie: given the recipient (client id) and the honest message, what to send instead (None:
# nothing, as if the node were silent).
Lie = Callable[[int, codec.Message], codec.Message | None]


# ============================================================================ the channel
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
    return Answer(node, message=codec.decode(data) if data else None, data=data)


class Liar:
    """The attacking ServerApp's one channel: Flower's ``Grid``."""

    def __init__(self, grid: Grid, folder: Path) -> None:
        self.grid = grid
        self.folder = folder

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
            seen = [s for s in info["seen"] if s]
            answers[reply.metadata.src_node_id] = (int(info["partition-id"]), seen)
        assert set(answers) == set(nodes)
        return answers

    def evaluate_slowly(self, nodes: Sequence[int]) -> Callable[[], None]:
        """Push an evaluation to each node and wait until each has begun (its ``Context`` is
        read); the call returned ends them and waits for their answers (each ``Context``,
        stale by then, written back)."""
        folder = self.folder
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
    def together(self, node: int, count: int) -> Iterator[list[int]]:
        """Hold ``count`` train messages at ``node``'s door until all are inside; the list
        yielded holds, after the block, how many were inside at once."""
        hold = self.folder / f"hold-{node}"
        hold.write_text(str(count))
        inside: list[int] = []
        try:
            yield inside
        finally:
            hold.unlink()
            entered = list(self.folder.glob(f"inside-{node}-*"))
            inside.append(len(entered))
            for path in entered:
                path.unlink()


# ============================================================================ the attacker
class Play:
    """One session as the attacker plays it: secagg's own ``SessionServer`` makes the
    honest-looking messages, the attacker sends what it likes and keeps everything."""

    def __init__(self, script: Script, group: str, *, max_rounds: int = 20) -> None:
        self.script = script
        self.liar = script.liar
        self.group = group
        self.params = GROUPS[group]
        self.nodes = script.groups[group]
        self.table = wire.encode_nodes(self.nodes)
        pki = None
        if self.params.active:
            pki = {i: script.pki[n] for i, n in enumerate(self.nodes)}
        config = self.params.round_config(
            range(len(self.nodes)), nonce=SystemRandomness().bytes(16), round_id=script.step()
        )
        self.terms = SessionTerms.carrying(
            config, max_rounds=max_rounds, binding=wire.session_binding(self.table)
        )
        self.config = self.terms.config
        self.server = MaskingScheme(self.params, pki=pki).session_server(self.terms)
        self.transcript = Transcript()
        self.contents: dict[int, RecordDict] = {}  # round -> the task its opening came with
        self.sent: dict[tuple[int, int], list[RecordDict]] = {}  # (round, client) -> contents
        self.answers: dict[tuple[int, int], list[Answer]] = {}  # (round, client) -> answers
        self.sums: dict[int, tuple[tuple[int, ...], NDArray[np.float64]]] = {}
        self.aborted: dict[int, RoundAborted] = {}
        self._round: SessionRound | None = None
        self._pending = RecordDict()  # the task of the round being opened

    # ----------------------------------------------------------------- who is who
    @property
    def sid(self) -> bytes:
        return self.server.session.session_id

    def node(self, cid: int) -> int:
        return self.nodes[cid]

    def partition(self, cid: int) -> int:
        return self.script.record.partitions[self.nodes[cid]]

    def new_content(self) -> RecordDict:
        """A fresh training task (a step no node trained before: a task trains once)."""
        return task(server_round=self.script.step())

    # ----------------------------------------------------------------- delivering
    def content_of(self, message: codec.Message, content: RecordDict | None = None) -> RecordDict:
        """A message as ``SecureGrid`` sends it: with the node table if it opens the
        session, beside the round's task if it opens a round."""
        record = ConfigRecord({wire.MESSAGE: message.encode()})
        if message.OPENS_ROUND:
            record[wire.NODES] = self.table
        if message.opens_training:
            task_records = content if content is not None else self.contents[self.round_now]
            return RecordDict({**dict(task_records.items()), wire.RECORD_KEY: record})
        return RecordDict({wire.RECORD_KEY: record})

    @property
    def round_now(self) -> int:
        return self.server.round_number

    def deliver(self, sends: Sequence[tuple[int, RecordDict]]) -> list[Answer]:
        """Send each (client id, content) in one push; their answers, in order, recorded."""
        answers = self.liar.exchange([(self.node(cid), content) for cid, content in sends])
        for (cid, content), answer in zip(sends, answers, strict=True):
            key = (self.round_now, cid)
            self.sent.setdefault(key, []).append(content)
            self.answers.setdefault(key, []).append(answer)
            self.keep(cid, answer)
        return answers

    def keep(self, cid: int, answer: Answer) -> None:
        """Everything a node sent goes into the transcript the loot reads."""
        message = answer.message
        if isinstance(message, RoundMessage):
            self.transcript.round_messages.setdefault((message.round_number, cid), message)
        elif isinstance(message, SessionUnmaskResponse):
            self.transcript.answers.append(message)

    def ask(
        self, pairs: Sequence[tuple[int, codec.Message]], content: RecordDict | None = None
    ) -> list[Answer]:
        """Send hand-made messages (one push), each as ``SecureGrid`` would wrap it."""
        return self.deliver([(cid, self.content_of(m, content)) for cid, m in pairs])

    # ----------------------------------------------------------------- honest stages
    def begin(self, content: RecordDict | None = None) -> dict[int, codec.Message]:
        """A training round of the session (its set-up first, if it has none yet) on
        ``content``: what its first stage sends."""
        content = content if content is not None else self.new_content()
        self._round = SessionRound(self.server, wire.content_digest(content))
        self._pending = content
        outgoing = self._round.start()
        self._opened(outgoing)
        return outgoing

    def _opened(self, outgoing: Mapping[int, codec.Message]) -> None:
        """Record a round as it opens: its members (live neighbours, announced keys), its
        context and its task."""
        if any(m.opens_training for m in outgoing.values()):
            r = self.server.round_number
            self.transcript.members[r] = dict(self.server.members)
            self.transcript.contexts[r] = self.server.context
            self.contents[r] = self._pending

    def send(
        self,
        outgoing: Mapping[int, codec.Message],
        lie: Lie | None = None,
        *,
        contents: Mapping[int, RecordDict] | None = None,
        withhold: frozenset[int] = frozenset(),
    ) -> dict[int, Answer]:
        """Deliver one stage (after the lie; ``contents[u]``: the task u's opening comes
        with, if not the round's) and hand the answers to the server, but those from
        ``withhold`` (the attacker keeps their bytes; the server treats them as silent)."""
        pairs = []
        for cid, message in sorted(outgoing.items()):
            lied = lie(cid, message) if lie is not None else message
            if lied is not None:
                pairs.append((cid, self.content_of(lied, (contents or {}).get(cid))))
        answers = dict(zip((c for c, _ in pairs), self.deliver(pairs), strict=True))
        for cid, answer in answers.items():
            if cid in withhold:
                continue
            if answer.data:
                self.server.receive(cid, answer.data)
            elif answer.refusal is not None:
                self.server.drop(cid, DropReason.CLIENT_ABORTED, answer.refusal)
        return answers

    def close(self) -> dict[int, codec.Message] | None:
        """Close the stage: what the next one sends, or None once the round ended (its sum
        kept, or why it aborted)."""
        assert self._round is not None
        r = self.server.round_number
        try:
            outgoing = self._round.close_stage()
        except RoundAborted as exc:
            self.aborted[r] = exc
            return None
        if self._round.done:
            aggregate = self.server.aggregate()
            self.sums[r] = (aggregate.included, aggregate.mean)
            return None
        self._opened(outgoing)
        return outgoing

    def round(
        self,
        lie: Lie | None = None,
        *,
        content: RecordDict | None = None,
        contents: Mapping[int, RecordDict] | None = None,
    ) -> int:
        """One whole round (its set-up first, if needed), honest but for ``lie``; its number."""
        outgoing: dict[int, codec.Message] | None = self.begin(content)
        while outgoing is not None:
            self.send(outgoing, lie, contents=contents)
            outgoing = self.close()
        return self.server.round_number

    def masked(self, lie: Lie | None = None, *, withhold: frozenset[int] = frozenset()) -> None:
        """Open the next round and collect its round messages (the server is not told of
        those from ``withhold``); the test plays the rest by hand (``request``, ``ask``)."""
        assert self.server.between_rounds
        self.send(self.begin(), lie, withhold=withhold)

    def request(
        self,
        recipient: int,
        survivors: frozenset[int],
        *,
        signatures: Mapping[int, bytes] | None = None,
        round_number: int | None = None,
    ) -> SessionUnmaskRequest:
        """The unmask request an honest-looking server would send ``recipient`` if the
        round's survivor set were ``survivors`` (``tests.sessions.adversary``'s)."""
        r = self.server.round_number if round_number is None else round_number
        member = self.transcript.members[r][recipient]
        live = sorted(member.live)
        alive = tuple(w for w in live if w in survivors)
        forwarded = []
        for w in alive:
            sent = self.transcript.round_messages[(r, w)]
            forwarded.append(
                ForwardedShare(
                    w,
                    dict(sent.ciphertexts)[recipient],
                    sent.next_mask_public,
                    sent.next_cipher_public,
                    sent.next_signature,
                )
            )
        return SessionUnmaskRequest(
            self.sid,
            recipient,
            r,
            alive,
            tuple(w for w in live if w not in survivors),
            tuple(forwarded),
            tuple(sorted((signatures or {}).items())),
        )

    def signed(
        self, told: Mapping[int, tuple[int, ...]]
    ) -> tuple[dict[tuple[int, ...], dict[int, bytes]], dict[int, Answer]]:
        """Active mode: show each client its survivor set; the signatures, by set."""
        pairs = [(v, SessionSurvivorList(self.sid, v, self.round_now, s)) for v, s in told.items()]
        answers = dict(zip(told, self.ask(pairs), strict=True))
        signatures: dict[tuple[int, ...], dict[int, bytes]] = {}
        for v, answer in answers.items():
            if isinstance(answer.message, SessionSignature):
                signatures.setdefault(told[v], {})[v] = answer.message.signature
        return signatures, answers

    # ----------------------------------------------------------------- the verdict
    def loot(
        self, mask_keys: dict[tuple[int, int], bytes] | None = None
    ) -> dict[tuple[int, int], NDArray[np.float64]]:
        """Every (client, round) input the attacker opens, decoded."""
        opened = recovered(self.transcript, self.config, mask_keys=mask_keys)
        return {key: self.params.quantizer.decode(vector) for key, vector in opened.items()}

    def real(self, cid: int, before: int = 0) -> NDArray[np.float64]:
        return update(self.partition(cid), before)

    def trained_steps(self) -> dict[int, list[int]]:
        return trained(self.script.folder, self.nodes)


# ============================================================================ the record
@dataclass
class Record:
    """What the attacking ServerApp did and got, for the tests to judge."""

    folder: Path
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    partitions: dict[int, int] = field(default_factory=dict)
    plays: dict[str, Play] = field(default_factory=dict)
    facts: dict[str, dict[str, object]] = field(default_factory=dict)
    honest_after: dict[str, list[SecureRoundReport]] = field(default_factory=dict)
    honest_means: dict[str, list[NDArray[np.float64]]] = field(default_factory=dict)


class Script:
    """The ServerApp's program: on each deployment, one session per attack, then an honest
    ``SecureGrid`` session."""

    def __init__(self, grid: Grid, record: Record) -> None:
        self.grid = grid
        self.record = record
        self.folder = record.folder
        self.liar = Liar(grid, record.folder)
        self._step = 1000

    def step(self) -> int:
        """A fresh number: training steps (each task trains once) and round ids."""
        self._step += 1
        return self._step

    def run(self) -> None:
        total = sum(SIZES.values())
        wait_for(lambda: len(list(self.grid.get_node_ids())) >= total, "the nodes")
        nodes = tuple(sorted(self.grid.get_node_ids()))
        semi = SIZES["semi-honest"]
        self.groups = {"semi-honest": nodes[:semi], "active": nodes[semi:]}
        self.record.groups = self.groups
        self.pki = provision(self.folder, self.groups)
        self.record.partitions = {n: p for n, (p, _) in self.liar.ask(nodes).items()}
        attacks: list[tuple[str, Callable[[str], None], tuple[str, ...]]] = [
            ("resurrection", self.resurrection, ("semi-honest", "active")),
            ("round-replay", self.round_replay, ("semi-honest",)),
            ("split-view", self.split_view, ("semi-honest", "active")),
            ("one-by-one", self.one_by_one, ("semi-honest",)),
            ("late-input", self.late_input, ("semi-honest", "active")),
            ("model-split", self.model_split, ("semi-honest", "active")),
            ("both-shares", self.both_shares, ("semi-honest", "active")),
            ("stale-context", self.stale_context, ("active",)),
            ("two-messages", self.two_messages, ("semi-honest",)),
            ("rolled-back", self.rolled_back, ("semi-honest", "active")),
            ("read-once", self.read_once, ("semi-honest",)),
        ]
        for _name, attack, groups in attacks:
            for group in groups:
                attack(group)
        for group in self.groups:
            self.honest(group)

    def play(self, name: str, group: str, **options: int) -> Play:
        play = self.record.plays[f"{name}/{group}"] = Play(self, group, **options)
        self.record.facts[f"{name}/{group}"] = {}
        return play

    def facts(self, name: str, group: str) -> dict[str, object]:
        return self.record.facts[f"{name}/{group}"]

    # ------------------------------------------------------------------ 4.1.1
    def resurrection(self, group: str) -> None:
        """Client 2 is silent at round 1's task (dropped: its neighbours reveal its round-1
        key); in round 2 the server lists it as a survivor again to three of them."""
        p = self.play("resurrection", group)
        w = 2
        p.round(lambda u, m: None if u == w and m.opens_training else m)
        p.masked()
        everyone = frozenset(range(len(p.nodes)))
        lies: list[tuple[int, codec.Message]] = []
        for v in (0, 1, 3):
            if p.params.active:  # the lie must first be signed
                lies.append((v, SessionSurvivorList(p.sid, v, 2, tuple(sorted(everyone)))))
            else:
                request = p.request(v, everyone - {w})
                lies.append(
                    (
                        v,
                        dataclasses.replace(
                            request, survivors=tuple(sorted((*request.survivors, w)))
                        ),
                    )
                )
        self.facts("resurrection", group)["answers"] = p.ask(lies)

    # ------------------------------------------------------------------ 4.1.2
    def round_replay(self, group: str) -> None:
        """After round 2 closed, in a session of at most 3 rounds: client 0 gets round 2's
        opening again byte for byte, client 1 a task for round 1 again, client 2 a task for
        round 4 (a gap), client 3 a second unmask request for round 2; then round 3 runs,
        the session has run its rounds, and client 4 gets a task for round 4."""
        p = self.play("round-replay", group, max_rounds=3)
        p.round()
        p.round()
        facts = self.facts("round-replay", group)
        facts["trained-before"] = p.trained_steps()
        facts["round-2-message"] = p.answers[(2, 0)][0].data
        first, gap = p.contents[1], p.new_content()
        request = p.sent[(2, 3)][-1]
        honest_request = codec.decode(request[wire.RECORD_KEY][wire.MESSAGE])
        assert isinstance(honest_request, SessionUnmaskRequest)
        moved = honest_request.survivors[0]
        second = dataclasses.replace(
            honest_request,
            survivors=honest_request.survivors[1:],
            dropped=tuple(sorted((*honest_request.dropped, moved))),
            forwarded=tuple(f for f in honest_request.forwarded if f.sender != moved),
        )
        facts["answers"] = p.deliver(
            [
                (0, p.sent[(2, 0)][0]),
                (1, p.content_of(RoundTask(p.sid, 1, 1, wire.content_digest(first)), first)),
                (2, p.content_of(RoundTask(p.sid, 2, 4, wire.content_digest(gap)), gap)),
                (3, p.content_of(second)),
            ]
        )
        p.round()
        facts["round-3"] = p.sums.get(3)
        late = p.new_content()
        facts["past-cap"] = p.ask([(4, RoundTask(p.sid, 4, 4, wire.content_digest(late)))], late)[0]
        facts["trained-after"] = p.trained_steps()

    # ------------------------------------------------------------------ 4.1.3
    def split_view(self, group: str) -> None:
        """Round 2: half the victim's neighbours are told it dropped, the other half that it
        survived; the victim is told everyone survived."""
        p = self.play("split-view", group)
        p.round()
        p.masked()
        n = len(p.nodes)
        everyone = tuple(range(n))
        half = (1, 2, 3) if n == 7 else (1, 2)
        told = {
            v: tuple(u for u in everyone if u != 0) if v in half else everyone for v in everyone
        }
        facts = self.facts("split-view", group)
        signatures: dict[tuple[int, ...], dict[int, bytes]] = {}
        if p.params.active:
            signatures, facts["signed"] = p.signed(told)
        pairs = [
            (v, p.request(v, frozenset(told[v]), signatures=signatures.get(told[v])))
            for v in everyone
        ]
        facts["answers"] = dict(zip(everyone, p.ask(pairs), strict=True))

    # ------------------------------------------------------------------ 4.1.4
    def one_by_one(self, group: str) -> None:
        """One more neighbour of client 0 silent at each round's task, rounds 2 and 3 (the
        departures the graph's parameters cover: the honest server would set up anew after
        them); in round 4 two more are silent, so that client 0 would keep fewer than t
        surviving neighbours, and where the honest server would give up the liar asks the
        survivors to unmask anyway."""
        p = self.play("one-by-one", group)
        p.round()
        for r, gone in zip((2, 3), (1, 2), strict=True):
            p.round(lambda u, m, gone=gone: None if u == gone and m.opens_training else m)
            assert p.round_now == r
        p.masked(lambda u, m: None if u in (3, 4) else m)
        survivors = frozenset({0, 5, 6})
        pairs = [(v, p.request(v, survivors)) for v in sorted(survivors)]
        self.facts("one-by-one", group)["round-4"] = p.ask(pairs)

    # ------------------------------------------------------------------ 4.1.5
    def late_input(self, group: str) -> None:
        """Round 2: the server holds the victim's round message back, has its neighbours
        reveal the victim's round-2 key as for a dropout, and keeps the message."""
        p = self.play("late-input", group)
        victim = len(p.nodes) - 1
        p.round()
        p.masked(withhold=frozenset({victim}))
        others = tuple(v for v in range(len(p.nodes)) if v != victim)
        signatures: dict[tuple[int, ...], dict[int, bytes]] = {}
        if p.params.active:
            signatures, _ = p.signed(dict.fromkeys(others, others))
        pairs = [
            (v, p.request(v, frozenset(others), signatures=signatures.get(others))) for v in others
        ]
        self.facts("late-input", group)["answers"] = p.ask(pairs)
        self.facts("late-input", group)["victim"] = victim

    # ------------------------------------------------------------------ 4.1.6
    def model_split(self, group: str) -> None:
        """Round 2: the victim is sent another model (its task the digest of that model, so
        the victim trains it), everyone else the round's."""
        p = self.play("model-split", group)
        p.round()
        other = p.new_content()
        digest = wire.content_digest(other)
        victim = 0

        def lie(u: int, m: codec.Message) -> codec.Message:
            if u == victim and isinstance(m, RoundTask):
                return dataclasses.replace(m, task=digest)
            return m

        p.round(lie, contents={victim: other})

    # ------------------------------------------------------------------ 4.1.7
    def both_shares(self, group: str) -> None:
        """After round 2 closed, client 1 is sent a second unmask request for round 2 that
        lists client 3 as dropped (its self-mask share went out in the first)."""
        p = self.play("both-shares", group)
        p.round()
        p.round()
        honest = codec.decode(p.sent[(2, 1)][-1][wire.RECORD_KEY][wire.MESSAGE])
        assert isinstance(honest, SessionUnmaskRequest)
        second = dataclasses.replace(
            honest,
            survivors=tuple(u for u in honest.survivors if u != 3),
            dropped=tuple(sorted((*honest.dropped, 3))),
            forwarded=tuple(f for f in honest.forwarded if f.sender != 3),
        )
        self.facts("both-shares", group)["answer"] = p.ask([(1, second)])[0]

    # ------------------------------------------------------------------ 4.1.8
    def stale_context(self, group: str) -> None:
        """Round 2: after the masked inputs, slow evaluations are pushed to clients 1 and 2
        (their Contexts read then); the survivor lists and unmask requests are answered
        meanwhile; the evaluations end (the stale Contexts written back); then both get
        round 2's task, survivor list and unmask request again, and round 3 runs."""
        p = self.play("stale-context", group)
        p.round()
        held = (1, 2)
        facts = self.facts("stale-context", group)
        outgoing = p.begin()
        p.send(outgoing)
        finish = self.liar.evaluate_slowly([p.node(c) for c in held])
        stage = p.close()
        while stage is not None:
            p.send(stage)
            stage = p.close()
        assert 2 in p.sums
        facts["before"] = {
            n: seen for n, (_, seen) in self.liar.ask([p.node(c) for c in held]).items()
        }
        finish()
        facts["after"] = {
            n: seen for n, (_, seen) in self.liar.ask([p.node(c) for c in held]).items()
        }
        again: dict[int, list[tuple[Answer, Answer]]] = {}
        for c in held:
            first = list(p.answers[(2, c)])
            sent = list(p.sent[(2, c)])
            resent = p.deliver([(c, content) for content in sent])
            again[p.node(c)] = list(zip(first, resent, strict=True))
        facts["again"] = again
        facts["trained"] = p.trained_steps()
        p.round()

    # ------------------------------------------------------------------ V5
    def two_messages(self, group: str) -> None:
        """Round 2's unmask request and round 3's task, delivered to one node in one push and
        held at its door until both are inside: client 1 (task pushed first) and client 2
        (request first). Then the round closes and round 3 runs."""
        p = self.play("two-messages", group)
        p.round()
        p.send(p.begin())
        requests = p.close()
        assert requests is not None
        coming = p.new_content()
        digest = wire.content_digest(coming)
        order = {1: "task-first", 2: "request-first"}
        facts = self.facts("two-messages", group)
        together: dict[int, tuple[int, list[tuple[str, Answer]]]] = {}
        p.send({c: m for c, m in requests.items() if c not in order})
        for c, how in order.items():
            pair = [
                ("task", p.content_of(RoundTask(p.sid, c, 3, digest), coming)),
                ("request", p.content_of(requests[c])),
            ]
            if how == "request-first":
                pair.reverse()
            with self.liar.together(p.node(c), 2) as inside:
                answers = p.deliver([(c, content) for _, content in pair])
            together[c] = (inside[0], list(zip((k for k, _ in pair), answers, strict=True)))
            for kind, answer in together[c][1]:
                if kind == "request" and answer.data:
                    p.server.receive(c, answer.data)
        facts["together"] = together
        assert p.close() is None  # round 2 ends
        p.round(content=coming)

    # ------------------------------------------------------------------ V4 / F4
    def rolled_back(self, group: str) -> None:
        """The app copies the victim's journal after round 1 closed; in round 2, after the
        victim's message A left, it restores the copy and sends round 2's task again: the
        rolled-back node trains again and sends B. Round 2's holders are split: some are
        forwarded A's ciphertexts, the others B's, all told the victim survived."""
        p = self.play("rolled-back", group)
        victim = 0
        p.round()
        path = provisioned_mod(self.folder, p.node(victim)).journal_path(p.node(victim))
        backup = self.folder / f"backup-{group}.journal"
        copy_journal(path, backup)
        outgoing = p.begin()
        p.send(outgoing)
        message_a = p.transcript.round_messages[(2, victim)]
        copy_journal(backup, path)  # the rollback
        again = p.deliver([(victim, p.sent[(2, victim)][0])])[0]
        message_b = again.message
        assert isinstance(message_b, RoundMessage)
        stage = p.close()
        if p.params.active:  # every member signs the one S_2 (A or B do not change it)
            assert stage is not None
            p.send(stage)
            stage = p.close()
        assert stage is not None
        t = p.config.threshold
        holders = sorted(v for v in stage if v != victim)
        side_a, side_b = holders[:t], holders[t:]
        sealed_b = dict(message_b.ciphertexts)
        pairs = []
        for v in holders:
            request = stage[v]
            assert isinstance(request, SessionUnmaskRequest)
            if v in side_b:
                forwarded = tuple(
                    ForwardedShare(
                        victim,
                        sealed_b[v],
                        message_b.next_mask_public,
                        message_b.next_cipher_public,
                        message_b.next_signature,
                    )
                    if f.sender == victim
                    else f
                    for f in request.forwarded
                )
                request = dataclasses.replace(request, forwarded=forwarded)
            pairs.append((v, request))
        answers = dict(zip(holders, p.ask(pairs), strict=True))
        facts = self.facts("rolled-back", group)
        facts.update(
            victim=victim,
            message_a=message_a,
            message_b=message_b,
            side_a=side_a,
            side_b=side_b,
            answers=answers,
            trained=p.trained_steps()[p.node(victim)],
        )

    # ------------------------------------------------------------------ F1
    def read_once(self, group: str) -> None:
        """The app copies the victim's journal once, between rounds 2 and 3, then three
        more honest rounds run."""
        p = self.play("read-once", group)
        victim = 0
        p.round()
        p.round()
        path = provisioned_mod(self.folder, p.node(victim)).journal_path(p.node(victim))
        copy = self.folder / f"read-{group}.journal"
        copy_journal(path, copy)
        for _ in range(3):
            p.round()
        self.facts("read-once", group).update(victim=victim, copy=copy)

    # ------------------------------------------------------------------ after the lies
    def honest(self, group: str) -> None:
        """An honest SecureGrid session of two rounds on every node of the deployment."""
        nodes = self.groups[group]
        params = GROUPS[group]
        secure = SecureGrid(
            self.grid,
            params,
            pki=self.pki if params.active else None,
            stage_timeout=WAIT,
            session_rounds=5,
        )
        means = self.record.honest_means.setdefault(group, [])
        for _ in range(2):
            content = task(server_round=self.step())
            out = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
            replies = list(secure.send_and_receive(out, timeout=WAIT))
            means.append(flat(replies[0].content["arrays"]) - flat(model()))
        self.record.honest_after[group] = list(secure.reports)


def copy_journal(source: Path, target: Path) -> None:
    """A consistent copy of a live journal (SQLite's backup), as an app with the folder's
    permissions makes one; into a live journal, that is a restore."""
    if not target.exists():
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def server_app(record: Record) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        Script(grid, record).run()

    return app


@pytest.fixture(scope="module")
def run() -> Iterator[Record]:
    folder = Path(tempfile.mkdtemp(prefix="secagg-session-attacks-"))
    record = Record(folder)
    simulation_env(ROOT)
    run_simulation(
        server_app=server_app(record),
        client_app=client_app(folder),
        num_supernodes=sum(SIZES.values()),
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


# ============================================================================ the verdicts
def refusals(answers: Sequence[Answer]) -> list[str | None]:
    return [a.refusal for a in answers]


def assert_rounds_exact(run: Record, play: Play) -> None:
    """Every round the attacker let finish summed exactly its included nodes' updates."""
    for r, (included, mean) in play.sums.items():
        parts = [play.partition(c) for c in included]
        expected = np.average(
            [update(p) for p in parts], axis=0, weights=[weight(p) for p in parts]
        )
        assert np.max(np.abs(mean - expected)) <= STEP + FLOAT32, r


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_session_resurrection(run: Record, group: str) -> None:
    """4.1.1: a peer listed as dropped in round 1 is listed as a survivor in round 2: every
    neighbour asked refuses (resurrected-id) and reveals nothing of round 2."""
    play = run.plays[f"resurrection/{group}"]
    answers = run.facts[f"resurrection/{group}"]["answers"]
    assert refusals(answers) == [AbortReason.RESURRECTED_ID.value] * 3
    included, _ = play.sums[1]
    assert 2 not in included
    assert not [a for a in play.transcript.answers if a.round_number == 2]
    assert play.loot() == {}
    assert_rounds_exact(run, play)


def test_session_round_replay(run: Record) -> None:
    """4.1.2: round 2's opening again byte for byte gets the journalled bytes (no training);
    a task for round 1 again, one for round 4 after round 2 (a gap) and a second request for
    closed round 2 are refused and the node leaves the session; round 3 runs without those
    three; and a task past the session's three rounds is refused. No refused node trained."""
    play = run.plays["round-replay/semi-honest"]
    facts = run.facts["round-replay/semi-honest"]
    retransmitted, rolled, gap, second = facts["answers"]
    assert retransmitted.data == facts["round-2-message"]
    assert rolled.refusal == AbortReason.REPLAYED_ROUND.value
    assert gap.refusal == AbortReason.ROUND_OUT_OF_ORDER.value
    assert second.refusal == AbortReason.UNEXPECTED_MESSAGE.value
    included, _ = facts["round-3"]
    assert set(included) == {0, 4, 5, 6}
    # Past the session's three rounds: the node left the session as round 3 closed.
    assert facts["past-cap"].refusal == AbortReason.ROUND_CLOSED.value
    before, after = facts["trained-before"], facts["trained-after"]
    round_3_step = int(play.contents[3]["config"]["server-round"])
    for cid, node in enumerate(play.nodes):
        took_round_3 = [round_3_step] if cid in included else []
        assert after[node] == before[node] + took_round_3
    assert play.loot() == {}
    assert_rounds_exact(run, play)


def test_session_split_view(run: Record) -> None:
    """4.1.3, semi-honest: conceded as for one-shot rounds (docs/SESSIONS.md 2.3): half the
    victim's neighbours told it dropped, half that it survived, give the server t shares of
    both its secrets of round 2, and it opens exactly that input of the victim, nothing else."""
    play = run.plays["split-view/semi-honest"]
    loot = play.loot()
    assert set(loot) == {(0, 2)}
    assert np.max(np.abs(loot[(0, 2)] - play.real(0))) <= STEP + FLOAT32


def test_session_split_view_active(run: Record) -> None:
    """4.1.3, active: the two groups sign different histories; the one without the victim
    has no quorum of signatures, so nobody reveals the victim's key; nothing opens."""
    play = run.plays["split-view/active"]
    answers = run.facts["split-view/active"]["answers"]
    # Neither set has a quorum of signatures (3): every client refuses to unmask.
    assert [answers[v].refusal for v in range(5)] == [AbortReason.BELOW_THRESHOLD.value] * 5
    _, keys = pooled_shares(play.transcript, 2)
    assert 0 not in keys
    assert play.loot() == {}


def test_session_one_by_one(run: Record) -> None:
    """4.1.4: one more neighbour of client 0 dropped at each round's task: each opens the
    masks of its own round only, and nothing of client 0 (or of anyone) is ever open; once
    client 0's surviving neighbours would be fewer than t, nobody unmasks (round 4: the honest
    server would not ask; the liar asks, and each survivor refuses)."""
    play = run.plays["one-by-one/semi-honest"]
    assert [set(play.sums[r][0]) for r in (1, 2, 3)] == [
        set(range(7)),
        set(range(7)) - {1},
        set(range(7)) - {1, 2},
    ]
    round_4 = run.facts["one-by-one/semi-honest"]["round-4"]
    assert refusals(round_4) == [AbortReason.BELOW_THRESHOLD.value] * 3
    assert not [a for a in play.transcript.answers if a.round_number == 4]
    assert play.loot() == {}
    assert_rounds_exact(run, play)


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_session_late_input(run: Record, group: str) -> None:
    """4.1.5: the server has the victim's round-2 key revealed as for a dropout and keeps its
    round message: it holds the masked input and the key, never the self-mask seed."""
    play = run.plays[f"late-input/{group}"]
    victim = run.facts[f"late-input/{group}"]["victim"]
    answers = run.facts[f"late-input/{group}"]["answers"]
    assert all(isinstance(a.message, SessionUnmaskResponse) for a in answers)
    seeds, keys = pooled_shares(play.transcript, 2)
    assert len(keys[victim]) >= play.config.threshold
    assert victim not in seeds
    assert (2, victim) in play.transcript.round_messages
    assert play.loot() == {}


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_session_model_split(run: Record, group: str) -> None:
    """4.1.6: the victim trains another model in round 2 and masks under that model's
    context. Semi-honest: its neighbours cannot open its ciphertexts, so no share of its
    self-mask seed comes back and the round aborts, revealing nothing. Active: its signature
    on its next keys (over its context) does not verify at the server, so it is dropped and
    the round sums the others exactly. Nothing individual opens either way."""
    play = run.plays[f"model-split/{group}"]
    if group == "semi-honest":
        assert 2 in play.aborted and 2 not in play.sums
        assert "client 0's self-mask seed" in str(play.aborted[2])
    else:
        assert set(play.sums[2][0]) == {1, 2, 3, 4}
    assert play.loot() == {}
    assert_rounds_exact(run, play)


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_session_both_shares(run: Record, group: str) -> None:
    """4.1.7: a second unmask request for a round the node answered, listing a peer whose
    self-mask share went out in the first as dropped: refused; nothing more leaves."""
    play = run.plays[f"both-shares/{group}"]
    answer = run.facts[f"both-shares/{group}"]["answer"]
    assert answer.refusal == AbortReason.UNEXPECTED_MESSAGE.value
    seeds, keys = pooled_shares(play.transcript, 2)
    assert 3 in seeds and 3 not in keys
    assert play.loot() == {}
    assert_rounds_exact(run, play)


def test_session_stale_context_between_rounds(run: Record) -> None:
    """4.1.8 (active): the engine writes back Contexts read before round 2's survivor list
    and unmask request; both, and round 2's task, are then sent again: the journalled bytes
    every time, no training, and round 3 sums exactly. Nothing is read from the Context."""
    play = run.plays["stale-context/active"]
    facts = run.facts["stale-context/active"]
    for node in facts["before"]:
        before, after = facts["before"][node], facts["after"][node]
        # The premise: the Context the engine wrote back forgot what the node answered.
        assert before[-3:] == ["train:consistency", "train:unmask", "query"]
        assert after == [*before[:-3], "evaluate", "query"]
        for first, resent in facts["again"][node]:
            assert resent.data == first.data and resent.data
    round_2_step = int(play.contents[2]["config"]["server-round"])
    for node in facts["before"]:
        assert facts["trained"][node].count(round_2_step) == 1
    assert set(play.sums[3][0]) == set(range(5))
    assert play.loot() == {}
    assert_rounds_exact(run, play)


def test_session_two_messages_across_rounds(run: Record) -> None:
    """V5: round 2's unmask request and round 3's task inside one node at once. The journal
    orders them: a task taken before the request closed round 2 is refused (the node leaves
    and the request is refused too); a task after it is round 3's. Never a round-3 message
    while round 2 is open at the node; round 3 sums exactly."""
    play = run.plays["two-messages/semi-honest"]
    together = run.facts["two-messages/semi-honest"]["together"]
    for c, (inside, answers) in together.items():
        assert inside == 2
        got = dict(answers)
        if isinstance(got["task"].message, RoundMessage):
            assert isinstance(got["request"].message, SessionUnmaskResponse)
        else:
            assert got["task"].refusal == AbortReason.ROUND_OUT_OF_ORDER.value
            assert got["request"].message is None
            assert c not in play.sums[3][0]
    assert 3 in play.sums
    assert play.loot() == {}
    assert_rounds_exact(run, play)


def ring_signed(values: NDArray[np.unsignedinteger], bits: int) -> NDArray[np.float64]:
    modulus = 1 << bits
    signed = np.array([int(v) if int(v) < modulus // 2 else int(v) - modulus for v in values])
    return signed.astype(np.float64)


def unmasked_by_self_mask(
    play: Play, message: RoundMessage, seed: bytes, victim: int
) -> NDArray[np.unsignedinteger]:
    ring = Ring(play.config.ring_bits)
    vector = ring.unpack(message.packed_vector, play.config.vector_length)
    prg.add_mask(
        vector, derivations.self_mask_key(seed, play.transcript.contexts[2], victim), subtract=True
    )
    return ring.reduce(vector)


def rebuilt_seed(
    play: Play, shares: dict[int, bytes], commitment: bytes, victim: int
) -> bytes | None:
    t = play.config.threshold
    context = play.transcript.contexts[2]
    points = [Share.from_value_bytes(one_shot.share_x(v), value) for v, value in shares.items()]
    for window in itertools.combinations(points, min(t, len(points))):
        try:
            seed = combine(list(window), t)
        except InconsistentSharesError:
            continue
        if derivations.self_mask_commitment(seed, context, victim) == commitment:
            return bytes(seed)
    return None


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_session_rolled_back_journal(run: Record, group: str) -> None:
    """V4 / F4, the victim's journal alone rolled back by the app. The rolled-back node draws
    fresh randomness and trains again (another update), so its second message B differs from
    A under the same round-2 mask key; the holders are split between A and B.

    Semi-honest (k = 6, t = 3): both halves reach t, so the server rebuilds both seeds and
    learns the difference of the two inputs, as docs/SESSIONS.md 4.4 concedes, and neither
    input alone. Active (k = 4, t = 3): 2t > k, so B's side never reaches t: nothing of B,
    and the victim's two signed next-round keys for round 3 are the rollback's trace."""
    play = run.plays[f"rolled-back/{group}"]
    facts = run.facts[f"rolled-back/{group}"]
    victim = facts["victim"]
    a, b = facts["message_a"], facts["message_b"]
    assert isinstance(a, RoundMessage) and isinstance(b, RoundMessage)
    assert b.self_mask_commitment != a.self_mask_commitment
    assert b.next_mask_public != a.next_mask_public
    step = int(play.contents[2]["config"]["server-round"])
    assert facts["trained"].count(step) == 2
    answers = facts["answers"]
    shares = {"A": {}, "B": {}}
    for v, answer in answers.items():
        assert isinstance(answer.message, SessionUnmaskResponse)  # no holder can tell
        side = "A" if v in facts["side_a"] else "B"
        shares[side][v] = dict(answer.message.self_mask_shares)[victim]
    seed_a = rebuilt_seed(play, shares["A"], a.self_mask_commitment, victim)
    seed_b = rebuilt_seed(play, shares["B"], b.self_mask_commitment, victim)
    assert seed_a is not None
    assert play.loot() == {}  # neither input alone: the pairwise masks stay on both
    if group == "active":
        assert seed_b is None
        sid = play.sid
        context = play.transcript.contexts[2]
        for message in (a, b):
            ed25519_verify(
                run.plays[f"rolled-back/{group}"].script.pki[play.node(victim)],
                derivations.next_key_signed_bytes(
                    sid, 3, victim, message.next_mask_public, message.next_cipher_public, context
                ),
                message.next_signature,
            )
        return
    assert seed_b is not None
    bits = play.config.ring_bits
    difference = ring_signed(
        Ring(bits).reduce(
            unmasked_by_self_mask(play, a, seed_a, victim)
            - unmasked_by_self_mask(play, b, seed_b, victim)
        ),
        bits,
    )
    w = weight(play.partition(victim))
    assert difference[-1] == 0  # one weight
    learnt = difference[:-1] / w * play.params.quantizer.step
    real = play.real(victim) - play.real(victim, before=1)  # x_A - x_B = -RETRAINED
    assert np.max(np.abs(learnt - real)) <= 2 * STEP
    assert np.allclose(real, -RETRAINED)


def test_session_journal_read_once(run: Record) -> None:
    """F1: the app copies the victim's journal folder once, between rounds 2 and 3, and
    three more rounds run honestly. With the copy's round-3 mask key and the self-mask
    shares its neighbours reveal as usual, the attacker opens round 3's input of the victim
    and nothing else: no earlier round, and no later one (round 4's key went out under a
    fresh exchange the copy cannot compute)."""
    play = run.plays["read-once/semi-honest"]
    facts = run.facts["read-once/semi-honest"]
    victim = facts["victim"]
    with sqlite3.connect(f"file:{facts['copy']}?mode=ro", uri=True) as raw:
        (blob,) = raw.execute(
            "SELECT state FROM session_state ORDER BY session DESC LIMIT 1"
        ).fetchone()
    held = session_state.decode(blob).state
    assert isinstance(held, Between) and held.closed == 2
    keys = {(victim, 3): held.mask_keys.private_bytes()}
    loot = play.loot(mask_keys=keys)
    assert set(loot) == {(victim, 3)}
    assert np.max(np.abs(loot[(victim, 3)] - play.real(victim))) <= STEP + FLOAT32
    # The key is round 3's alone: it is the one the victim announced for round 3, no other
    # round's, and named for another round it strips nothing (what decodes is noise).
    private = keys[(victim, 3)]
    announced = {r: m[victim].mask_public for r, m in play.transcript.members.items()}
    assert [
        r for r, public in announced.items() if public == x25519_public_from_private(private)
    ] == [3]
    for r in (1, 2, 4, 5):
        for vector in play.loot(mask_keys={(victim, r): private}).values():
            assert np.max(np.abs(vector - play.real(victim))) > 10 * STEP
    assert play.loot() == {}
    assert_rounds_exact(run, play)


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_every_node_is_alive_after_the_lies_and_an_honest_session_sums_exactly(
    run: Record, group: str
) -> None:
    nodes = run.groups[group]
    reports = run.honest_after[group]
    assert [r.outcome for r in reports] == ["completed", "completed"]
    for report, mean in zip(reports, run.honest_means[group], strict=True):
        assert set(report.included) == set(nodes)
        parts = [run.partitions[n] for n in nodes]
        expected = np.average(
            [update(p) for p in parts], axis=0, weights=[weight(p) for p in parts]
        )
        assert np.max(np.abs(mean - expected)) <= STEP + FLOAT32

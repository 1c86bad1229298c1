"""A session over the client's journal: every decision in one transaction, a retransmission
answered from the journal, any other message of a closed round a departure, a node rebuilt
from its journalled state (never by replay) answering byte for byte, and no seed, update or
closed round's key ever at rest (docs/SESSIONS.md 1.4, rules S2, S3, S11, S12, S14; attacks A1,
F4, V4).

Real session clients and a real ``SessionServer`` over encoded messages (``tests/sessions/
cohort.py``); the clients named ``journalled`` run behind a ``ClientSession`` over a real SQLite
file, driven as a transport drives one: a ``SessionConfig`` is offered, a ``RoundTask`` offered
with its model and begun with the trained update, every other message received. The server side
is the test: it retransmits, sends other requests for closed rounds, replays, rolls back and
skips round numbers, restarts nodes, copies and restores their journal files, and splits a
round between two histories of a rolled-back client.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.client_session import Answer, ClientSession, Offer
from secagg.dp.budget import ClientBudget
from secagg.errors import AbortReason, ClientAbort, InconsistentSharesError, JournalError
from secagg.hazmat import prg
from secagg.hazmat.aead import NONCE_BYTES
from secagg.hazmat.keys import ed25519_verify
from secagg.hazmat.randomness import Randomness, SystemRandomness
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, combine
from secagg.journal import SCHEMA_VERSION, Event, InSession, Journal
from secagg.protocol.codec import Message, decode
from secagg.protocol.runner import RoundRun
from secagg.protocol.stages import Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.session import derivations
from secagg.schemes.masking.session import state as session_state
from secagg.schemes.masking.session.client import (
    AwaitingSetupKeys,
    AwaitingSetupShares,
    Between,
    Left,
    Masked,
    SessionClient,
    Signed,
)
from secagg.schemes.masking.session.local import LocalSession
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    PeerSetupShares,
    RoundMessage,
    RoundTask,
    SessionConfig,
    SessionSurvivorList,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
)
from secagg.schemes.masking.session.round import SessionRound
from secagg.schemes.masking.session.server import SessionServer
from secagg.service.wire import ModelTask
from tests.sessions.cohort import Cohort
from tests.sessions.test_state import Recorded
from tests.test_client_session import two_rounds_at_epsilon_4

N = 8
DIM = 5
MODEL = np.zeros(DIM, dtype="<f4").tobytes()
OTHER_MODEL = np.ones(DIM, dtype="<f4").tobytes()
Update = tuple[NDArray[np.floating], int]


def task(r: int, model: bytes = MODEL) -> bytes:
    """Round r's task digest, as the client computes it from the model bytes and the step."""
    return ModelTask(model, r).binding()


class World:
    """A session of ``N`` clients and a real server; the clients in ``journalled`` run behind
    their ``ClientSession`` over a journal file in ``folder``, the others in memory.

    ``driver``: ``engine`` runs each round with the one round engine, as a transport does
    (``RoundRun`` over ``SessionRound``: round 1 runs the set-up, whose last message carries
    round 1's task); ``local`` sets up first (``LocalSession``), and every round's task then
    comes in a ``RoundTask`` of its own."""

    def __init__(
        self,
        folder: Path,
        *,
        active: bool = False,
        journalled: Iterable[int] = (0,),
        keep_secrets: bool = True,
        max_rounds: int = 20,
        max_seconds: int = 3600,
        budget: ClientBudget | None = None,
        node_class: type[Node] | None = None,
        seed: int = 1,
        driver: str = "engine",
    ) -> None:
        self.active = active
        self.driver = driver
        self.cohort = Cohort(
            N,
            threshold=5 if active else 3,
            active=active,
            max_rounds=max_rounds,
            max_seconds=max_seconds,
            seed=seed,
        )
        # The deployment every journalled client holds: the same parameters the cohort runs.
        self.params = Params(
            dim=DIM,
            max_clients=N,
            protocol=Protocol.SECAGG,
            clip=7.5,
            value_bits=4,
            max_weight=2,
            min_cohort=1,
            server_model=ServerModel.SEMI_MALICIOUS if active else ServerModel.SEMI_HONEST,
            threshold=None if active else 3,
        )
        self.folder = folder
        self.budget = budget
        make = node_class or Node
        self.nodes = {u: make(self, u, keep_secrets) for u in journalled}
        self.clients: dict[int, SessionClient | Node] = {
            u: self.nodes[u] if u in self.nodes else self.cohort._client(u) for u in range(N)
        }
        self.local = LocalSession(self.cohort.server, self.clients.__getitem__)  # type: ignore[arg-type]
        self.left: dict[int, AbortReason] = self.local.left
        self._silent: set[int] = set()

    @property
    def server(self) -> SessionServer:
        return self.cohort.server

    def scheme(self, u: int) -> MaskingScheme:
        return MaskingScheme(
            self.params,
            identities={u: self.cohort.identities[u]},
            pki=self.cohort.pki,
            allowed=frozenset(range(N)),
        )

    def updates(self) -> dict[int, Update]:
        return self.cohort.updates()  # type: ignore[return-value]

    def set_up(self) -> None:
        """The set-up alone (the ``local`` driver)."""
        assert self.driver == "local"
        self.local.set_up()
        assert self.left == {}

    def run_rounds(
        self, first: int, last: int, silent: dict[int, dict[int, Stage]] | None = None
    ) -> dict[int, dict[int, Update]]:
        """Rounds ``first`` to ``last`` (``silent[r]``: who falls silent at which stage of
        round r), each summing exactly its survivors' inputs."""
        inputs = {}
        for r in range(first, last + 1):
            updates = inputs[r] = self.updates()
            if self.driver == "local":
                if not self.server.between_rounds:
                    self.set_up()
                result = self.local.run_round(task(r), updates, (silent or {}).get(r))
                aggregate = result.aggregate
            else:
                aggregate = self._engine_round(r, updates, (silent or {}).get(r, {}))
            assert aggregate.ring_total is not None
            assert list(aggregate.ring_total) == self.cohort.expected_ring_sum(
                updates,  # type: ignore[arg-type]
                aggregate.included,
            )
        return inputs

    def _engine_round(self, r: int, updates: dict[int, Update], silent: dict[int, Stage]) -> Any:
        run = RoundRun(SessionRound(self.server, task(r)))
        for stage, outgoing in run.stages():
            for u, message in sorted(outgoing.items()):
                client = self.clients[u]
                if u in self._silent or u in self.left or silent.get(u) is stage:
                    self._silent.add(u)
                    continue
                if client.needs_input(message):
                    client.set_input(*updates[u], task(r))
                try:
                    answer = client.receive(message.encode())
                except ClientAbort as exc:
                    self.left[u] = exc.reason
                    continue
                if answer is not None:
                    run.server.receive(u, answer.encode())
        assert run.record.aggregate is not None, run.record
        return run.record.aggregate


class Node:
    """One journalled client, driven as a transport drives its ``ClientSession``."""

    def __init__(self, world: World, client_id: int, keep_secrets: bool) -> None:
        self.world = world
        self.client_id = client_id
        self.keep_secrets = keep_secrets
        self.path = world.folder / f"node-{client_id}.journal"
        self.rng: Randomness = Recorded(f"node/{client_id}".encode() * 2)
        self.model = MODEL
        self.update: Update | None = None
        self.received: list[tuple[Message, bytes]] = []
        self.sent: list[bytes] = []
        self.session = self.restart()

    def restart(self, rng: Randomness | None = None, path: Path | None = None) -> ClientSession:
        """A fresh process on the journal: nothing from memory survives."""
        if rng is not None:
            self.rng = rng
        self.session = ClientSession(
            lambda cid, members: self.world.scheme(self.client_id),
            Journal.open(path or self.path),
            self_id=self.client_id,
            allowed=frozenset(range(N)),
            stage_timeout=60.0,
            keep_secrets=self.keep_secrets,
            budget=self.world.budget,
            rng=self.rng,
        )
        return self.session

    @property
    def now(self) -> float:
        return self.world.cohort.clock[0]

    @property
    def state(self) -> object:
        live = self.session.live_session()
        return Left(0, AbortReason.ROUND_CLOSED, "") if live is None else live

    def set_input(self, values: NDArray[np.floating], weight: int, task: bytes) -> None:
        self.update = (values, weight)

    def needs_input(self, message: Message) -> bool:
        return opens_round(message)

    def answer(self, data: bytes, session: ClientSession | None = None) -> Answer:
        """What the transport does with one server message."""
        session = session or self.session
        message = decode(data)
        if isinstance(message, SessionConfig):
            return session.offer_session(data, self.now)
        if opens_round(message):
            number = message.round_number if isinstance(message, RoundTask) else 1
            try:
                accepted = session.offer_round(data, ModelTask(self.model, number), self.now)
            except ClientAbort as exc:
                if exc.reason is not AbortReason.REPLAYED_ROUND or not session.live_session():
                    raise
                return session.receive(data, self.now)  # answered before: the recorded bytes
            assert self.update is not None
            return session.begin_round(accepted, *self.update, self.now)
        return session.receive(data, self.now)

    def receive(self, data: bytes) -> Message | None:
        self.received.append((decode(data), data))
        answer = self.answer(data)
        self.sent.append(answer.data)
        self.after(data, answer)
        return decode(answer.data) if answer.data else None

    def after(self, data: bytes, answer: Answer) -> None:
        """Called after every transaction a server message made (for the tests' checks)."""

    # ----------------------------------------------------------------- what the file holds
    def stored(self) -> dict[str, list[bytes]]:
        """Every value of every table of the journal, as bytes (numbers left out)."""
        out: dict[str, list[bytes]] = {}
        with contextlib_closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as raw:
            tables = [
                t for (t,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                values = out.setdefault(table, [])
                for row in raw.execute(f"SELECT * FROM {table}"):
                    for cell in row:
                        if isinstance(cell, bytes):
                            values.append(cell)
                        elif isinstance(cell, str):
                            values.append(cell.encode())
        return out

    def rows(self) -> dict[str, list[tuple[object, ...]]]:
        """Every row of every table of the journal."""
        with contextlib_closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as raw:
            tables = [
                t for (t,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            return {t: raw.execute(f"SELECT * FROM {t}").fetchall() for t in tables}

    def state_blob(self) -> bytes | None:
        states = self.stored()["session_state"]
        assert len(states) <= 1
        return states[0] if states else None

    def durable(self) -> session_state.Durable | None:
        blob = self.state_blob()
        return None if blob is None else session_state.decode(blob)


class contextlib_closing:  # noqa: N801 - contextlib.closing, typed for a connection
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def copy_journal(source: Path, target: Path) -> None:
    """A consistent copy of a live journal (SQLite's backup), private to this user."""
    if target.exists():
        target.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    with (
        contextlib_closing(sqlite3.connect(source)) as src,
        contextlib_closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def opens_round(message: Message) -> bool:
    """A round's task comes in a ``RoundTask``, or round 1's in the set-up's last message."""
    return isinstance(message, RoundTask) or (
        isinstance(message, PeerSetupShares) and bool(message.first_task)
    )


def events(node: Node, where: InSession) -> list[Event]:
    return [kind for _, kind, _ in node.session.journal.events(where)]


# ----------------------------------------------------------------------------- honest sessions
@pytest.mark.parametrize("keep_secrets", [True, False], ids=["keep-secrets", "in-memory"])
@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("driver", ["engine", "local"])
def test_an_honest_session_over_journals_sums_every_round_and_each_audit_says_included(
    tmp_path: Path, driver: str, active: bool, keep_secrets: bool
) -> None:
    world = World(
        tmp_path, active=active, journalled=(0, 3), keep_secrets=keep_secrets, driver=driver
    )
    world.run_rounds(1, 3)
    assert world.left == {}
    for node in world.nodes.values():
        live = node.session.live_session()
        assert live is not None and live.session_id == world.cohort.server.session.session_id
        assert "set-up: " in node.session.session_audit(0)
        assert node.session.session_audit(0).endswith(
            ": set up after attempt 1 (7 live neighbours)"
        )
        for r in (1, 2, 3):
            line = node.session.session_audit(r)
            assert f"round {r}: model {task(r)[:4].hex()}: included; answered the unmask" in line
        with node.session.journal.transaction() as txn:
            rounds = txn.session_rounds(live.seq)
            assert [(e.round_number, e.outcome, e.included) for e in rounds] == [
                (r, "answered to the end", True) for r in (1, 2, 3)
            ]
            assert (txn.session_state(live.seq) is not None) is keep_secrets
            # One contribution per round, filed under the session's round.
            for r in (1, 2, 3):
                assert txn.contributed_in(ModelTask(MODEL, r).fingerprint()) == InSession(
                    live.seq, r
                )


# ----------------------------------------------------------------------------- rule S3
class Echoed(Node):
    """Every message is delivered twice: the second time must get the recorded bytes and
    change nothing in the journal but an audit row."""

    def after(self, data: bytes, answer: Answer) -> None:
        before = self.rows()
        again = self.answer(data)
        assert again == answer
        after = self.rows()
        for table in before:
            if table not in ("events", "sqlite_sequence"):
                assert after[table] == before[table], table
        assert after["events"][-1][3] == Event.RETRANSMITTED.value


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("driver", ["engine", "local"])
def test_a_retransmitted_request_gets_the_recorded_bytes_and_nothing_new(
    tmp_path: Path, driver: str, active: bool
) -> None:
    """Every message of a set-up and two rounds delivered twice (the round's task too, which
    a transport offers first: refused as answered, then answered from the journal)."""
    world = World(tmp_path, active=active, journalled=(0, 5), node_class=Echoed, driver=driver)
    world.run_rounds(1, 2)
    assert world.left == {}
    kinds = {type(m).__name__ for m, _ in world.nodes[0].received}
    expected = {"SessionConfig", "CommitmentDigest", "Contributions", "PeerKeys"}
    expected |= {"PeerSetupShares", "RoundTask", "SessionUnmaskRequest"}
    assert kinds == expected | ({"SessionSurvivorList"} if active else set())
    # The set-up's shares: taken with nothing to send, or answered with round 1's message.
    assert (b"" in world.nodes[0].sent) is (driver == "local")


def first_survivor_dropped(request: SessionUnmaskRequest) -> SessionUnmaskRequest:
    return dataclasses.replace(
        request,
        survivors=request.survivors[1:],
        dropped=tuple(sorted((*request.dropped, request.survivors[0]))),
        forwarded=request.forwarded[1:],
    )


def assert_left(node: Node, reason_text: str) -> None:
    """The node left its session: no live session, no state at rest, the reason journalled."""
    assert node.session.live_session() is None
    assert node.state_blob() is None
    assert any(reason_text.encode() in value for value in node.stored()["events"])


@pytest.mark.parametrize(
    ("active", "kind"),
    [(False, "unmask"), (True, "unmask"), (True, "survivor list")],
    ids=["semi-honest-unmask", "active-unmask", "active-survivor-list"],
)
def test_a_different_request_for_a_closed_step_is_refused_and_the_client_leaves(
    tmp_path: Path, active: bool, kind: str
) -> None:
    world = World(tmp_path, active=active)
    world.run_rounds(1, 1)
    node = world.nodes[0]
    message, data = next(
        (m, d)
        for m, d in node.received
        if isinstance(m, SessionUnmaskRequest if kind == "unmask" else SessionSurvivorList)
    )
    if isinstance(message, SessionUnmaskRequest):
        other = first_survivor_dropped(message).encode()
    else:
        assert isinstance(message, SessionSurvivorList)
        other = dataclasses.replace(message, survivors=message.survivors[1:]).encode()
    with pytest.raises(ClientAbort):
        node.answer(other)
    assert_left(node, "unexpected-message")
    # The same bytes as before still get the recorded answer (nothing new); anything of the
    # session after it is refused.
    assert node.answer(data).data in node.sent
    sid = world.cohort.server.session.session_id
    with pytest.raises(ClientAbort) as refused:
        node.answer(RoundTask(sid, 0, 2, task(2)).encode())
    assert refused.value.reason is AbortReason.ROUND_CLOSED


@pytest.mark.parametrize("door", ["receive", "offer_round"])
def test_junk_in_a_session_is_a_departure(tmp_path: Path, door: str) -> None:
    world = World(tmp_path)
    world.run_rounds(1, 1)
    node = world.nodes[0]
    with pytest.raises(ClientAbort) as refused:
        if door == "receive":
            node.session.receive(b"junk", 0.0)
        else:
            node.session.offer_round(b"junk", ModelTask(MODEL, 2), 0.0)
    assert refused.value.reason is AbortReason.MALFORMED_MESSAGE
    assert_left(node, "malformed-message")


CASES = {
    # name: (rounds run before, round offered, model it names, model sent, clock, reason)
    "replayed with another model": (2, 2, OTHER_MODEL, OTHER_MODEL, 0.0, "REPLAYED_ROUND"),
    "rolled back": (2, 1, OTHER_MODEL, OTHER_MODEL, 0.0, "REPLAYED_ROUND"),
    "skipped": (2, 4, MODEL, MODEL, 0.0, "ROUND_OUT_OF_ORDER"),
    "past T_max": (2, 3, MODEL, MODEL, 3601.0, "SESSION_EXPIRED"),
    "another model than it names": (2, 3, MODEL, OTHER_MODEL, 0.0, "MODEL_MISMATCH"),
    "before the last round closed": (-1, 3, MODEL, MODEL, 0.0, "ROUND_OUT_OF_ORDER"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_numbers_replayed_rolled_back_or_skipped_are_refused_and_the_client_leaves(
    tmp_path: Path, case: str
) -> None:
    """S3: a task only for round last + 1 of the live session, within its caps, for the
    model the client was sent; anything else is refused before training, and the client
    leaves (its journal says why and holds no state any more)."""
    before, offered, named, model, clock, name = CASES[case]
    reason = AbortReason[name]
    world = World(tmp_path)
    node = world.nodes[0]
    server = world.cohort.server
    if before >= 0:
        world.run_rounds(1, before)
    else:  # round 2 in progress: this client has sent its round message
        world.run_rounds(1, 1)
        outgoing = server.open_round(task(2))
        node.set_input(*world.updates()[0], task(2))
        node.receive(outgoing[0].encode())
    world.cohort.clock[0] = clock
    node.model = model
    sid = server.session.session_id
    data = RoundTask(sid, 0, offered, task(offered, named)).encode()
    with pytest.raises(ClientAbort) as refused:
        node.session.offer_round(data, ModelTask(model, offered), clock)
    assert refused.value.reason is reason
    assert_left(node, reason.value)


def test_a_session_that_ran_its_rounds_is_left_at_once(tmp_path: Path) -> None:
    """S12: after round R_max closes the client leaves: nothing of the session stays at
    rest, and a task for round R_max + 1 finds no session."""
    world = World(tmp_path, max_rounds=2)
    world.run_rounds(1, 2)
    node = world.nodes[0]
    assert_left(node, "the session ran its 2 rounds")
    assert f"round 2: model {task(2)[:4].hex()}: included" in node.session.session_audit(2)
    sid = world.cohort.server.session.session_id
    with pytest.raises(ClientAbort) as refused:
        node.session.offer_round(RoundTask(sid, 0, 3, task(3)).encode(), ModelTask(MODEL, 3), 0.0)
    assert refused.value.reason is AbortReason.ROUND_CLOSED


# ----------------------------------------------------------------------------- rebuilt nodes
class Rebuilt(Node):
    """Before every message, a second process is made from a copy of the journal as it is
    (its state restored, never replayed), with the randomness the node is about to draw: it
    must answer with the node's very bytes."""

    copies = 0

    def answer(self, data: bytes, session: ClientSession | None = None) -> Answer:
        if session is not None:
            return super().answer(data, session)
        copy = self.path.with_name(f"copy-{self.client_id}.journal")
        copy_journal(self.path, copy)
        original = self.session
        assert isinstance(self.rng, Recorded)
        rebuilt = ClientSession(
            lambda cid, members: self.world.scheme(self.client_id),
            Journal.open(copy),
            self_id=self.client_id,
            allowed=frozenset(range(N)),
            stage_timeout=60.0,
            keep_secrets=True,
            rng=self.rng.clone(),
        )
        theirs = super().answer(data, rebuilt)
        ours = super().answer(data, original)
        assert theirs == ours
        rebuilt.journal.close()
        Rebuilt.copies += 1
        return ours


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("driver", ["engine", "local"])
def test_a_node_rebuilt_from_its_journal_answers_byte_for_byte(
    tmp_path: Path, driver: str, active: bool
) -> None:
    """Under ``keep_secrets`` (Flower may run every message in another process): at every
    step of the set-up (mid-agreement included) and of three rounds, a node rebuilt from its
    journalled state answers what the node itself answers."""
    Rebuilt.copies = 0
    world = World(tmp_path, active=active, journalled=(0, 6), node_class=Rebuilt, driver=driver)
    world.run_rounds(1, 3)
    assert world.left == {}
    per_round = 3 if active else 2
    setup = 5 if driver == "local" else 4  # the engine's set-up shares open round 1
    assert Rebuilt.copies == 2 * (setup + 3 * per_round)


def test_a_node_restarted_at_every_message_goes_on(tmp_path: Path) -> None:
    """The same with the node's own file: a fresh ``ClientSession`` (fresh randomness) for
    every message, as Flower's deployment engine may do."""

    class Hopping(Node):
        def answer(self, data: bytes, session: ClientSession | None = None) -> Answer:
            self.session.journal.close()
            self.restart(SystemRandomness())
            return super().answer(data, session)

    world = World(tmp_path, active=True, journalled=(0, 2, 4), node_class=Hopping)
    world.run_rounds(1, 3)
    assert world.left == {}


def test_a_restarted_join_leaves_its_session_and_never_journals_a_secret(
    tmp_path: Path,
) -> None:
    """``secagg join`` keeps the session's secrets in memory only: its journal never holds a
    state, and a restarted process leaves the session (it has lost its keys)."""

    class Join(Node):
        def after(self, data: bytes, answer: Answer) -> None:
            assert self.state_blob() is None

    world = World(tmp_path, keep_secrets=False, node_class=Join)
    world.run_rounds(1, 1)
    node = world.nodes[0]
    node.restart()
    assert_left(node, "the client restarted")
    world.run_rounds(2, 2)  # the others go on without it
    assert world.left == {0: AbortReason.ROUND_CLOSED}


# ----------------------------------------------------------------------------- attack A1
def secrets_of(held: session_state.Durable | None) -> dict[bytes, str]:
    """Every secret a state holds: private keys, chain keys, held shares, and the exchanges
    that sealed a round's shares (kept for the chain's step)."""
    if held is None:
        return {}
    state = held.state
    masked = state.masked if isinstance(state, Signed) else state
    found: dict[bytes, str] = {}
    for name in ("mask_keys", "cipher_keys", "next_mask_keys", "next_cipher_keys"):
        keys = getattr(masked, name, None)
        if keys is not None:
            found[keys.private_bytes()] = name
    for v, chain in getattr(masked, "chain_keys", {}).items():
        found[chain] = f"chain key with {v}"
    for v, neighbour in getattr(masked, "live", {}).items():
        found[neighbour.chain_key] = f"chain key with {v}"
        found[neighbour.key_share.value_bytes()] = f"share of {v}'s mask key"
    for v, shared in getattr(masked, "sealed_with", {}).items():
        found[shared] = f"the exchange that sealed to {v}"
    return found


class Audited(Node):
    """After every transaction: no value the node's journal stores, in any table, nor any
    byte of its files, is a secret the state does not hold (a draw it never kept, a key,
    chain key or share it dropped, a self-mask seed, the update); and the state holds what
    docs/SESSIONS.md 1.3 says, no more."""

    def __init__(self, world: World, client_id: int, keep_secrets: bool) -> None:
        super().__init__(world, client_id, keep_secrets)
        self.forbidden: dict[bytes, str] = {}
        self.held: dict[bytes, str] = {}
        self.revealed: set[bytes] = set()
        self.drawn = 0
        self.transactions = 0
        self.seeds = 0
        self.announced: tuple[bytes, bytes] | None = None  # next keys of the last message

    def set_input(self, values: NDArray[np.floating], weight: int, task: bytes) -> None:
        super().set_input(values, weight, task)
        array = np.asarray(values)
        self.forbidden[array.astype("<f8").tobytes()] = "the update (float64)"
        self.forbidden[array.astype("<f4").tobytes()] = "the update (float32)"

    def after(self, data: bytes, answer: Answer) -> None:
        self.transactions += 1
        assert isinstance(self.rng, Recorded)
        held = self.durable()
        now_held = secrets_of(held)
        contribution = None
        request = decode(data)
        reply = decode(answer.data) if answer.data else None
        if held is not None and hasattr(held.agreement, "contribution"):
            contribution = held.agreement.contribution  # revealed by design
        for value in self.rng.drawn[self.drawn :]:
            if len(value) > NONCE_BYTES and value not in now_held and value != contribution:
                self.forbidden[value] = "a draw the state does not hold"
        self.drawn = len(self.rng.drawn)
        for value, what in self.held.items():
            if value not in now_held:
                self.forbidden[value] = f"dropped: {what}"
        self.held = now_held
        if isinstance(reply, RoundMessage):
            live = self.session.live_session()
            assert live is not None
            with self.session.journal.transaction() as txn:
                entry = txn.session_round(live.seq, reply.round_number)
            assert entry is not None
            seeds = [
                d
                for d in self.rng.drawn
                if derivations.self_mask_commitment(d, entry.context, self.client_id)
                == reply.self_mask_commitment
            ]
            assert len(seeds) == 1  # the self-mask seed: drawn in this transaction, never kept
            assert self.forbidden[seeds[0]] == "a draw the state does not hold"
            self.seeds += 1
            self.announced = (reply.next_mask_public, reply.next_cipher_public)
        if isinstance(reply, SessionUnmaskResponse):
            self.revealed |= {v for _, v in (*reply.self_mask_shares, *reply.key_shares)}
        self.check_state(held, request, reply)
        self.scan()

    def check_state(
        self, held: session_state.Durable | None, request: Message, reply: Message | None
    ) -> None:
        """1.3: the private keys a state holds are exactly the ones its step may hold."""
        assert held is not None
        state = held.state
        if isinstance(state, AwaitingSetupKeys | AwaitingSetupShares):
            assert {v for v, w in secrets_of(held).items() if w.endswith("keys")} == {
                state.cipher_keys.private_bytes(),
                state.mask_keys.private_bytes(),
            }
        elif isinstance(state, Between):
            # s_u,r+1 and c_u,r+1, the keys the round's message announced (round 1's: set-up).
            if self.announced is not None:
                assert (state.mask_keys.public, state.cipher_keys.public) == self.announced
            assert len(state.live) >= self.world.cohort.terms.min_live_neighbours
        elif isinstance(state, Masked | Signed):
            masked = state if isinstance(state, Masked) else state.masked
            # c_ur, s_u,r+1, c_u,r+1; never s_ur (dropped in the transaction that sent it).
            names = {w for w in secrets_of(held).values() if w.endswith("keys")}
            assert names == {"cipher_keys", "next_mask_keys", "next_cipher_keys"}
            assert self.announced == (
                masked.next_mask_keys.public,
                masked.next_cipher_keys.public,
            )

    def scan(self) -> None:
        watched = {v: w for v, w in self.forbidden.items() if v not in self.revealed}
        stored = self.stored()
        for table, values in stored.items():
            for value in values:
                for secret, what in watched.items():
                    assert secret not in value, f"{what} is in the journal's {table}"
        raw = self.path.read_bytes()
        wal = Path(f"{self.path}-wal")
        raw += wal.read_bytes() if wal.exists() else b""
        for secret, what in watched.items():
            assert secret not in raw, f"{what} is in the journal's files"


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
@pytest.mark.parametrize("driver", ["engine", "local"])
def test_journal_holds_no_seed(tmp_path: Path, driver: str, active: bool) -> None:
    """Attack A1: after every journal transaction of a set-up and four rounds (a neighbour
    dropped in round 2, so key shares are revealed too), no value stored anywhere in the
    journal, nor any byte of its files, recomputes a secret 1.3 says is erased: no self-mask
    seed, no update, no Shamir coefficient, no private key, chain key, exchange or held share
    of a closed round; and each state holds exactly the keys 1.3 lets its step hold. The held
    shares and chain keys it holds are the ones its neighbours hold (checked after each
    round)."""
    world = World(tmp_path, active=active, journalled=(0, 1), node_class=Audited, driver=driver)
    for r in range(1, 5):
        world.run_rounds(r, r, {2: {7: Stage.MASKED_INPUT}})
        assert_neighbours_agree(world)
    per_round = 3 if active else 2
    setup = 5 if driver == "local" else 4
    for node in world.nodes.values():
        assert isinstance(node, Audited)
        assert node.seeds == 4 and node.transactions == setup + 4 * per_round
        assert node.revealed  # key shares of the dropped client were revealed


def assert_neighbours_agree(world: World) -> None:
    """Between rounds: what each client holds of each live neighbour (its keys, the pair's
    chain key, a share of its next mask key) is what that neighbour holds, and t holders'
    shares rebuild the neighbour's mask private key."""
    states: dict[int, Between] = {}
    for u, client in world.clients.items():
        if u in world.left:
            continue
        if isinstance(client, Node):
            held = client.durable()
            assert held is not None
            state = held.state
        else:
            state = client.state
        if isinstance(state, Between):
            states[u] = state
    closed = max(s.closed for s in states.values())
    states = {u: s for u, s in states.items() if s.closed == closed}  # not the silent ones
    t = world.cohort.config.threshold
    for v, owner in states.items():
        holders = [u for u, s in states.items() if v in s.live]
        for u in holders:
            seen = states[u].live[v]
            assert seen.mask_public == owner.mask_keys.public
            assert seen.cipher_public == owner.cipher_keys.public
            assert seen.chain_key == owner.live[u].chain_key
        shares = [states[u].live[v].key_share for u in holders[:t]]
        assert combine(shares, t) == owner.mask_keys.private_bytes()


# ----------------------------------------------------------------------------- attacks V4, F4
def ring_of(world: World) -> Ring:
    return Ring(world.cohort.config.ring_bits)


def unmasked_by_self_mask(
    world: World, message: RoundMessage, seed: bytes, context: bytes
) -> NDArray[np.unsignedinteger]:
    """The victim's masked input with its self mask removed (its pairwise masks stay)."""
    ring = ring_of(world)
    vector = ring.unpack(message.packed_vector, world.cohort.config.vector_length)
    prg.add_mask(vector, derivations.self_mask_key(seed, context, 0), subtract=True)
    return ring.reduce(vector)


def rebuilt_seed(
    shares: dict[int, bytes], t: int, commitment: bytes, context: bytes
) -> bytes | None:
    """The victim's self-mask seed from ``shares`` (holder -> value), if they rebuild one
    that matches ``commitment``."""
    points = [Share.from_value_bytes(one_shot.share_x(v), value) for v, value in shares.items()]
    for window in itertools.combinations(points, min(t, len(points))):
        try:
            seed = combine(list(window), t)
        except InconsistentSharesError:
            continue
        if derivations.self_mask_commitment(seed, context, 0) == commitment:
            return seed
    return None


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_rolled_back_journal_resends_round(tmp_path: Path, active: bool) -> None:
    """Attack V4 (F4: the victim's journal alone). The victim's journal file is copied after
    round 1 closed, before ``RoundMessage_2`` is written, and restored after it left: the
    rolled-back client draws fresh randomness, so its second message B differs from the first,
    A (another self-mask seed, other next-round keys, other shares), under the same round-2
    mask key. The server splits round 2's holders: some are forwarded A's ciphertexts, the
    others B's, all told the victim survived.

    Semi-honest (k = 7, t = 3): both halves reach t, so the server rebuilds both seeds and
    learns exactly x_A - x_B (the two inputs' difference: the pairwise masks are the same in
    both and cancel), never x_A or x_B alone; x_A itself where x_B is predictable. The
    rolled-back round-2 contribution is lost with the journal: it holds one.

    Active (k = 7, t = 5): 2t > k, so no split gives both halves t holders: at most one seed
    is rebuilt, the server's round is one honest round over one of the two inputs, and
    nothing of the other is learnt. The victim signed two next-round keys for round 3, the
    rollback's trace."""
    world = World(tmp_path, active=active)
    world.run_rounds(1, 1)
    victim = world.nodes[0]
    server = world.cohort.server
    backup = tmp_path / "backup.journal"
    copy_journal(victim.path, backup)

    outgoing = server.open_round(task(2))
    inputs = world.updates()
    x_a = inputs[0]
    x_b = (np.clip(np.asarray(x_a[0]) + 1.0, -7.5, 7.5), x_a[1])  # retrained: another update
    for u, client in world.clients.items():
        client.set_input(*inputs[u], task(2))
        answer = client.receive(outgoing[u].encode())
        assert answer is not None
        server.receive(u, answer.encode())
    message_a = decode(victim.sent[-1])
    assert isinstance(message_a, RoundMessage)

    # The rollback: the journal file restored, a new process with fresh OS randomness.
    victim.session.journal.close()
    copy_journal(backup, victim.path)
    victim.restart(SystemRandomness())
    victim.update = x_b
    message_b = decode(victim.answer(outgoing[0].encode()).data)
    assert isinstance(message_b, RoundMessage)
    assert message_b.self_mask_commitment != message_a.self_mask_commitment
    assert message_b.next_mask_public != message_a.next_mask_public
    assert dict(message_b.ciphertexts) != dict(message_a.ciphertexts)
    live = victim.session.live_session()
    assert live is not None
    with victim.session.journal.transaction() as txn:
        # The journal holds one round-2 message: the rolled-back one is gone with its copy.
        assert txn.contributed_in(ModelTask(MODEL, 2).fingerprint()) == InSession(live.seq, 2)
        context = txn.session_round(live.seq, 2).context  # type: ignore[union-attr]
    assert context == server.context

    outgoing = server.close_stage()
    if active:  # every member signs the one S_2 (it does not depend on A or B)
        for u, client in world.clients.items():
            answer = client.receive(outgoing[u].encode())
            assert answer is not None
            server.receive(u, answer.encode())
        outgoing = server.close_stage()
    t = world.cohort.config.threshold
    holders = sorted(v for v in outgoing if v != 0)
    assert len(holders) == 7
    # The split the attacker likes best: t holders on A's side, the rest on B's.
    side_a, side_b = holders[:t], holders[t:]
    sealed_b = dict(message_b.ciphertexts)
    shares: dict[str, dict[int, bytes]] = {"A": {}, "B": {}}
    for v in holders:
        request = outgoing[v]
        assert isinstance(request, SessionUnmaskRequest)
        if v in side_b:
            forwarded = tuple(
                ForwardedShare(
                    0,
                    sealed_b[v],
                    message_b.next_mask_public,
                    message_b.next_cipher_public,
                    message_b.next_signature,
                )
                if f.sender == 0
                else f
                for f in request.forwarded
            )
            request = dataclasses.replace(request, forwarded=forwarded)
        answer = world.clients[v].receive(request.encode())
        assert isinstance(answer, SessionUnmaskResponse)  # no honest holder can tell
        shares["A" if v in side_a else "B"][v] = dict(answer.self_mask_shares)[0]
        server.receive(v, answer.encode())

    seed_a = rebuilt_seed(shares["A"], t, message_a.self_mask_commitment, context)
    seed_b = rebuilt_seed(shares["B"], t, message_b.self_mask_commitment, context)
    assert seed_a is not None
    x_a_alone = world.cohort.expected_ring_sum({0: x_a}, (0,))  # type: ignore[dict-item]
    x_b_alone = world.cohort.expected_ring_sum({0: x_b}, (0,))  # type: ignore[dict-item]
    if active:
        # 2t > k: B's side has k - t = 2 < t holders, and no split does better.
        assert all(
            min(len(a), 7 - len(a)) < t
            for n in range(8)
            for a in itertools.combinations(holders, n)
        )
        assert seed_b is None
        # Two next-round keys of the victim for round 3, each signed: the rollback's trace.
        sid = server.session.session_id
        for message in (message_a, message_b):
            ed25519_verify(
                world.cohort.pki[0],
                derivations.next_key_signed_bytes(
                    sid, 3, 0, message.next_mask_public, message.next_cipher_public, context
                ),
                message.next_signature,
            )
    else:
        assert seed_b is not None
        # The loot: both inputs under one set of pairwise masks, which cancel in the difference.
        difference = ring_of(world).reduce(
            unmasked_by_self_mask(world, message_a, seed_a, context)
            - unmasked_by_self_mask(world, message_b, seed_b, context)
        )
        modulus = 1 << world.cohort.config.ring_bits
        assert list(difference) == [
            (a - b) % modulus for a, b in zip(x_a_alone, x_b_alone, strict=True)
        ]
        # Not either input alone: the pairwise masks are still on each.
        assert list(unmasked_by_self_mask(world, message_a, seed_a, context)) != x_a_alone
    # The server's own round: one honest sum, over A (its t holders come first).
    server.close_stage()
    included = server.result.included
    assert list(server.aggregate().ring_total) == world.cohort.expected_ring_sum(
        inputs,  # type: ignore[arg-type]
        included,
    )


# ----------------------------------------------------------------------------- rule S12
def one_shot_offer(world: World, step: int, model: bytes = MODEL) -> Offer:
    config = MaskingScheme(world.params, pki=world.cohort.pki).round_config(
        range(N), nonce=bytes(16), round_id=100 + step, task_hash=ModelTask(model, step).binding()
    )
    return Offer(config.encode(), ModelTask(model, step), round_id=100 + step)


def test_a_one_shot_round_leaves_the_live_session(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.run_rounds(1, 1)
    node = world.nodes[0]
    node.session.offer(one_shot_offer(world, 7), 5.0)
    assert_left(node, "a one-shot round began")
    # The others go on; the node answers nothing of the session any more.
    world.run_rounds(2, 2)
    assert world.left == {0: AbortReason.ROUND_CLOSED}


def test_a_session_leaves_the_live_one_shot_round_and_a_new_set_up_the_live_session(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    node = world.nodes[0]
    accepted = node.session.offer(one_shot_offer(world, 7), 0.0)
    node.session.begin(accepted, np.zeros(DIM), 1, 0.0)
    world.run_rounds(1, 1)
    (entry,) = node.session.journal.rounds()
    assert entry.outcome == "left (a session began)"
    # Another set-up (a new configuration) takes its place.
    other = Cohort(N, threshold=3, seed=2).terms
    node.session.offer_session(SessionConfig.of(other).encode(), 1.0)
    first, second = node.session.journal.sessions()
    assert first.outcome is not None and "a new set-up began" in first.outcome
    assert second.live and node.session.live_session() == second
    with node.session.journal.transaction() as txn:
        assert txn.session_state(first.seq) is None
        assert txn.session_state(second.seq) is not None


def test_one_update_one_sum_across_sessions_and_one_shot_rounds(tmp_path: Path) -> None:
    """R5 over both kinds: a task whose update entered a session round's sum is refused by a
    one-shot round, and one that entered a one-shot round's sum by a session (which leaves)."""
    world = World(tmp_path)
    world.run_rounds(1, 1)
    node = world.nodes[0]
    with pytest.raises(ClientAbort) as refused:
        node.session.offer(one_shot_offer(world, 1), 0.0)  # the model and step of round 1
    assert refused.value.reason is AbortReason.REPLAYED_TASK
    assert "session 1, round 1" in refused.value.detail
    assert node.session.live_session() is not None  # a refused offer changes nothing
    with node.session.journal.transaction() as txn:
        txn.add_contribution(ModelTask(MODEL, 2).fingerprint(), 55)  # a one-shot round's
    sid = world.cohort.server.session.session_id
    with pytest.raises(ClientAbort) as refused:
        node.session.offer_round(RoundTask(sid, 0, 2, task(2)).encode(), ModelTask(MODEL, 2), 0.0)
    assert refused.value.reason is AbortReason.REPLAYED_TASK
    assert_left(node, "replayed-task")


def test_caps_above_the_deployments_and_a_configuration_taken_before_are_refused(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, max_rounds=20, max_seconds=3600)
    node = world.nodes[0]
    config = SessionConfig.of(world.cohort.terms).encode()
    for rounds, seconds in ((10, 7200), (100, 60)):
        capped = ClientSession(
            lambda cid, members: world.scheme(0),
            Journal.open(tmp_path / f"capped-{rounds}.journal"),
            self_id=0,
            allowed=frozenset(range(N)),
            stage_timeout=60.0,
            max_session_rounds=rounds,
            max_session_seconds=seconds,
        )
        with pytest.raises(ClientAbort) as refused:
            capped.offer_session(config, 0.0)
        assert refused.value.reason is AbortReason.DOWNGRADE
        assert capped.live_session() is None
    first = node.session.offer_session(config, 0.0)
    assert node.session.offer_session(config, 0.0) == first  # a retransmission
    node.session.leave_session(AbortReason.UPDATE_FAILED, "the callback raised", 1.0)
    assert_left(node, "update-failed: the callback raised")
    node.session.offer(one_shot_offer(world, 9), 2.0)  # the session's transcript is forgotten
    with pytest.raises(ClientAbort) as refused:
        node.session.offer_session(config, 3.0)
    assert refused.value.reason is AbortReason.REPLAYED_ROUND


# ----------------------------------------------------------------------------- S14, deadlines
def test_every_round_is_charged_before_its_message_leaves_and_one_past_the_budget_is_refused(
    tmp_path: Path,
) -> None:
    """S14: each round's masked input is charged, at the minimum cohort, in the transaction
    that journals it; a round whose charge would pass the deployment's epsilon is refused
    before training and the client leaves (a deployment calibrated for two rounds)."""
    plan = two_rounds_at_epsilon_4(DIM, N).dp_plan
    assert plan is not None
    budget = ClientBudget(plan)
    world = World(tmp_path, budget=budget)
    node = world.nodes[0]
    for r in (1, 2):
        world.run_rounds(r, r)
        with node.session.journal.transaction() as txn:
            assert txn.dp_charges(budget.fingerprint) == [budget.charge] * r
    sid = world.cohort.server.session.session_id
    with pytest.raises(ClientAbort) as refused:
        node.session.offer_round(RoundTask(sid, 0, 3, task(3)).encode(), ModelTask(MODEL, 3), 0.0)
    assert refused.value.reason is AbortReason.BUDGET_EXHAUSTED
    assert_left(node, "budget-exhausted")


def test_deadlines_are_data_and_expiry_leaves_the_session(tmp_path: Path) -> None:
    world = World(tmp_path, max_seconds=3600, driver="local")
    node = world.nodes[0]
    world.cohort.clock[0] = 10.0
    world.set_up()
    # Between rounds the client waits as long as the session may last (T_max from set-up).
    assert node.session.deadline() == 10.0 + 3600
    world.cohort.clock[0] = 20.0
    outgoing = world.cohort.server.open_round(task(1))
    node.set_input(*world.updates()[0], task(1))
    node.receive(outgoing[0].encode())
    assert node.session.deadline() == 20.0 + 60.0  # within a round: the stage timeout
    assert node.session.expire(79.0) == {}
    assert node.session.live_session() is not None
    node.session.expire(80.0)
    assert_left(node, "no word from the server for 60 s")


def test_a_late_message_is_refused_when_no_one_called_expire(tmp_path: Path) -> None:
    world = World(tmp_path, driver="local")
    world.set_up()
    node = world.nodes[0]
    outgoing = world.cohort.server.open_round(task(1))
    for u, client in world.clients.items():
        client.set_input(*world.updates()[u], task(1))
        answer = client.receive(outgoing[u].encode())
        assert answer is not None
        world.cohort.server.receive(u, answer.encode())
    requests = world.cohort.server.close_stage()
    world.cohort.clock[0] = 61.0
    with pytest.raises(ClientAbort) as refused:
        node.receive(requests[0].encode())
    assert refused.value.reason is AbortReason.STAGE_TIMEOUT
    assert_left(node, "the deadline passed")


# ----------------------------------------------------------------------------- the file
def test_a_schema_1_journal_is_brought_up_to_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.journal"
    Journal.open(path).close()
    with contextlib_closing(sqlite3.connect(path)) as raw:  # as schema 1 left it
        for table in ("sessions", "session_rounds", "session_exchanges", "session_state"):
            raw.execute(f"DROP TABLE {table}")
        raw.execute("DROP TRIGGER meta_frozen")
        raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
        raw.execute(
            "CREATE TRIGGER meta_frozen BEFORE UPDATE ON meta "
            "BEGIN SELECT RAISE(ABORT, 'journal metadata is never changed'); END"
        )
        raw.execute("INSERT INTO events (round, at, kind, detail) VALUES ('7', 1.0, 'left', 'x')")
        raw.commit()
    journal = Journal.open(path)
    assert journal.sessions() == []
    assert journal.events(7) == [(1.0, Event.LEFT, "x")]
    with contextlib_closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        with pytest.raises(sqlite3.DatabaseError, match="never changed"):
            raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")


def test_one_live_session_is_the_files_own_rule(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "one.journal")
    with journal.transaction() as txn:
        txn.add_session(b"a" * 32, b"config a", 0, 0.0)
    with pytest.raises(JournalError, match="UNIQUE"), journal.transaction() as txn:
        txn.add_session(b"b" * 32, b"config b", 0, 0.0)

"""A coordinator that lies in a session that spans rounds, over the real gRPC schema and TLS,
against real ``secagg join`` processes, in both modes (docs/SESSIONS.md 4.5, "Over the wire").

Eight unmodified client processes per mode stay connected for the whole module, as a real
fleet would; the attacker (``tests/service/session_adversary.py``) sets up a session and plays
honest rounds, then its attack, and hands what the clients sent to the loot
(``tests/sessions/loot.py``), which opens every input it can. Every test asserts what the
attacker actually recovers (nothing of any client's input of any round, unless docs/SESSIONS.md
concedes it: a split view in semi-honest mode, one round of the victim per split) and what an
operator sees (the reasons the clients send back, the line each client logs). The last test
checks that after every attack every client process is alive and completes an honest session,
exactly.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import RoundAborted
from secagg.hazmat.keys import X25519KeyPair, x25519_public_from_private
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    RoundTask,
    SessionConfig,
    SessionSurvivorList,
    SessionUnmaskRequest,
)
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import AllowList, create_deployment, load_tls_server_credentials
from secagg.service.run import start_client_process
from secagg.service.tasks import random_update, random_weight
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.wire import encode_model, task_digest
from tests.service.adversary import Adversary, Reply
from tests.service.session_adversary import Fleet, WireSession
from tests.sessions.loot import pooled_shares, rebuild
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

DIM = 16
CLIENTS = 8
TASK_SEED = 0
VICTIM = 0
ALL = tuple(range(CLIENTS))
SESSION_ROUNDS = 6  # every client's cap: [coordinator] session_rounds


@dataclasses.dataclass
class Processes:
    """The fleet's processes, and how to start one again (a restarted `secagg join`)."""

    config: Path
    root: Path
    port: int
    running: dict[int, subprocess.Popen[bytes]]

    def start(self, client: int) -> None:
        self.running[client] = start_client_process(
            self.config,
            self.root / "clients" / f"client-{client}.key",
            f"127.0.0.1:{self.port}",
            self.root / f"client-{client}.log",
            task_seed=TASK_SEED,
        )

    def restart(self, client: int) -> None:
        process = self.running[client]
        process.kill()
        process.wait()
        self.start(client)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("client-*.log"))
        )

    def log(self, client: int, since: dict[int, int] | None = None) -> str:
        """The client's log (from where ``mark`` found it: this test's lines only)."""
        text = (self.root / f"client-{client}.log").read_text(errors="replace")
        return text[(since or {}).get(client, 0) :]

    def mark(self) -> dict[int, int]:
        """Where each client's log ends now."""
        return {c: len(self.log(c)) for c in self.running}


@dataclasses.dataclass
class Wire:
    fleet: Fleet
    processes: Processes


def _write_deployment(root: Path, mode: ServerModel) -> tuple[Params, Path]:
    deployment = create_deployment(root, CLIENTS)
    params = Params(
        dim=DIM,
        max_clients=CLIENTS,
        max_weight=3,
        protocol=Protocol.SECAGG,
        server_model=mode,
        # Semi-honest: t = 3 of 8, low enough that a split view can collect both kinds of
        # share of one client (what active mode exists to stop); active mode has t = 5.
        dropout_rate=0.5 if mode is ServerModel.SEMI_HONEST else 0.33,
        min_cohort=4,
    )
    path = DeploymentConfig.write(
        root,
        deployment,
        params,
        stage_timeout=10.0,
        min_clients=6,
        session_rounds=SESSION_ROUNDS,
    )
    return params, path


@pytest.fixture(
    scope="module",
    params=[ServerModel.SEMI_HONEST, ServerModel.SEMI_MALICIOUS],
    ids=["semi-honest", "active"],
)
def wire(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Wire]:
    mode: ServerModel = request.param
    root = tmp_path_factory.mktemp(f"session-wire-{mode.value}")
    params, config_path = _write_deployment(root, mode)
    config = DeploymentConfig.load(config_path)
    assert config.tls is not None and config.allow_list is not None
    allow_list = AllowList.load(config.allow_list)
    adversary = Adversary(
        allow_list, load_tls_server_credentials(config.tls), config.coordinator.max_message_bytes
    )
    port = adversary.start()
    processes = Processes(config_path, root, port, {})
    for c in ALL:
        processes.start(c)
    fleet = Fleet(
        params,
        adversary,
        dict(allow_list.keys),
        ALL,
        config.coordinator.session_rounds,
        config.coordinator.session_seconds,
        DIM,
        TASK_SEED,
        processes.logs,
    )
    try:
        adversary.wait_for(ALL, 60)
        yield Wire(fleet, processes)
    finally:
        for process in processes.running.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        adversary.stop()


def _session(wire: Wire, **terms: int) -> WireSession:
    """A new session, set up honestly (every client leaves whatever it was in)."""
    session = WireSession(wire.fleet, **terms)
    session.set_up()
    return session


def _others(session: WireSession, *excluded: int) -> tuple[int, ...]:
    return tuple(c for c in session.cohort if c not in excluded)


def _refusals(session: WireSession, clients: tuple[int, ...]) -> dict[int, str | None]:
    """Every reason each client sent the attacker in this session, in one string."""
    return {c: ", ".join(session.aborts[c]) if c in session.aborts else None for c in clients}


def _left(wire: Wire, client: int, why: str, since: dict[int, int]) -> bool:
    """The client logs, in this test, that it left a session for this reason (waited for: a
    client that leaves on a frame that needs no answer says so in its own time)."""
    line = rf"client {client} leaves session [0-9a-f]+ .*{re.escape(why)}"
    wait_until(
        lambda: re.search(line, wire.processes.log(client, since)) is not None,
        lambda: f"client {client} to say it left ({why}): {wire.processes.log(client, since)}",
        timeout=30,
    )
    return True


# ---------------------------------------------------------------------------- the attacks
def test_session_resurrection(wire: Wire) -> None:
    """Round 2: the victim's round message is held back and it is declared dropped, so its
    neighbours reveal its round-2 mask key. Round 3: the victim is listed as a survivor again
    (with its round-2 ciphertexts), to collect its self mask. Every neighbour refuses
    (``resurrected-id``: dead is forever, S7; active: S_3 is not within S_2, S10) and leaves;
    nothing of the victim's round-2 input opens."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    session.open(withhold={VICTIM})
    session.finish()
    victim_2 = session.transcript.round_messages[(2, VICTIM)]
    session.open()
    others = _others(session, VICTIM)

    def resurrect(c: int, message: Message) -> Message:
        if isinstance(message, SessionSurvivorList):
            listed = tuple(sorted((*message.survivors, VICTIM)))
            return dataclasses.replace(message, survivors=listed)
        assert isinstance(message, SessionUnmaskRequest)
        again = ForwardedShare(
            VICTIM,
            dict(victim_2.ciphertexts)[c],
            victim_2.next_mask_public,
            victim_2.next_cipher_public,
            victim_2.next_signature,
        )
        return dataclasses.replace(
            message,
            survivors=tuple(sorted((*message.survivors, VICTIM))),
            forwarded=(*message.forwarded, again),
        )

    session.deliver(session.close(), resurrect)
    assert _refusals(session, others) == dict.fromkeys(others, "resurrected-id")
    assert not any(a.round_number == 3 for a in session.transcript.answers)
    # The victim's round-2 key opened (it was declared dropped), its self mask never did.
    seeds, keys = pooled_shares(session.transcript, 2)
    assert len(keys[VICTIM]) == len(others) and VICTIM not in seeds
    assert session.loot() == {}
    assert all(_left(wire, c, "resurrected-id", since) for c in others)


def test_session_round_replay(wire: Wire) -> None:
    """After rounds 1 and 2 closed: round 2's and round 1's tasks again, byte for byte (a
    retransmission: the round message they were answered with, the same bytes, nothing new);
    round 2's task again on another model (``replayed-round``); round 4's (a gap:
    ``round-out-of-order``); round 2's unmask request again (byte for byte: the same answer)
    and then another one for round 2 (refused); and round 3's task to a client whose `join`
    restarted (``round-closed``: it holds nothing of the session). Every refusal is a
    departure; no new round message or unmask answer leaves for any of them."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    session.round()
    adversary = wire.fleet.adversary
    sid = session.server.session.session_id
    model = encode_model(np.zeros(DIM, dtype=np.float32))

    def answer(client: int, frame: pb.ServerFrame) -> Reply:
        adversary.send_frame(client, frame)
        reply = adversary.reply(client)
        assert reply is not None
        return reply

    def task_frame(client: int, round_number: int, changed: bytes = model) -> pb.ServerFrame:
        step = next(wire.fleet.ids)
        task = RoundTask(sid, client, round_number, task_digest(changed, step))
        return pb.ServerFrame(
            session_task=pb.SessionTask(
                round_id=step, round_task=task.encode(), model=changed, step=step
            )
        )

    # The same tasks, byte for byte: the same round messages, nothing new.
    for client, r in ((1, 2), (2, 1)):
        sent = session.transcript.round_messages[(r, client)].encode()
        assert answer(client, session.openings[(client, r)]).frame.protocol == sent
    # Round 2 again on another model; round 4 (a gap).
    other = encode_model(np.full(DIM, 0.5, dtype=np.float32))
    assert answer(3, task_frame(3, 2, other)).abort == "replayed-round"
    assert answer(5, task_frame(5, 4)).abort == "round-out-of-order"

    # The last request, byte for byte: its journalled answer again. Another: refused.
    request = session.sent[(4, SessionUnmaskRequest.STAGE)]
    adversary.send(4, request)
    again = adversary.reply(4)
    assert again is not None and again.frame.protocol == session.answers[(4, 2)]
    adversary.send(4, session.request(4, _others(session, 5), round_number=2))
    refused = adversary.reply(4)
    assert refused is not None and refused.abort == "unexpected-message"

    # A restarted `join` holds nothing of the session: it refuses the next round's task.
    stale = adversary.connections.get(6)
    wire.processes.restart(6)
    wait_until(lambda: adversary.connections.get(6) not in (None, stale), "client 6 again")
    assert answer(6, task_frame(6, 3)).abort == "round-closed"
    assert "round-closed: this client is in no session" in wire.processes.log(6, since)

    assert sorted({r for r, _ in session.transcript.round_messages}) == [1, 2]
    assert adversary.drain(ALL) == []
    assert session.loot() == {}
    assert _left(wire, 3, "replayed-round", since)
    assert _left(wire, 5, "round-out-of-order", since)
    assert _left(wire, 4, "unexpected-message", since)


def test_session_split_view(wire: Wire) -> None:
    """Round 2: t of the victim's neighbours are told it dropped (they reveal its round-2
    mask key), the others that it survived (they reveal its self mask). Semi-honest mode: the
    documented concession, exactly the victim's round-2 input and nothing else, and no client
    sees it (docs/SESSIONS.md 2.3). Active mode: the two survivor sets are signed by too few to
    certify either; every client refuses to reveal anything."""
    session = _session(wire)
    session.round()
    since = wire.processes.mark()  # (the set-up made every client leave its last session)
    session.open()
    members = set(session.server.members)
    told_dropped = session.neighbours(VICTIM)[: session.config.threshold]
    if not wire.fleet.active:
        honest = session.close()

        def split(c: int, message: Message) -> Message:
            return session.request(c, members - {VICTIM}) if c in told_dropped else message

        session.deliver(honest, split)
        loot = session.loot()
        assert set(loot) == {(VICTIM, 2)}
        assert session.opens(loot[(VICTIM, 2)], VICTIM, 2)
        assert not any("leaves session" in wire.processes.log(c, since) for c in ALL)
        return
    lists = session.close()

    def split_list(c: int, message: Message) -> Message:
        assert isinstance(message, SessionSurvivorList)
        if c in told_dropped:
            return dataclasses.replace(message, survivors=tuple(sorted(members - {VICTIM})))
        return message

    session.deliver(lists, split_list)
    signed = {c: s.signature for (c, r), s in session.signatures.items() if r == 2}
    short = {c: signed[c] for c in told_dropped if c in signed}
    full = {c: sig for c, sig in signed.items() if c not in told_dropped}
    requests = {
        c: session.request(c, members - {VICTIM}, signatures=short)
        if c in told_dropped
        else session.request(c, members, signatures=full)
        for c in signed
    }
    session.deliver(requests)
    assert all(session.aborts.get(c) for c in ALL), session.aborts
    assert not any(a.round_number == 2 for a in session.transcript.answers)
    assert session.loot() == {}


def test_session_late_input(wire: Wire) -> None:
    """Round 2 closes without the victim (its round message held back, its round-2 key
    revealed as a dropout's), then the attacker asks its neighbours again for round 2, with
    the victim's message as a survivor's. Every neighbour refuses (one answer per round, S13)
    and leaves; the victim's input stays behind its self mask. The victim, told round 2 ended
    without it, leaves the session (S4)."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    session.open(withhold={VICTIM})
    session.finish()
    session.end()
    members = set(session.transcript.members[2])
    others = _others(session, VICTIM)
    session.deliver({c: session.request(c, members, round_number=2) for c in others})
    assert _refusals(session, others) == dict.fromkeys(others, "unexpected-message")
    seeds, keys = pooled_shares(session.transcript, 2)
    assert VICTIM in keys and VICTIM not in seeds
    assert session.loot() == {}
    assert _left(wire, VICTIM, "the coordinator ended round", since)
    assert all(_left(wire, c, "unexpected-message", since) for c in others)


def test_session_model_split(wire: Wire) -> None:
    """Round 2: the victim is sent another model than everyone else, and a second client a
    model its task does not name. The second refuses before training (``model-mismatch``).
    The victim masks under its own round context (S8). Semi-honest mode: its ciphertexts fail
    at every neighbour, which answers round 2 without its share and then leaves, and so does
    the victim; its masks never cancel and the round cannot be revealed. Active mode: its
    next-round keys are signed under its own context, so its message is refused outright and
    round 2 closes without it (the victim, told so, leaves). Either way nothing opens."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    other_model = encode_model(np.full(DIM, 0.25, dtype=np.float32))
    mismatched = 1
    session.open(models={VICTIM: other_model, mismatched: other_model}, misnamed={mismatched})
    assert session.aborts[mismatched] == ["model-mismatch"]
    assert _left(wire, mismatched, "model-mismatch", since)
    neighbours = set(session.neighbours(VICTIM)) - {mismatched}
    if wire.fleet.active:
        session.finish()
        assert session.server.result.included == _others(session, VICTIM, mismatched)
        session.end()
        assert _left(wire, VICTIM, "the coordinator ended round", since)
    else:
        with pytest.raises(RoundAborted):
            session.finish()
        why = "at round 2: bad-peer-key"
        assert all(_left(wire, c, why, since) for c in (*neighbours, VICTIM))
    assert session.loot() == {}


def test_session_both_shares(wire: Wire) -> None:
    """Both kinds of share of one peer for one round: (a) round 2's request answered with the
    victim a survivor, then another listing it dropped: refused, nothing more revealed; (c)
    round 3 closes with the victim dropped (its message held back): its round-3 key opens,
    which opens round 3's pairwise masks and nothing of round 2 (its self mask opened then) or
    of round 4 (that key is another)."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    session.open()
    session.finish()
    session.end()
    members = set(session.transcript.members[2])
    others = _others(session, VICTIM)
    session.deliver({c: session.request(c, members - {VICTIM}, round_number=2) for c in others})
    assert _refusals(session, others) == dict.fromkeys(others, "unexpected-message")
    assert session.loot() == {}
    assert all(_left(wire, c, "unexpected-message", since) for c in others)

    # (c): a new session (those who refused have left), round 2 with the victim, round 3
    # without it.
    session = _session(wire)
    session.round()
    session.round()
    session.open(withhold={VICTIM})
    session.finish()
    _, keys = pooled_shares(session.transcript, 3)
    key = rebuild(keys[VICTIM], session.config.threshold, lambda k: True)
    assert key is not None
    public = x25519_public_from_private(key)
    assert public == session.transcript.members[3][VICTIM].mask_public
    assert public != session.transcript.members[2][VICTIM].mask_public
    assert public != session.transcript.round_messages[(3, VICTIM)].next_mask_public
    assert session.loot() == {}


def test_session_next_key_substitution(wire: Wire) -> None:
    """Round 2's request to the victim carries next-round mask keys the attacker made (and,
    to a second victim, next-round cipher keys), hoping they mask round 3 with keys the
    attacker holds. Each checks the keys against what its neighbours sealed (and, in active
    mode, signed): it answers round 2, then leaves (S6); round 3's task is refused; nothing
    of round 3 is ever masked, nothing opens."""
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    session.open()
    second = 1
    fakes = iter(
        X25519KeyPair.generate(DeterministicRandomness(bytes([i]) * 32)).public
        for i in range(8, 40)
    )

    def substitute(c: int, message: Message) -> Message:
        if not isinstance(message, SessionUnmaskRequest) or c not in (VICTIM, second):
            return message
        if c == VICTIM:
            forwarded = tuple(
                dataclasses.replace(f, next_mask_public=next(fakes)) for f in message.forwarded
            )
        else:
            forwarded = tuple(
                dataclasses.replace(f, next_cipher_public=next(fakes)) for f in message.forwarded
            )
        return dataclasses.replace(message, forwarded=forwarded)

    session.finish(substitute)
    session.end()
    why = "bad-signature" if wire.fleet.active else "bad-peer-key"
    assert _left(wire, VICTIM, f"at round 2: {why}", since)
    assert _left(wire, second, f"at round 2: {why}", since)
    session.open()
    assert session.aborts[VICTIM][-1] == "round-closed"
    assert session.aborts[second][-1] == "round-closed"
    assert (3, VICTIM) not in session.transcript.round_messages
    assert (3, second) not in session.transcript.round_messages
    assert session.loot() == {}


def test_session_one_by_one(wire: Wire) -> None:
    """Each round the attacker excludes one more of the victim's neighbours (its round message
    held back, so its round key is revealed as a dropout's), hoping to strip the victim's
    masks one by one. Each exclusion opens one round of the excluded client's pairwise masks
    and nothing of the victim (S1); nobody's self mask opens. In active mode the exclusion
    that would leave the victim fewer than t live neighbours in the survivor set is refused by
    every signer (S10), and the victim is then below ``k_min`` (S5): nothing more is revealed.
    """
    since = wire.processes.mark()
    session = _session(wire)
    session.round()
    excluded: list[int] = []
    least = session.terms.min_live_neighbours
    for w in _others(session, VICTIM):
        # While the victim keeps k_min live neighbours and the cohort its minimum.
        members = len(session.server.members)
        if members - 2 < least or members - 1 < wire.fleet.params.min_cohort:
            break
        session.open(withhold={w})
        session.finish()
        session.end()
        excluded.append(w)
        assert _left(wire, w, "the coordinator ended round", since)
    assert len(excluded) >= 2
    live = session.server.members[VICTIM].live  # for the next round
    assert not set(excluded) & live and len(live) == CLIENTS - 1 - len(excluded)
    # Every excluded client's round key opened, never its self mask; nothing of the victim.
    for r, w in enumerate(excluded, start=2):
        seeds, keys = pooled_shares(session.transcript, r)
        assert w in keys and w not in seeds and VICTIM not in keys
    assert session.loot() == {}
    if wire.fleet.active:
        # One more: every signer would hold fewer than t live neighbours in the set.
        w = next(c for c in _others(session, VICTIM) if c not in excluded)
        session.open(withhold={w})
        signers = set(session.server.members) - {w}
        with pytest.raises(RoundAborted):  # the honest coordinator would not even ask
            session.close()
        sid = session.server.session.session_id
        r = session.server.round_number
        listed = tuple(sorted(signers))
        session.deliver({c: SessionSurvivorList(sid, c, r, listed) for c in signers})
        assert _refusals(session, tuple(sorted(signers))) == dict.fromkeys(
            sorted(signers), "below-threshold"
        )
        assert session.loot() == {}


def test_session_caps(wire: Wire) -> None:
    """A session of more rounds, or more seconds, than the client's deployment allows is
    refused before any key (``downgrade``: weaker caps than the deployment's); in a session
    within the caps, the client leaves once it has run its last round, so a task past it finds
    no session (``round-closed``), before any training."""
    since = wire.processes.mark()
    adversary = wire.fleet.adversary
    for terms in ({"max_rounds": SESSION_ROUNDS + 1}, {"max_seconds": wire.fleet.max_seconds + 1}):
        session = WireSession(wire.fleet, **terms)
        config = SessionConfig.of(session.terms).encode()
        adversary.drain(ALL)
        for c in ALL:
            adversary.send_frame(
                c, pb.ServerFrame(task=pb.Task(round_id=session.round_id, round_config=config))
            )
        replies = adversary.replies(ALL)
        assert {c: r.abort if r else None for c, r in replies.items()} == dict.fromkeys(
            ALL, "downgrade"
        )
    session = _session(wire, max_rounds=2)
    session.round()
    session.round()
    sid = session.server.session.session_id
    model = encode_model(np.zeros(DIM, dtype=np.float32))
    step = next(wire.fleet.ids)
    for c in ALL:
        late = RoundTask(sid, c, 3, task_digest(model, step))
        adversary.send_frame(
            c,
            pb.ServerFrame(
                session_task=pb.SessionTask(
                    round_id=step, round_task=late.encode(), model=model, step=step
                )
            ),
        )
    replies = adversary.replies(ALL)
    assert {c: r.abort if r else None for c, r in replies.items()} == dict.fromkeys(
        ALL, "round-closed"
    )
    assert all("ran its 2 rounds" in wire.processes.log(c, since) for c in ALL)
    assert (3, VICTIM) not in session.transcript.round_messages
    assert session.loot() == {}


def test_after_every_attack_every_client_is_alive_and_completes_an_honest_session(
    wire: Wire,
) -> None:
    for c, process in wire.processes.running.items():
        assert process.poll() is None, (c, wire.processes.log(c)[-2000:])
    session = _session(wire)
    for r in (1, 2):
        session.open()
        session.finish()
        result = session.server.result
        assert result.included == ALL
        aggregate = session.server.aggregate()
        weights = np.array([random_weight(c) for c in ALL], dtype=np.float64)
        updates = np.stack([random_update(c, DIM, session.steps[r], TASK_SEED) for c in ALL])
        exact = weights @ updates.astype(np.float64) / weights.sum()
        assert np.max(np.abs(aggregate.mean - exact)) <= aggregate.error_bound
        session.end()
    assert "Traceback" not in wire.fleet.logs()

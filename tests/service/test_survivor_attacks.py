"""Active mode's survivor certificate over the wire: a coordinator that cuts the SecAgg+ ring
or shows two halves of it two survivor sets, against unmodified ``secagg join`` processes.

Forty client processes of one active deployment (adversarial_rate 0.05 and dropout_rate 0.1,
for which the parameter finder gives degree 12 and threshold 8 at forty clients: the survivor
rule is a quorum of 22 and at least 3 members of S in every window of 6 ring slots) stay
connected to the lying coordinator (``tests/service/adversary.py``) for the whole module. The
attacks are the sans-I/O ones of ``tests/protocol/test_survivor_certificate.py`` played over
the real gRPC schema and TLS; the verdict is what the attacker's loot unmasks
(``Loot.recoverable_sums``), beside the abort frames the clients send. The last test checks
that every process is still alive and completes an honest active round with the exact mean.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort, RoundAborted
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message
from secagg.protocol.stages import Stage
from secagg.schemes.masking.client import Client
from secagg.schemes.masking.encoding import QuantizedEncoding
from secagg.schemes.masking.graph import SurvivorRule, _ring
from secagg.schemes.masking.messages import (
    ConsistencySignature,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
)
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.server import Server
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import AllowList, create_deployment, load_tls_server_credentials
from secagg.service.identity import ClientIdentity
from secagg.service.run import start_client_process
from secagg.service.tasks import random_update, random_weight
from secagg.service.wire import encode_model, task_digest
from tests.protocol.loot import Loot
from tests.service import test_wire_attacks as wire
from tests.service.adversary import Adversary, Reply

pytestmark = pytest.mark.timeout(300)

DIM = 4
CLIENTS = 40
DEGREE, THRESHOLD = 12, 8
HALF = DEGREE // 2
TASK_SEED = 0
# The clients whose identity keys the attacker holds: in a cut round it plays them itself
# (their processes get no task), signing whatever it likes.
CORRUPT = frozenset({3, 11, 17, 24, 30, 37})
PERMISSIVE = SurvivorRule(quorum=1, window=0, least_in_window=0)


@dataclass
class Fleet:
    params: Params
    adversary: Adversary
    root: Path
    processes: dict[int, subprocess.Popen[bytes]]
    pki: dict[int, bytes]
    identities: dict[int, ClientIdentity]
    round_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @staticmethod
    def model() -> bytes:
        return encode_model(np.zeros(DIM, dtype=np.float32))

    def config(self) -> RoundConfig:
        round_id = next(self.round_ids)
        return self.params.round_config(
            tuple(range(CLIENTS)),
            nonce=round_id.to_bytes(16, "big"),
            round_id=round_id,
            task_hash=task_digest(self.model(), round_id),
        )

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("client-*.log"))
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("survivor-attacks")
    deployment = create_deployment(root, CLIENTS)
    params = Params(
        dim=DIM,
        max_clients=CLIENTS,
        max_weight=3,
        protocol=Protocol.SECAGG_PLUS,
        server_model=ServerModel.SEMI_MALICIOUS,
        adversarial_rate=0.05,
        dropout_rate=0.1,
        min_cohort=CLIENTS - DEGREE,
    )
    # The deployment file carries the rates, not degree/threshold: these rates give 12 and 8.
    graph = params.graph(CLIENTS)
    assert (graph.degree, graph.threshold) == (DEGREE, THRESHOLD)
    assert params.survivor_rule(CLIENTS, DEGREE) == SurvivorRule(22, HALF, 3, corrupt=2)
    path = DeploymentConfig.write(root, deployment, params, stage_timeout=30.0, min_clients=CLIENTS)
    config = DeploymentConfig.load(path)
    assert config.params == params
    assert config.tls is not None and config.allow_list is not None
    allow_list = AllowList.load(config.allow_list)
    adversary = Adversary(
        allow_list, load_tls_server_credentials(config.tls), config.coordinator.max_message_bytes
    )
    port = adversary.start()
    processes = {
        c: start_client_process(
            path,
            deployment.identities[c],
            f"127.0.0.1:{port}",
            root / f"client-{c}.log",
            task_seed=TASK_SEED,
        )
        for c in range(CLIENTS)
    }
    identities = {c: ClientIdentity.load(deployment.identities[c]) for c in CORRUPT}
    fleet = Fleet(params, adversary, root, processes, dict(allow_list.keys), identities)
    try:
        adversary.wait_for(range(CLIENTS), 120)
        yield fleet
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        adversary.stop()


@dataclass
class Round:
    """An attacker-driven round: a real ``Server`` computes the honest messages; the ids in
    ``played`` are answered by the attacker's own sans-I/O clients instead of their processes."""

    fleet: Fleet
    played: frozenset[int] = frozenset()
    config: RoundConfig = field(init=False)
    server: Server = field(init=False)
    outgoing: dict[int, Message] = field(init=False)
    clients: dict[int, Client] = field(init=False)
    loot: Loot | None = None
    aborts: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        params = self.fleet.params
        self.config = self.fleet.config()
        n = len(self.config.client_ids)
        self.server = Server(
            self.config,
            pki=self.fleet.pki,
            survivor_rule=params.survivor_rule(n, self.config.degree),
        )
        self.clients = {
            c: Client(
                self.config,
                c,
                DeterministicRandomness(
                    hashlib.sha256(f"attacker/{self.config.round_id}/{c}".encode()).digest()
                ),
                identity=self.fleet.identities[c].signing_key,
                pki=self.fleet.pki,
                encoding=QuantizedEncoding(params.quantizer),
                survivor_rule=PERMISSIVE,  # the attacker's clients sign what it likes
            )
            for c in self.played
        }
        self.outgoing = self.server.start()

    @property
    def step(self) -> int:
        return self.config.round_id

    @property
    def processes(self) -> tuple[int, ...]:
        return tuple(c for c in self.config.client_ids if c not in self.played)

    def deliver(self, messages: dict[int, Message]) -> dict[int, Message | None]:
        """Send each client its message; what each sent back (None: an abort, or silence)."""
        adversary = self.fleet.adversary
        answers: dict[int, Message | None] = {}
        remote = [c for c in messages if c not in self.played]
        for c in remote:
            m = messages[c]
            if isinstance(m, RoundConfig):
                adversary.send_task(c, m, self.fleet.model(), self.step)
            else:
                adversary.send(c, m)
        for c in messages:
            if self.loot is not None:
                self.loot.sent(c, messages[c])
        for c in (c for c in messages if c in self.played):
            client = self.clients[c]
            if client.needs_input(messages[c]):
                client.set_input(random_update(c, DIM, self.step, TASK_SEED), random_weight(c))
            try:
                answers[c] = client.receive(messages[c])
            except ClientAbort as exc:
                self.aborts[c] = exc.reason.value
                answers[c] = None
        replies: dict[int, Reply | None] = adversary.replies(remote) if remote else {}
        for c, reply in replies.items():
            if reply is not None and reply.abort is not None:
                self.aborts[c] = reply.abort
            answers[c] = None if reply is None else reply.message
        if self.loot is not None:
            for c, answer in answers.items():
                if answer is not None:
                    self.loot.take(c, answer)
        return answers

    def stage(self, ignore: frozenset[int] = frozenset(), close: bool = True) -> None:
        """One honest stage; the answers of ``ignore`` are dropped on the floor."""
        for c, answer in self.deliver(self.outgoing).items():
            if answer is not None and c not in ignore:
                self.server.receive(c, answer.encode())
        if close:
            self.outgoing = self.server.close_stage()
        if self.loot is None and self.server.stage is Stage.ADVERTISE:
            self.loot = Loot(self.config, self.server.session.session_id)

    def until(self, stage: Stage) -> None:
        while self.server.stage is not stage:
            self.stage()

    def ring_order(self) -> list[int]:
        ids = self.config.client_ids
        ring, _ = _ring(len(ids), self.server.session.graph_seed)
        return [ids[p] for p in ring.tolist()]

    def end(self, included: tuple[int, ...] = ()) -> None:
        self.fleet.adversary.end_round(self.processes, self.config.round_id, included)
        self.fleet.adversary.drain(self.processes)


def _find_cut(order: list[int]) -> tuple[list[int], list[int]] | None:
    """Two windows of k/2 ring slots, each holding exactly t - k/2 corrupt clients, with an
    arc of at least k/2 + 1 slots on either side of each (so that every client next to the cut
    still finds t neighbours in S)."""
    n, per_window = len(order), THRESHOLD - HALF

    def window(start: int) -> list[int]:
        return [order[(start + i) % n] for i in range(HALF)]

    for a in range(n):
        if sum(c in CORRUPT for c in window(a)) != per_window:
            continue
        for b in range(a + 2 * HALF + 1, a + n - 2 * HALF):
            if sum(c in CORRUPT for c in window(b)) == per_window:
                return window(a), window(b % n)
    return None


# ---------------------------------------------------------------------------- the ring cut
def test_a_survivor_set_that_cuts_the_ring_is_refused_by_every_honest_client_and_unmasks_nothing(
    fleet: Fleet,
) -> None:
    """The coordinator sees the ring (aborting rounds until the clients it holds fall as it
    needs: two in each of two windows), declares the honest clients of both windows dropped
    at the advertise stage and shows every client the one survivor set."""
    for _ in range(30):
        r = Round(fleet, played=CORRUPT)
        r.until(Stage.ADVERTISE)  # commit and reveal: the session, and so the ring, is fixed
        cut = _find_cut(r.ring_order())
        if cut is not None:
            gap = frozenset(c for c in cut[0] + cut[1] if c not in CORRUPT)
            assert len(gap) == 2 * (HALF - (THRESHOLD - HALF))
            try:
                r.stage(ignore=gap)  # advertise: the gap's keys never reach the server
                break
            except RoundAborted:  # the honest server's own pruning: try another ring
                pass
        r.end()
    else:
        pytest.fail("the ring never fell so that the corrupt clients could cut it")
    corrupt_keys = {c: r.clients[c].state.mask_keys.private_bytes() for c in CORRUPT}  # type: ignore[union-attr]
    r.stage()  # share
    r.stage(close=False)  # masked inputs
    assert r.loot is not None
    survivors = tuple(sorted(r.loot.masked))
    assert set(survivors) == set(range(CLIENTS)) - gap
    assert len(survivors) >= fleet.params.min_cohort
    sid = r.server.session.session_id
    answers = r.deliver({c: SurvivorList(sid, c, survivors) for c in survivors})
    honest = [c for c in survivors if c not in CORRUPT]
    assert {c: r.aborts.get(c) for c in honest} == dict.fromkeys(
        honest, AbortReason.SURVIVORS_CUT.value
    )
    # Only the attacker's own clients signed: six signatures, no certificate any honest
    # client would unmask against, and the loot holds no share at all.
    signatures = {c: a.signature for c, a in answers.items() if isinstance(a, ConsistencySignature)}
    assert set(signatures) == CORRUPT
    assert r.loot.self_mask_shares == {} and r.loot.key_shares == {}
    assert r.loot.recoverable_sums(corrupt_keys) == {}
    r.end()


# ---------------------------------------------------------------------------- split views
def test_two_halves_of_the_ring_shown_two_survivor_sets_unmask_nothing(fleet: Fleet) -> None:
    """Each half is shown a set leaving out one honest client of the other half (each passes
    every local check: size, window, neighbours), then asked to unmask with the signatures on
    its own set: each half holds 20 signers, short of the quorum of 22."""
    r = Round(fleet)
    r.until(Stage.MASKED_INPUT)
    r.stage(close=False)
    assert r.loot is not None
    order = r.ring_order()
    survivors = tuple(sorted(r.loot.masked))
    assert survivors == tuple(range(CLIENTS))
    left, right = order[: CLIENTS // 2], order[CLIENTS // 2 :]
    views = {
        **{c: tuple(u for u in survivors if u != right[10]) for c in left},
        **{c: tuple(u for u in survivors if u != left[10]) for c in right},
    }
    sid = r.server.session.session_id
    shown = {c: view for c, view in views.items() if c in view}
    answers = r.deliver({c: SurvivorList(sid, c, view) for c, view in shown.items()})
    signed: dict[tuple[int, ...], dict[int, bytes]] = {}
    for c, answer in answers.items():
        assert isinstance(answer, ConsistencySignature), (c, r.aborts.get(c))
        signed.setdefault(shown[c], {})[c] = answer.signature
    assert len(signed) == 2
    neighbours = r.server.session.neighbours
    requests: dict[int, Message] = {}
    for view, signatures in signed.items():
        for c in signatures:
            masked_with = list(r.loot.masked_with[c])
            near = neighbours(c)
            certificate = sorted(signatures.items(), key=lambda e: (e[0] not in near, e[0]))
            requests[c] = UnmaskRequest(
                sid,
                c,
                tuple(u for u in masked_with if u in view),
                tuple(u for u in masked_with if u not in view),
                tuple(certificate),
            )
    answers = r.deliver(requests)
    assert all(a is None for a in answers.values())
    assert {c: r.aborts.get(c) for c in requests} == dict.fromkeys(
        requests, AbortReason.BELOW_THRESHOLD.value
    )
    assert r.loot.self_mask_shares == {} and r.loot.key_shares == {}
    assert r.loot.recoverable_sums() == {}
    r.end()


# ---------------------------------------------------------------------------- and afterwards
def test_after_the_attacks_every_process_is_alive_and_completes_an_honest_active_round(
    fleet: Fleet,
) -> None:
    r = Round(fleet)
    while not r.server.done:
        r.stage()
    result = r.server.result
    wire.assert_exact_mean(result, fleet.params, CLIENTS, DIM, r.step)
    r.end(included=result.included)
    assert all(p.poll() is None for p in fleet.processes.values())
    logs = fleet.logs()
    assert "Traceback" not in logs
    audit = (
        f"round {r.config.round_id}: server model semi-malicious, secagg+ k={DEGREE} t={THRESHOLD}"
    )
    assert logs.count(audit) == CLIENTS

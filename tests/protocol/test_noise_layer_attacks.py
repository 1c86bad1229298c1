"""A lying server against real clients of a round with removable noise (docs/XNOISE.md).

Each test drives the real one-shot clients of a deployment with noise layers (ten clients,
minimum cohort six, so m = 6 and M = 10; A = 1 at a 10% adversarial rate) up to the unmask
stage with the real server, then plays the server's lie and asserts on what it actually
holds afterwards (``Loot``): which layer seeds it can rebuild, checked against the clients'
own commitments, and so which noise it could take off the sum.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from secagg.client_session import ClientSession, Offer
from secagg.dp.calibrate import DpConfig
from secagg.errors import AbortReason, ClientAbort, RoundAborted
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.journal import Journal
from secagg.protocol.codec import Message, decode
from secagg.protocol.runner import RoundRun
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.client import Client
from secagg.schemes.masking.graph import ServerModel, SurvivorRule
from secagg.schemes.masking.messages import (
    LayerAnswer,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.schemes.masking.parameters import Params, Protocol
from secagg.schemes.masking.removal import NoiseRemoval
from secagg.schemes.masking.server import Stage
from secagg.service.wire import ModelTask
from tests.protocol.harness import Harness
from tests.protocol.loot import Loot

CLIENTS = 10
MIN_COHORT = 6
DIM = 16
CORRUPT = 1  # floor(0.1 x 10): the finder's A for this cohort
TASK = ModelTask(np.zeros(DIM, dtype="<f4").tobytes(), 0)


def deployment(*, active: bool) -> Params:
    dp = DpConfig(
        dim=DIM,
        l2_clip=1.0,
        bits=20,
        min_clients=MIN_COHORT,
        max_clients=CLIENTS,
        delta=1e-5,
        target_epsilon=4.0,
        noise_layers=True,
    )
    return Params(
        dim=DIM,
        max_clients=CLIENTS,
        protocol=Protocol.SECAGG,
        adversarial_rate=0.1,
        dropout_rate=0.3,
        min_cohort=MIN_COHORT,
        server_model=ServerModel.SEMI_MALICIOUS if active else ServerModel.SEMI_HONEST,
        dp=dp,
    )


class Round:
    """The real server and clients of one round, driven stage by stage; every client message
    is kept (the attacker's loot)."""

    def __init__(self, *, active: bool, seed: int = 1) -> None:
        params = deployment(active=active)
        rng = DeterministicRandomness(hashlib.sha256(f"xnoise/{seed}".encode()).digest())
        self.scheme = params.simulated(range(CLIENTS), rng)
        self.config = self.scheme.round_config(range(CLIENTS), nonce=rng.bytes(16))
        self.server = self.scheme.server(self.config)
        self.clients: dict[int, Client] = {
            i: self.scheme.client(self.config, i, rng.fork(f"client/{i}")) for i in range(CLIENTS)
        }
        plan = params.dp_plan
        assert plan is not None
        self.removal = NoiseRemoval(plan, params.corrupt(CLIENTS))
        assert self.removal.corrupt == CORRUPT
        self.taken: list[tuple[int, Message]] = []
        self.outgoing: dict[int, Message] = self.server.start()

    def run_until(self, stage: Stage, *, silent_at_masking: Iterable[int] = ()) -> None:
        """Run the honest round until the server has sent the messages of ``stage``; the
        clients in ``silent_at_masking`` never send their masked inputs."""
        silent = set(silent_at_masking)
        while self.server.stage is not stage:
            current = self.server.stage
            for i, message in self.outgoing.items():
                if current is Stage.MASKED_INPUT and i in silent:
                    continue
                client = self.clients[i]
                if client.needs_input(message):
                    client.set_input(np.full(DIM, 0.01))
                reply = client.receive(message.encode())
                self.taken.append((i, reply))
                self.server.receive(i, reply.encode())
            self.outgoing = self.server.close_stage()

    def ask(self, client_id: int, request: Message) -> UnmaskResponse | None:
        """What a client releases to a (forged) request: its answer, or None if it refused."""
        try:
            reply = self.clients[client_id].receive(request.encode())
        except ClientAbort:
            return None
        assert isinstance(reply, UnmaskResponse)
        self.taken.append((client_id, reply))
        return reply

    def request(self, client_id: int) -> UnmaskRequest:
        request = self.outgoing[client_id]
        assert isinstance(request, UnmaskRequest)
        return request

    def loot(self) -> Loot:
        loot = Loot(self.config, self.server.session.session_id)
        for i, message in self.taken:
            loot.take(i, message)
        return loot


def recount(request: UnmaskRequest, count: int) -> UnmaskRequest:
    return UnmaskRequest(
        request.session_id,
        request.recipient,
        request.survivors,
        request.dropped,
        request.signatures,
        count,
    )


def non_nested_counts(removal: NoiseRemoval) -> tuple[int, int]:
    """Two counts whose removed layers together strip more than either alone: why a second
    answer must never be given (X5)."""
    counts = range(MIN_COHORT + CORRUPT, CLIENTS + 1)
    best = max(
        itertools.combinations(counts, 2),
        key=lambda pair: len(set(removal.removed(pair[0])) | set(removal.removed(pair[1]))),
    )
    first, second = set(removal.removed(best[0])), set(removal.removed(best[1]))
    assert not first <= second and not second <= first
    return best


def test_a_second_request_with_a_larger_count_gets_nothing() -> None:
    """Every client answers the honest request at the true count (eight inputs); a second
    request for the same round claiming all ten gets no answer at all, and the server holds
    the seeds of exactly the layers eight inputs remove, for the eight included clients."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK, silent_at_masking=(8, 9))
    askable = sorted(r.outgoing)
    for i in askable:
        assert r.request(i).count == 8
        assert r.ask(i, r.request(i)) is not None
    for i in askable:
        assert r.ask(i, recount(r.request(i), CLIENTS)) is None
    loot = r.loot()
    removed = frozenset(r.removal.removed(8))
    assert removed  # h = 7 in [6, 10]: some layers do come off
    for u in range(8):
        assert loot.layers_recovered(u) == removed
    for u in (8, 9):  # listed as dropped: nothing of their noise
        assert loot.layers_recovered(u) == frozenset()


def test_two_counts_for_one_round_cannot_both_be_answered() -> None:
    """The removed sets are not nested, so answers at two counts could together strip more
    layers than either count allows. Each client answers the first count it is asked at and
    refuses the second: the server rebuilds exactly the first count's layers."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK)
    first, second = non_nested_counts(r.removal)
    for i in sorted(r.outgoing):
        assert r.ask(i, recount(r.request(i), first)) is not None
        assert r.ask(i, recount(r.request(i), second)) is None
    loot = r.loot()
    for u in range(CLIENTS):
        assert loot.layers_recovered(u) == frozenset(r.removal.removed(first))


def test_layer_shares_never_go_with_a_key_share_nor_for_a_peer_listed_dropped() -> None:
    """A split view (semi-honest mode has no certificate): all but t - 1 holders are told
    the victim dropped, so they release its mask-key share; the rest list it as a survivor.
    No answer carries a layer share of a peer whose key share it carries or whose self-mask
    share it withholds, and the server rebuilds none of the victim's layers (nor its input)."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK)
    victim = 0
    t = r.config.threshold
    holders = [i for i in sorted(r.outgoing) if i != victim]
    for n, i in enumerate(holders):
        request = r.request(i)
        if n >= t - 1:
            request = UnmaskRequest(
                request.session_id,
                i,
                tuple(u for u in request.survivors if u != victim),
                tuple(sorted((*request.dropped, victim))),
                request.signatures,
                request.count,
            )
        reply = r.ask(i, request)
        assert reply is not None and reply.layers is not None
        layer_owners = {u for u, _, _ in reply.layers.shares}
        assert layer_owners <= {u for u, _ in reply.self_mask_shares}
        assert layer_owners.isdisjoint(u for u, _ in reply.key_shares)
        assert layer_owners <= set(request.survivors)
    loot = r.loot()
    assert loot.layers_recovered(victim) == frozenset()
    assert loot.recover(victim) is None


def test_semi_honest_a_count_above_the_participants_is_refused() -> None:
    """The count is the server's word in semi-honest mode, but never above the round's
    participants: such a request is refused and nothing of the client's is released."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK)
    for i in sorted(r.outgoing):
        with pytest.raises(ClientAbort) as refused:
            r.clients[i].receive(recount(r.request(i), CLIENTS + 1).encode())
        assert refused.value.reason is AbortReason.INCONSISTENT_SURVIVORS
    loot = r.loot()
    for u in range(CLIENTS):
        assert loot.layers_recovered(u) == frozenset()
        assert loot.self_mask_seed(u) is None


def test_active_a_count_not_backed_by_the_certificate_releases_nothing() -> None:
    """In active mode the count is the certified survivor set's size: a request stating
    any other count is refused, and nothing is released."""
    r = Round(active=True)
    r.run_until(Stage.UNMASK, silent_at_masking=(9,))
    for i in sorted(r.outgoing):
        honest = r.request(i)
        assert honest.count == 9
        with pytest.raises(ClientAbort) as refused:
            r.clients[i].receive(recount(honest, CLIENTS).encode())
        assert refused.value.reason is AbortReason.INCONSISTENT_SURVIVORS
    loot = r.loot()
    for u in range(CLIENTS):
        assert loot.layers_recovered(u) == frozenset()
        assert loot.self_mask_seed(u) is None


def test_active_the_certified_count_is_what_comes_off() -> None:
    """The honest active round: every answer is at |S| = 9, h = 8, and the server rebuilds
    exactly those layers of the nine included clients."""
    r = Round(active=True)
    r.run_until(Stage.UNMASK, silent_at_masking=(9,))
    for i in sorted(r.outgoing):
        reply = r.ask(i, r.request(i))
        assert reply is not None and reply.layers is not None
        assert (reply.layers.count, reply.layers.corrupt) == (9, CORRUPT)
    loot = r.loot()
    for u in range(9):
        assert loot.layers_recovered(u) == frozenset(r.removal.removed(9))
    assert loot.layers_recovered(9) == frozenset()


def test_a_count_below_the_minimum_plus_a_removes_nothing() -> None:
    """Semi-honest: a count of m = 6 vouches for 6 - A = 5 honest inputs, below m: the
    answer states w = 0 and carries no layer share (X2)."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK)
    for i in sorted(r.outgoing):
        reply = r.ask(i, recount(r.request(i), MIN_COHORT))
        assert reply is not None and reply.layers is not None
        assert (reply.layers.count, reply.layers.corrupt, reply.layers.units) == (6, 1, 0)
        assert reply.layers.shares == ()
    loot = r.loot()
    for u in range(CLIENTS):
        assert loot.layers_recovered(u) == frozenset()


def test_active_no_client_signs_a_set_with_fewer_than_m_plus_a_members() -> None:
    """X9: a one-shot active client signs S only if |S| - A >= m. A survivor set of m = 6
    (five honest inputs if one is corrupt) is refused by every member shown it, so no such
    set is ever certified and no count in [m, m + A) is ever answered."""
    r = Round(active=True)
    r.run_until(Stage.CONSISTENCY)
    shown = tuple(range(MIN_COHORT))
    for i in shown:
        lie = SurvivorList(r.server.session.session_id, i, shown)
        with pytest.raises(ClientAbort) as refused:
            r.clients[i].receive(lie.encode())
        assert refused.value.reason is AbortReason.COHORT_TOO_SMALL
    assert all(not isinstance(m, UnmaskResponse) for _, m in r.taken)


def test_the_journalled_client_answers_a_second_count_with_its_recorded_answer_or_nothing(
    tmp_path: Path,
) -> None:
    """Through the client session and its journal (what ``secagg join`` and ``SecAggMod``
    run): the same request again gets the recorded bytes; the same round asked at a larger
    count is refused (the round is closed), and the audit line records c, A and w."""
    params = deployment(active=False)
    scheme = MaskingScheme(params)
    config = scheme.round_config(range(CLIENTS), nonce=bytes(16), task_hash=TASK.binding())
    sessions = {
        i: ClientSession(
            lambda cid, members: MaskingScheme(params),
            Journal.open(tmp_path / f"node-{i}.journal"),
            self_id=i,
            allowed=frozenset(range(CLIENTS)),
            stage_timeout=60.0,
        )
        for i in range(CLIENTS)
    }
    server = scheme.server(config)
    run = RoundRun(server)
    for stage, outgoing in run.stages():
        if stage is Stage.UNMASK:
            break
        for i, message in outgoing.items():
            session = sessions[i]
            if isinstance(message, RoundConfig):
                accepted = session.offer(Offer(config.encode(), TASK, round_id=0), 0.0)
                reply = session.begin(accepted, np.full(DIM, 0.01), 1, 0.0).data
            else:
                reply = session.receive(message.encode(), 0.0).data
            server.receive(i, reply)
    victim = sessions[0]
    request = outgoing[0]
    assert isinstance(request, UnmaskRequest) and request.count == CLIENTS
    first = victim.receive(request.encode(), 0.0).data
    assert victim.receive(request.encode(), 0.0).data == first
    with pytest.raises(ClientAbort) as refused:
        victim.receive(recount(request, CLIENTS - 1).encode(), 0.0)
    assert refused.value.reason is AbortReason.ROUND_CLOSED
    answer = decode(first)
    assert isinstance(answer, UnmaskResponse) and answer.layers is not None
    removal = NoiseRemoval(params.dp_plan, CORRUPT)  # type: ignore[arg-type]
    units = removal.units(CLIENTS)
    assert (answer.layers.count, answer.layers.corrupt, answer.layers.units) == (10, 1, units)
    assert f"noise layers at count c=10, A=1: w={units} unit(s)" in victim.audit(0)


def test_a_layer_seed_that_cannot_be_rebuilt_stays_in_the_sum_and_is_reported() -> None:
    """Partial removal: t + 1 clients answer, and one of them alters its share of one layer
    seed of a peer that only t answering clients hold. No t shares of that seed match its
    commitment, so the server subtracts nothing for it (never a wrong layer): the round
    completes with that layer left in, counted in what the round states."""
    r = Round(active=False)
    r.run_until(Stage.UNMASK)
    t = r.config.threshold
    answering = sorted(r.outgoing)[: t + 1]
    owner, liar = answering[0], answering[1]
    layer = r.removal.removed(CLIENTS)[0]
    for i in answering:
        reply = r.ask(i, r.request(i))
        assert reply is not None and reply.layers is not None
        if i == liar:
            shares = tuple(
                (u, j, value[:-1] + bytes([value[-1] ^ 1]) if (u, j) == (owner, layer) else value)
                for u, j, value in reply.layers.shares
            )
            reply = UnmaskResponse(
                reply.session_id,
                reply.client_id,
                reply.self_mask_shares,
                reply.key_shares,
                LayerAnswer(reply.layers.count, reply.layers.corrupt, reply.layers.units, shares),
            )
        r.server.receive(i, reply.encode())
    assert r.server.close_stage() == {}
    taken = r.server.aggregate().noise_taken_off
    assert taken is not None
    assert (taken.count, taken.units, taken.layers_left) == (
        CLIENTS,
        r.removal.units(CLIENTS),
        1,
    )


@pytest.mark.parametrize(("silent", "certifiable"), [((6, 7), True), ((5, 6, 7), False)])
def test_the_honest_server_asks_no_one_to_sign_a_set_below_m_plus_a(
    silent: tuple[int, ...], certifiable: bool
) -> None:
    """X9 on the server's side: with A = 2 and a minimum cohort of 4, six inputs go on to
    be signed and five end the round before anyone signs or reveals anything (every
    client would refuse to sign them)."""
    rule = SurvivorRule(quorum=1, window=0, least_in_window=0, corrupt=2)
    h = Harness(n=8, threshold=3, active=True, min_cohort=4, rule=rule)
    h.advertise()
    h.share()
    if certifiable:
        outgoing = h.mask(skip=silent)
        assert all(isinstance(m, SurvivorList) for m in outgoing.values())
    else:
        with pytest.raises(RoundAborted, match="honest"):
            h.mask(skip=silent)

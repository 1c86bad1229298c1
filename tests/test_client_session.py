"""The client session keeps every promise in its journal, whoever holds the rest of its state.

Real sans-I/O clients and a real server; each client's journal is a real SQLite file. The
server side is played by the test and lies the way a ServerApp or coordinator can: it
retransmits, asks twice with different content, sends two messages at once, rolls a node's
process back (a fresh session object on the same journal), replays rounds and tasks, and
claims rounds ended in ways the client never saw.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from secagg.client_session import Accepted, ClientSession, Offer
from secagg.dp.budget import ClientBudget
from secagg.dp.calibrate import DpConfig
from secagg.errors import AbortReason, ClientAbort, JournalError
from secagg.journal import Event, Journal
from secagg.protocol.codec import decode
from secagg.protocol.runner import RoundRun
from secagg.protocol.stages import Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.messages import (
    CommitmentDigest,
    RoundConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.schemes.masking.parameters import Params, Protocol
from secagg.schemes.masking.server import Server
from secagg.service.wire import ModelTask

N = 5
DIM = 8
PARAMS = Params(dim=DIM, max_clients=N, protocol=Protocol.SECAGG, min_cohort=3, clip=4.0)
MODEL = np.zeros(DIM, dtype="<f4").tobytes()


def updates() -> dict[int, np.ndarray]:
    return {i: np.full(DIM, 0.25 * (i + 1)) for i in range(N)}


class Node:
    """One client: its session over its own journal file."""

    def __init__(self, path: object, client_id: int, *, keep_secrets: bool = True) -> None:
        self.path = path
        self.client_id = client_id
        self.keep_secrets = keep_secrets
        self.session = self.restart()

    def restart(self) -> ClientSession:
        """A fresh process on the same journal: nothing from memory survives."""
        self.session = ClientSession(
            lambda cid, members: MaskingScheme(PARAMS),
            Journal.open(self.path),  # type: ignore[arg-type]
            self_id=self.client_id,
            allowed=frozenset(range(N)),
            stage_timeout=60.0,
            keep_secrets=self.keep_secrets,
        )
        return self.session

    def offer(self, config: RoundConfig, step: int = 0, now: float = 0.0) -> Accepted:
        return self.session.offer(
            Offer(config.encode(), ModelTask(MODEL, step), round_id=config.round_id), now
        )


@pytest.fixture
def nodes(tmp_path: object) -> list[Node]:
    return [Node(tmp_path / f"node-{i}.journal", i) for i in range(N)]  # type: ignore[operator]


def round_config(round_id: int = 1, step: int = 0) -> RoundConfig:
    return MaskingScheme(PARAMS).round_config(
        range(N), nonce=bytes(16), round_id=round_id, task_hash=ModelTask(MODEL, step).binding()
    )


def stages(
    nodes: list[Node], config: RoundConfig, step: int = 0
) -> Iterator[tuple[Stage, dict[int, bytes], Server]]:
    """Drive a real server; yields each stage's outgoing messages before answering them."""
    server = MaskingScheme(PARAMS).server(config)
    run = RoundRun(server)
    for stage, outgoing in run.stages():
        encoded = {cid: message.encode() for cid, message in outgoing.items()}
        yield stage, encoded, server
        for cid, data in encoded.items():
            node = nodes[cid]
            try:
                if isinstance(outgoing[cid], RoundConfig):
                    accepted = node.offer(config, step)
                    reply = node.session.begin(accepted, updates()[cid], 1, 0.0).data
                else:
                    reply = node.session.receive(data, 0.0).data
            except ClientAbort:
                continue
            server.receive(cid, reply)


def run_round(nodes: list[Node], config: RoundConfig, step: int = 0) -> Server:
    servers = [server for _, _, server in stages(nodes, config, step)]
    return servers[-1]


def first_survivor_listed_as_dropped(request: UnmaskRequest) -> UnmaskRequest:
    """The same unmask request, but asking for the key share of its first survivor."""
    return UnmaskRequest(
        request.session_id,
        request.recipient,
        request.survivors[1:],
        (*request.dropped, request.survivors[0]),
        request.signatures,
    )


def test_an_honest_round_sums_and_every_journal_says_included(nodes: list[Node]) -> None:
    server = run_round(nodes, round_config())
    result = server.aggregate()
    assert result.included == tuple(range(N))
    np.testing.assert_allclose(result.mean, np.mean(list(updates().values()), axis=0), atol=1e-3)
    for node in nodes:
        assert node.session.included(1)
        assert "cohort 5, min cohort 3: included; answered the unmask" in node.session.audit(1)
        (entry,) = node.session.journal.rounds()
        assert entry.outcome == "answered to the end" and entry.attempts == 1


def test_a_retransmitted_request_gets_the_same_answer_and_a_second_request_nothing(
    nodes: list[Node],
) -> None:
    victim = nodes[0]
    config = round_config()
    for stage, outgoing, _ in stages(nodes, config):
        if stage is Stage.UNMASK:
            request = decode(outgoing[0])
            assert isinstance(request, UnmaskRequest)
            first = victim.session.receive(outgoing[0], 0.0).data
            assert victim.session.receive(outgoing[0], 0.0).data == first
            # The same node asked again with peer 1 listed as dropped: its key share.
            other = UnmaskRequest(
                request.session_id,
                request.recipient,
                tuple(u for u in request.survivors if u != 1),
                (*request.dropped, 1),
                request.signatures,
            )
            with pytest.raises(ClientAbort) as refused:
                victim.session.receive(other.encode(), 0.0)
            assert refused.value.reason is AbortReason.ROUND_CLOSED
            answer = decode(first)
            assert isinstance(answer, UnmaskResponse) and answer.key_shares == ()
            break
    events = victim.session.journal.events(1)
    assert [kind for _, kind, _ in events].count(Event.REVEALED) == 1
    assert Event.RETRANSMITTED in [kind for _, kind, _ in events]


def test_a_restarted_process_rebuilds_the_round_from_the_journal_and_refuses_a_rollback(
    nodes: list[Node],
) -> None:
    """Flower's simulation engine may run each message in another process and write a stale
    Context back: the round's client comes from the journal alone, which only grows."""
    config = round_config()
    for stage, outgoing, _ in stages(nodes, config):
        if stage is Stage.MASKED_INPUT:
            for node in nodes:
                node.restart()  # every node's next message meets a fresh process
        if stage is Stage.UNMASK:
            victim = nodes[0]
            answer = victim.session.receive(outgoing[0], 0.0).data
            victim.restart()
            assert victim.session.receive(outgoing[0], 0.0).data == answer  # the same bytes again
            request = decode(outgoing[0])
            assert isinstance(request, UnmaskRequest)
            flipped = first_survivor_listed_as_dropped(request)
            with pytest.raises(ClientAbort):
                victim.session.receive(flipped.encode(), 0.0)


def answer_at_once(twins: list[Node], requests: list[bytes]) -> list[object]:
    """Each twin (a process of its own on one journal) handed its request at one moment."""
    results: list[object] = [None] * len(twins)
    barrier = threading.Barrier(len(twins))

    def answer(k: int) -> None:
        barrier.wait()
        try:
            results[k] = twins[k].session.receive(requests[k], 0.0).data
        except ClientAbort as exc:
            results[k] = exc

    threads = [threading.Thread(target=answer, args=(k,)) for k in range(len(twins))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_messages_for_one_node_at_once_are_answered_one_after_the_other(
    nodes: list[Node],
) -> None:
    """Two processes with the same journal, each handed a different unmask request at the
    same moment: exactly one is answered."""
    config = round_config()
    for stage, outgoing, _ in stages(nodes, config):
        if stage is Stage.UNMASK:
            request = decode(outgoing[0])
            assert isinstance(request, UnmaskRequest)
            flipped = first_survivor_listed_as_dropped(request)
            twins = [Node(nodes[0].path, 0) for _ in range(2)]
            results = answer_at_once(twins, [outgoing[0], flipped.encode()])
            assert sum(isinstance(r, bytes) for r in results) == 1
            assert sum(isinstance(r, ClientAbort) for r in results) == 1
            break


def test_a_round_id_is_taken_once_and_no_id_locks_a_client_out(nodes: list[Node]) -> None:
    node = nodes[0]
    node.offer(round_config(round_id=2**64 - 1))
    with pytest.raises(ClientAbort) as replayed:
        node.offer(round_config(round_id=2**64 - 1, step=1), 1)
    assert replayed.value.reason is AbortReason.REPLAYED_ROUND
    node.offer(round_config(round_id=3, step=2), 2)  # a smaller id is still fresh
    node.restart()
    with pytest.raises(ClientAbort) as after_restart:
        node.offer(round_config(round_id=3, step=3), 3)
    assert after_restart.value.reason is AbortReason.REPLAYED_ROUND


def test_a_task_whose_update_entered_a_sum_is_refused_even_after_a_restart(
    nodes: list[Node],
) -> None:
    server = run_round(nodes, round_config(round_id=1, step=7), step=7)
    assert server.aggregate().included == tuple(range(N))
    for node in nodes:
        node.restart()
        with pytest.raises(ClientAbort) as refused:
            node.offer(round_config(round_id=2, step=7), 7)
        assert refused.value.reason is AbortReason.REPLAYED_TASK


def test_a_task_whose_round_ended_before_masking_may_be_trained_again(nodes: list[Node]) -> None:
    config = round_config(round_id=1, step=7)
    for stage, _, _ in stages(nodes, config, step=7):
        if stage is Stage.SHARE:
            break
    for node in nodes:
        node.offer(round_config(round_id=2, step=7), 7)  # the same model and step


def test_a_restarted_join_leaves_its_live_round(tmp_path: object) -> None:
    node = Node(tmp_path / "join.journal", 0, keep_secrets=False)  # type: ignore[operator]
    accepted = node.offer(round_config())
    node.session.begin(accepted, updates()[0], 1, 0.0)
    node.restart()
    (entry,) = node.session.journal.rounds()
    assert entry.outcome == "left (the client restarted)"
    with pytest.raises(ClientAbort) as refused:
        node.session.receive(b"anything", 1.0)
    assert refused.value.reason is AbortReason.ROUND_CLOSED


def test_the_deadline_is_data_and_expiry_erases_the_round_secrets(nodes: list[Node]) -> None:
    node = nodes[0]
    accepted = node.offer(round_config())
    first = node.session.begin(accepted, updates()[0], 1, 100.0)
    assert first
    assert node.session.deadline() == 160.0
    assert node.session.expire(159.0) == {}
    assert node.session.expire(160.0) == {1: "no word from the server for 60 s"}
    with node.session.journal.transaction() as txn:
        assert txn.secrets(1) is None
    assert ": no word from the server for 60 s after attempt 1; no key advertised" in (
        node.session.audit(1)
    )


def test_a_late_message_is_refused_when_no_one_called_expire(nodes: list[Node]) -> None:
    node = nodes[0]
    node.session.begin(node.offer(round_config()), updates()[0], 1, 0.0)
    with pytest.raises(ClientAbort) as late:
        node.session.receive(b"\x00", 61.0)
    assert late.value.reason is AbortReason.STAGE_TIMEOUT


def test_the_audit_believes_the_client_not_the_coordinator(nodes: list[Node]) -> None:
    """A coordinator that collects commitments, keeps asking to commit again, then says
    'completed, included': the audit says what the client did."""
    config = round_config()
    for stage, _, _ in stages(nodes, config):
        if stage is Stage.REVEAL:
            break
    line = nodes[0].session.server_ended(1, True, True, 5.0)
    assert line == (
        "round 1: server model semi-honest, secagg k=4 t=3, cohort 5, min cohort 3: ended by the "
        "coordinator after attempt 1; no key advertised (the coordinator says: completed, included)"
    )
    assert not nodes[0].session.included(1)


def test_a_digest_claiming_more_commitments_than_the_cohort_is_refused(nodes: list[Node]) -> None:
    node = nodes[0]
    config = round_config()
    node.session.begin(node.offer(config), updates()[0], 1, 0.0)
    digest = CommitmentDigest(config.config_id, 0, 1, bytes(32), 2**32 - 1)
    with pytest.raises(ClientAbort) as refused:
        node.session.receive(digest.encode(), 1.0)
    assert refused.value.reason is AbortReason.INVALID_CONFIG


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: object) -> None:
    path = tmp_path / "not-a-journal"  # type: ignore[operator]
    path.write_bytes(b"hello")
    with pytest.raises(JournalError):
        Journal.open(path)


def test_a_journal_others_may_read_is_refused_not_used(tmp_path: object) -> None:
    """A journal holds a live round's seed and update: a file made readable to others (or
    created so before the client ran) is refused with what is wrong, and left as it was."""
    import os
    from pathlib import Path

    path = Path(str(tmp_path)) / "exposed.journal"
    Journal.open(path).close()
    os.chmod(path, 0o644)
    with pytest.raises(JournalError, match="its mode is 644: others may read or change it"):
        Journal.open(path)
    assert path.stat().st_mode & 0o777 == 0o644
    os.chmod(path, 0o600)
    Journal.open(path).close()


def two_rounds_at_epsilon_4(dim: int = DIM, clients: int = N) -> Params:
    """A deployment whose distributed DP is calibrated for 2 rounds at epsilon 4."""
    dp = DpConfig(
        dim=dim,
        l2_clip=1.0,
        bits=20,
        min_clients=3,
        max_clients=clients,
        delta=1e-5,
        target_epsilon=4.0,
        rounds=2,
    )
    return Params(dim=dim, max_clients=clients, protocol=Protocol.SECAGG, min_cohort=3, dp=dp)


def test_a_round_beyond_the_dp_budget_is_refused_also_after_a_restart(tmp_path: object) -> None:
    """A deployment calibrated for 2 rounds at epsilon 4: the client's own accountant, over the
    charges in its journal, refuses the third round before it trains."""
    params = two_rounds_at_epsilon_4()
    assert params.dp_plan is not None
    budget = ClientBudget(params.dp_plan)
    path = tmp_path / "dp.journal"  # type: ignore[operator]

    def session() -> ClientSession:
        return ClientSession(
            lambda cid, members: MaskingScheme(params),
            Journal.open(path),
            self_id=0,
            allowed=None,
            stage_timeout=60.0,
            budget=budget,
        )

    def config(round_id: int) -> RoundConfig:
        return MaskingScheme(params).round_config(
            range(N),
            nonce=bytes(16),
            round_id=round_id,
            task_hash=ModelTask(MODEL, round_id).binding(),
        )

    client = session()
    for round_id in (1, 2):
        offer = Offer(config(round_id).encode(), ModelTask(MODEL, round_id), round_id=round_id)
        client.offer(offer, 0.0)
        # The charge is made when the noised input leaves: record it as the session does.
        with client.journal.transaction() as txn:
            txn.add_dp_charge(budget.fingerprint, round_id, budget.charge)
    client = session()  # a restarted process
    with pytest.raises(ClientAbort) as refused:
        client.offer(Offer(config(3).encode(), ModelTask(MODEL, 3), round_id=3), 0.0)
    assert refused.value.reason is AbortReason.BUDGET_EXHAUSTED
    with client.journal.transaction() as txn:
        assert budget.spent(txn.dp_charges(budget.fingerprint)) <= 4.0 * (1 + 1e-9)


def test_history_prints_what_the_client_did_from_its_journal(nodes: list[Node]) -> None:
    from typer.testing import CliRunner

    from secagg.cli import app

    run_round(nodes, round_config(round_id=1, step=0))
    nodes[0].session.server_ended(1, True, True, 9.0)
    result = CliRunner().invoke(app, ["history", "--journal", str(nodes[0].path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("round 1: server model semi-honest, secagg k=4 t=3, cohort 5")
    assert "included; answered the unmask request (self-mask shares of [1,2,3,4] (4); " in lines[0]
    assert lines[0].endswith("(the coordinator says: completed, included)")
    assert lines[1].startswith("1 round(s) in ")


def test_a_journal_held_exclusively_refuses_a_second_process(tmp_path: object) -> None:
    """`secagg join` holds its journal for its life: a second client process with the same
    identity is told so, instead of closing the first one's live round as 'restarted'."""
    path = tmp_path / "one.journal"  # type: ignore[operator]
    first = Journal.open(path, exclusive=True)
    with pytest.raises(JournalError, match="another client process holds the journal"):
        Journal.open(path, exclusive=True)
    first.close()
    Journal.open(path, exclusive=True).close()


def test_the_nodes_own_configuration_is_pinned_at_first_use(nodes: list[Node]) -> None:
    node = nodes[0]

    def offer(round_id: int, persona: bytes) -> None:
        config = round_config(round_id=round_id, step=round_id)
        task = ModelTask(MODEL, round_id)
        node.session.offer(Offer(config.encode(), task, round_id=round_id, persona=persona), 0.0)

    offer(1, b"partition 3")
    offer(2, b"partition 3")
    node.restart()
    with pytest.raises(ClientAbort) as changed:
        offer(3, b"partition 0")  # the victim's data, handed to this node by its Context
    assert changed.value.reason is AbortReason.INVALID_CONFIG


def test_a_session_configuration_offered_as_a_round_is_refused(nodes: list[Node]) -> None:
    """A ``SessionConfig`` opens a session (``offer_session``), never a one-shot round."""
    from secagg.schemes.masking.session.messages import SessionConfig
    from secagg.schemes.masking.session.terms import SessionTerms

    terms = SessionTerms.carrying(round_config())
    with pytest.raises(ClientAbort) as refused:
        nodes[0].session.offer(Offer(SessionConfig.of(terms).encode(), ModelTask(MODEL, 0)), 0.0)
    assert refused.value.reason is AbortReason.INVALID_CONFIG
    assert nodes[0].session.journal.rounds() == []

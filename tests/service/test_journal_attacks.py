"""What a lying coordinator can no longer do to a client that keeps a journal.

Every client is an unmodified ``secagg join`` process; its journal is ``<identity>.journal``,
beside the identity file it is started with, so a process killed and started again on the
same identity file has the same journal (docs/CLIENT_SESSION.md, R1-R10). The coordinator is
the wire-attack suite's liar (``tests/service/adversary.py``: the deployment's own TLS
certificate, the real gRPC schema, any frame it likes), and the fleet is that suite's: eight
join processes of a semi-honest deployment (what the journal decides does not depend on the
server model). Each test states one thing the liar tries, and asserts on what it gets back
(the frames the clients send it, judged with ``Loot`` where there is anything to judge) and
on what the operator sees: the join processes' log lines and ``secagg history --identity F``,
run as a real process.

1. Collecting the contributions of three commit/reveal attempts and throwing them away, then
   saying ``RoundEnd{completed, included}``, buys the coordinator nothing: the client's audit
   says it was ended by the coordinator after attempt 3 with no key advertised, and shows the
   claim only as the coordinator's word; the client counts no included round (R8). After
   several such rounds, an honest round is completed, and included, by every client.
2. A task whose update entered a sum is refused before training under any new round id, also
   after the client process is killed and started again (R5). A task whose round ended before
   the masked input left may be trained again.
3. No round id, not even 2^64 - 1, locks a client out of later, smaller ones; and a round id
   the journal holds is refused, also after a restart (R4). (Expected to fail, and marked so:
   ending such a refused replay with ``RoundEnd{completed, included}`` still moves the
   client's own count of included rounds.)
4. Under distributed DP, the round past the client's own budget is refused, also after a
   restart; the charge was made when the masked input left, whatever the coordinator then said
   (R6), and ``secagg history --config`` shows the epsilon spent against the budget.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secagg.dp.budget import ClientBudget
from secagg.dp.settings import DpSettings
from secagg.errors import AbortReason
from secagg.protocol.codec import Message
from secagg.protocol.stages import Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.messages import (
    Commitment,
    CommitmentDigest,
    CommitRequest,
    Reveal,
    RoundConfig,
)
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import AllowList, create_deployment, load_tls_server_credentials
from secagg.service.run import start_client_process
from tests.protocol.loot import Loot
from tests.service import test_wire_attacks as wire
from tests.service.adversary import Adversary, Reply
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

# The wire-attack suite's fleet (module scoped: eight join processes stay up across tests,
# as a real fleet would), in semi-honest mode only.
fleet = wire.fleet
semi_honest = pytest.mark.parametrize(
    "fleet", [ServerModel.SEMI_HONEST], ids=["semi-honest"], indirect=True
)
Fleet = wire.Fleet

U64_MAX = 2**64 - 1
VICTIM = wire.VICTIM  # whose history a test reads, where one client's is enough
LIES = 3  # lying rounds in a row
DP_CLIENTS = 4
DP_ROUNDS = 2  # the rounds the DP deployment's budget covers
DP_EPSILON = 8.0


# ---------------------------------------------------------------------------- the fleet's processes
def _identity(fleet: Fleet, client: int) -> Path:
    return fleet.root / "clients" / f"client-{client}.key"


def _cohort(fleet: Fleet) -> tuple[int, ...]:
    return tuple(sorted(fleet.processes))


def start(fleet: Fleet, *, rounds: int | None = None, clients: range | None = None) -> None:
    """Start every client's ``secagg join`` again on its own identity file, so on its own
    journal; a process still running is killed first (SIGKILL: nothing of its memory is left).
    ``rounds``: each process leaves by itself once that many rounds have ended."""
    adversary = fleet.adversary
    ids = list(fleet.processes if clients is None else clients)
    before = {c: adversary.connections.get(c) for c in ids}
    for c in ids:
        process = fleet.processes.get(c)
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
        fleet.processes[c] = start_client_process(
            fleet.root / "deployment.toml",
            _identity(fleet, c),
            f"127.0.0.1:{adversary.port}",
            fleet.root / f"client-{c}.log",
            task_seed=wire.TASK_SEED,
            rounds=rounds,
        )
    wait_until(
        lambda: all(adversary.connections.get(c) not in (None, before[c]) for c in ids),
        "the restarted clients to reconnect",
    )


def running(fleet: Fleet) -> Fleet:
    """The fleet, every process up (a test may start from another's end)."""
    if any(process.poll() is not None for process in fleet.processes.values()):
        start(fleet)
    return fleet


def log_of(fleet: Fleet, client: int) -> str:
    return (fleet.root / f"client-{client}.log").read_text(errors="replace")


def history(
    fleet: Fleet, *flags: str, clients: tuple[int, ...] | None = None
) -> dict[int, list[str]]:
    """``secagg history --identity F`` of every client (or of ``clients``), as the operator
    runs it."""
    command = [sys.executable, "-m", "secagg", "history", *flags, "--identity"]
    runs = {
        c: subprocess.Popen(
            [*command, str(_identity(fleet, c))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for c in (fleet.processes if clients is None else clients)
    }
    lines: dict[int, list[str]] = {}
    for c, run in runs.items():
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        lines[c] = out.splitlines()
    return lines


def line_of(lines: list[str], round_id: int) -> str:
    """The one history line of a round."""
    found = [line for line in lines if line.startswith(f"round {round_id}: ")]
    assert len(found) == 1, (round_id, lines)
    return found[0]


# ---------------------------------------------------------------------------- what the liar sends
def new_config(
    fleet: Fleet, *, round_id: int | None = None, step: int | None = None
) -> RoundConfig:
    """A round configuration as the deployment makes it, for a fresh round id (or
    ``round_id``), bound to the model at ``step`` (by default the round id)."""
    if round_id is None:
        round_id = next(fleet.round_ids)
    return fleet.params.round_config(
        _cohort(fleet),
        nonce=next(_nonces).to_bytes(16, "big"),
        round_id=round_id,
        task_hash=fleet.task_hash(round_id if step is None else step),
    )


_nonces = itertools.count(1)


def agreed(config: RoundConfig) -> str:
    """The head of every audit line of a round: what the client agreed to."""
    return (
        f"round {config.round_id}: server model semi-honest, {config.protocol} "
        f"k={config.degree} t={config.threshold}, cohort {len(config.client_ids)}, "
        f"min cohort {config.min_cohort}"
    )


def answers(fleet: Fleet, kind: type[Message]) -> dict[int, Message]:
    """Every client's next frame, which must be a ``kind``."""
    replies = fleet.adversary.replies(_cohort(fleet))
    messages = {c: None if reply is None else reply.message for c, reply in replies.items()}
    assert all(isinstance(m, kind) for m in messages.values()), replies
    return messages  # type: ignore[return-value]


def collect_contributions_and_claim_success(
    fleet: Fleet,
) -> tuple[RoundConfig, Loot, dict[int, list[str]]]:
    """Three commit/reveal attempts: every contribution collected, none used. Then
    ``RoundEnd{completed, included}`` to every client. What the liar holds: its loot, and the
    kinds of message each client sent it, in order."""
    adversary, cohort = fleet.adversary, _cohort(fleet)
    config = new_config(fleet)
    loot = Loot(config, session_id=b"")  # no session is ever agreed
    before = len(adversary.sent_up)
    for attempt in (1, 2, 3):
        for c in cohort:
            if attempt == 1:  # the task itself asks for the first commitment
                adversary.send_task(c, config, fleet.model(), config.round_id)
            else:
                adversary.send(c, CommitRequest(config.config_id, c, attempt))
        commitments = answers(fleet, Commitment)
        taken = sorted((c, m.commitment) for c, m in commitments.items())  # type: ignore[attr-defined]
        digest = derive.commitment_digest(config.config_id, attempt, taken)
        for c in cohort:
            adversary.send(c, CommitmentDigest(config.config_id, c, attempt, digest, len(taken)))
        answers(fleet, Reveal)
    assert adversary.drain(cohort) == []  # and nothing else
    sent: dict[int, list[str]] = {c: [] for c in cohort}
    for c, frame in adversary.sent_up[before:]:
        message = Reply(c, frame).message
        assert message is not None
        loot.take(c, message)
        sent[c].append(type(message).__name__)
    adversary.end_round(cohort, config.round_id, included=cohort)
    return config, loot, sent


def refused(fleet: Fleet, config: RoundConfig, step: int) -> dict[int, Reply]:
    """Offer every client a task: its first and only answer must be an abort, no commitment
    and so no key. (The reasons the tests expect are decided on the task itself, before the
    update callback runs: nothing is trained.)"""
    adversary, cohort = fleet.adversary, _cohort(fleet)
    for c in cohort:
        adversary.send_task(c, config, fleet.model(), step)
    replies = adversary.replies(cohort)
    assert all(reply is not None and reply.abort is not None for reply in replies.values()), replies
    assert adversary.drain(cohort) == []
    return replies  # type: ignore[return-value]


def aborts(replies: dict[int, Reply]) -> dict[int, tuple[str | None, str]]:
    return {c: (reply.abort, reply.frame.abort.detail) for c, reply in replies.items()}


class SchemeRound(wire.Round):
    """The wire suite's attacker-driven round, its server made as the deployment's scheme makes
    it (a distributed-DP round's server needs the DP encoding to read the sum)."""

    def __post_init__(self) -> None:
        self.server = MaskingScheme(self.fleet.params).server(self.config)
        self.outgoing = self.server.start()


def honest_round(fleet: Fleet, config: RoundConfig | None = None) -> SchemeRound:
    """A round played honestly to the end, every client included."""
    config = new_config(fleet) if config is None else config
    r = SchemeRound(fleet, config, config.client_ids)
    while not r.server.done:
        r.stage()
    assert r.server.result.included == config.client_ids
    r.end(included=r.server.result.included)
    return r


def abandoned_after_commit(fleet: Fleet, config: RoundConfig) -> None:
    """Offer a round, take every client's first commitment, then say the round aborted."""
    adversary, cohort = fleet.adversary, _cohort(fleet)
    for c in cohort:
        adversary.send_task(c, config, fleet.model(), config.round_id)
    answers(fleet, Commitment)
    adversary.end_round(cohort, config.round_id)
    assert adversary.drain(cohort) == []


def included_line(config: RoundConfig, client: int) -> str:
    others = [u for u in config.client_ids if u != client]
    return (
        f"{agreed(config)}: included; answered the unmask request (self-mask shares of "
        f"[{','.join(map(str, others))}] ({len(others)}); key shares of none) "
        "(the coordinator says: completed, included)"
    )


# ---------------------------------------------------------------------------- 1. the audit
@semi_honest
def test_contributions_collected_over_three_attempts_and_thrown_away_are_never_an_included_round(
    fleet: Fleet,
) -> None:
    cohort = _cohort(fleet)
    start(fleet, rounds=LIES)  # each join leaves by itself once LIES rounds have ended
    lies = [collect_contributions_and_claim_success(fleet) for _ in range(LIES)]

    # What the liar holds: three commitments and three contributions from every client, and
    # nothing else. No key, no share, no masked input: nothing of any update.
    for config, loot, sent in lies:
        assert sent == dict.fromkeys(cohort, ["Commitment", "Reveal"] * 3)
        assert not (loot.adverts or loot.sealed or loot.masked or loot.self_mask_shares)
        for c in cohort:
            assert loot.recover(c) is None
            assert not wire._plaintext_sent(fleet, c, config.round_id)

    # What the operator sees: each client says what it did, the claim as the coordinator's.
    claimed = {
        config.round_id: f"{agreed(config)}: ended by the coordinator after attempt 3; "
        "no key advertised (the coordinator says: completed, included)"
        for config, _, _ in lies
    }
    for c, process in fleet.processes.items():
        assert process.wait(timeout=30) == 0, log_of(fleet, c)
        log = log_of(fleet, c)
        for line in claimed.values():
            assert log.count(line) == 1, log
        # The client's own count: three rounds ended, not one of them included.
        assert f"client {c} left after {LIES} round(s): 0 included, 0 left early" in log, log

    # Then an honest round (the same identity files, so the same journals): every client
    # completes it and is included.
    start(fleet)
    honest = honest_round(fleet).config
    histories = history(fleet)
    for c in cohort:
        assert log_of(fleet, c).count(included_line(honest, c)) == 1
        assert line_of(histories[c], honest.round_id) == included_line(honest, c)
        for round_id, line in claimed.items():
            assert line_of(histories[c], round_id) == line  # the lies' rounds, unchanged
    assert "Traceback" not in fleet.logs()


# ---------------------------------------------------------------------------- 2. replayed tasks
@semi_honest
def test_a_task_whose_update_entered_a_sum_is_refused_before_training_also_after_a_restart(
    fleet: Fleet,
) -> None:
    first = honest_round(running(fleet)).config
    step = first.round_id
    why = f"this task's update already entered round {first.round_id}'s sum"
    for restarted in (False, True):
        if restarted:
            start(fleet)  # killed and started again: only the journal remembers
        replay = new_config(fleet, step=step)  # a new round id, the same model and step
        replies = refused(fleet, replay, step)
        assert aborts(replies) == dict.fromkeys(replies, (AbortReason.REPLAYED_TASK.value, why))
        for c in replies:
            assert f"client {c} leaves round {replay.round_id}: replayed-task: {why}" in log_of(
                fleet, c
            )
    # The one sum the update entered is the one the journal shows.
    for c, lines in history(fleet, clients=(VICTIM,)).items():
        assert line_of(lines, first.round_id) == included_line(first, c)


@semi_honest
def test_a_task_whose_round_ended_before_its_masked_input_left_may_be_trained_again(
    fleet: Fleet,
) -> None:
    """The boundary of the rule above: a round that ended before masking revealed nothing
    of the update, so a restarted coordinator may retry its step under a new round id."""
    abandoned = new_config(running(fleet))
    abandoned_after_commit(fleet, abandoned)
    retry = new_config(fleet, step=abandoned.round_id)
    for c in _cohort(fleet):
        fleet.adversary.send_task(c, retry, fleet.model(), abandoned.round_id)
    answers(fleet, Commitment)  # trained, and committed: the round goes on
    fleet.adversary.end_round(_cohort(fleet), retry.round_id)
    assert fleet.adversary.drain(_cohort(fleet)) == []


# ---------------------------------------------------------------------------- 3. round ids
@semi_honest
def test_a_u64_max_round_id_does_not_lock_a_client_out_of_a_smaller_one(fleet: Fleet) -> None:
    largest = honest_round(running(fleet), new_config(fleet, round_id=U64_MAX)).config
    assert largest.round_id == U64_MAX
    smaller = honest_round(fleet).config
    assert smaller.round_id < U64_MAX
    # The largest id is taken, like any other.
    step = next(fleet.round_ids)
    replies = refused(fleet, new_config(fleet, round_id=U64_MAX, step=step), step)
    assert {reply.abort for reply in replies.values()} == {AbortReason.REPLAYED_ROUND.value}
    for c, lines in history(fleet, clients=(VICTIM,)).items():
        assert line_of(lines, U64_MAX) == included_line(largest, c)
        assert line_of(lines, smaller.round_id) == included_line(smaller, c)


@semi_honest
def test_a_round_id_in_the_journal_is_refused_also_after_a_restart(fleet: Fleet) -> None:
    completed = honest_round(running(fleet)).config
    # And a round the coordinator gave up on after the first commitment.
    abandoned = new_config(fleet)
    abandoned_after_commit(fleet, abandoned)
    for restarted in (False, True):
        if restarted:
            start(fleet)
        for old in (completed, abandoned):
            # The same round id, a fresh nonce and a step never trained.
            step = next(fleet.round_ids)
            replay = new_config(fleet, round_id=old.round_id, step=step)
            replies = refused(fleet, replay, step)
            why = f"round {old.round_id} is in this client's journal"
            assert aborts(replies) == dict.fromkeys(
                replies, (AbortReason.REPLAYED_ROUND.value, why)
            )
    # The journal still shows each round once, as the client took part in it.
    for c, lines in history(fleet, clients=(VICTIM,)).items():
        assert line_of(lines, completed.round_id) == included_line(completed, c)
        assert line_of(lines, abandoned.round_id) == (
            f"{agreed(abandoned)}: ended by the coordinator after attempt 1; no key advertised "
            "(the coordinator says: aborted, not included)"
        )


@semi_honest
def test_a_replayed_round_that_the_coordinator_ends_as_included_adds_nothing_to_the_count(
    fleet: Fleet,
) -> None:
    """After refusing a replayed round id, the client is told that round ended, completed
    and with it included. Its count of included rounds must not move: the journal holds one
    included round of that id, the one it really answered."""
    cohort = _cohort(fleet)
    start(fleet, rounds=3)  # each join leaves by itself once three rounds have ended
    first = honest_round(fleet).config
    for _ in range(2):
        step = next(fleet.round_ids)
        replies = refused(fleet, new_config(fleet, round_id=first.round_id, step=step), step)
        assert {reply.abort for reply in replies.values()} == {AbortReason.REPLAYED_ROUND.value}
        fleet.adversary.end_round(cohort, first.round_id, included=cohort)
    for c, process in fleet.processes.items():
        assert process.wait(timeout=30) == 0, log_of(fleet, c)
    for c in cohort:
        log = log_of(fleet, c)
        # Three rounds ended for it: one included, two it left (the replays).
        assert f"client {c} left after 3 round(s): 1 included, 2 left early" in log, log
        assert log.count(included_line(first, c)) == 1, log


# ---------------------------------------------------------------------------- 4. the DP budget
@pytest.fixture(scope="module")
def dp_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Four join processes of a distributed-DP deployment whose budget covers DP_ROUNDS."""
    pytest.importorskip("dp_accounting")
    root = tmp_path_factory.mktemp("journal-dp")
    dp = DpSettings(l2_clip=2.0, target_epsilon=DP_EPSILON, rounds=DP_ROUNDS)
    params = Params(
        dim=wire.DIM,
        max_clients=DP_CLIENTS,
        protocol=Protocol.SECAGG,
        min_cohort=DP_CLIENTS,
        dp=dp.config(dim=wire.DIM, min_clients=DP_CLIENTS, max_clients=DP_CLIENTS),
    )
    deployment = create_deployment(root, DP_CLIENTS)
    path = DeploymentConfig.write(
        root, deployment, params, stage_timeout=1.0, min_clients=DP_CLIENTS
    )
    assert path == root / "deployment.toml"
    config = DeploymentConfig.load(path)
    assert config.tls is not None and config.allow_list is not None
    allow_list = AllowList.load(config.allow_list)
    adversary = Adversary(
        allow_list, load_tls_server_credentials(config.tls), config.coordinator.max_message_bytes
    )
    adversary.start()
    processes: dict[int, subprocess.Popen[bytes]] = {}
    dp_fleet = Fleet(
        ServerModel.SEMI_HONEST, params, adversary, root, processes, dict(allow_list.keys)
    )
    try:
        start(dp_fleet, clients=range(DP_CLIENTS))
        yield dp_fleet
    finally:
        wire.stop(processes, adversary)


def test_under_dp_the_round_past_the_clients_own_budget_is_refused_also_after_a_restart(
    dp_fleet: Fleet,
) -> None:
    fleet, cohort = running(dp_fleet), _cohort(dp_fleet)
    plan = DeploymentConfig.load(fleet.root / "deployment.toml").dp_plan
    assert plan is not None
    budget = ClientBudget(plan)
    # Round 1: honest, every client included.
    first = honest_round(fleet).config
    # Round 2: the liar takes every masked input, then says the round aborted. The charge was
    # made when the masked input left: what the coordinator says afterwards changes nothing.
    r = SchemeRound(fleet, new_config(fleet), cohort)
    r.until(Stage.UNMASK)
    assert r.loot is not None and set(r.loot.masked) == set(cohort)
    r.end()
    assert all(r.loot.recover(c) is None for c in cohort)  # no unmask answer: no update
    spent = budget.spent([budget.charge] * DP_ROUNDS)
    assert spent <= DP_EPSILON * (1 + 1e-9)
    why = (
        f"epsilon {spent:.3g} spent of {DP_EPSILON:g}; one more round would exceed the "
        "deployment's budget"
    )
    for restarted in (False, True):
        if restarted:
            start(fleet)
        past = new_config(fleet)
        replies = refused(fleet, past, past.round_id)
        assert aborts(replies) == dict.fromkeys(replies, (AbortReason.BUDGET_EXHAUSTED.value, why))
        for c in cohort:
            assert f"client {c} leaves round {past.round_id}: budget-exhausted: {why}" in log_of(
                fleet, c
            )
    config = str(fleet.root / "deployment.toml")
    for c, lines in history(fleet, "--config", config, clients=(VICTIM,)).items():
        assert line_of(lines, first.round_id) == included_line(first, c)
        assert line_of(lines, r.config.round_id) == (
            f"{agreed(r.config)}: ended by the coordinator after attempt 1; sent its masked "
            "input (possibly in the sum: its peers hold its shares), answered no unmask "
            "request (the coordinator says: aborted, not included)"
        )
        assert lines[-1] == (
            f"privacy: {DP_ROUNDS} round(s) charged, epsilon {spent:.3g} spent of the "
            f"deployment's {DP_EPSILON:g}"
        )

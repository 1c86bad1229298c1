"""Sessions that span rounds over real gRPC, on real sockets, with real ``secagg join``
processes (docs/SESSIONS.md): an honest session's rounds are exact and cost each client two
messages a round (three in active mode) once it is set up, counted as frames on the
coordinator's streams; a client killed mid-session is an ordinary dropout and comes back at
the next set-up only; a coordinator restarted mid-session sets up a new one and its clients go
on, each saying in one line that it left the old session.

A test here waits for events (a process's line, a round in the ledger) and never asserts on
how long anything took.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections.abc import Callable

import numpy as np
import pytest

from secagg.ledger import Ledger, LedgerRound
from secagg.protocol.runner import RoundOutcome
from secagg.protocol.stages import Stage
from secagg.service.coordinator import RoundSummary
from secagg.service.run import make_coordinator
from secagg.service.testhooks import HELD_LINE
from tests.ports import free_port
from tests.service.conftest import CLIENTS, DIM, Local, expected_mean, write_config
from tests.service.test_processes import _serve
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

SESSION_ROUNDS = 3
ALL = tuple(range(CLIENTS))


async def _rounds(
    local: Local,
    rounds: int,
    *,
    on_stage: Callable[[int, str], None] | None = None,
    between: Callable[[int, str], None] | None = None,
) -> tuple[list[RoundSummary], list[LedgerRound]]:
    """``rounds`` rounds of an in-process coordinator over every client as a `secagg join`
    process; round ``r`` (0-based) trains step ``r``. ``between(r, target)`` runs after round
    r, and the next round starts once every client of the deployment is connected again."""
    ledger = Ledger(":memory:")
    coordinator = make_coordinator(local.config, ledger=ledger, on_stage=on_stage)
    port = await coordinator.start()
    for c in ALL:
        local.start_client(c, f"127.0.0.1:{port}")
    summaries: list[RoundSummary] = []
    try:
        assert await coordinator.wait_for_clients(CLIENTS, 60), local.client_logs()
        for step in range(rounds):
            summaries.append(
                await coordinator.run_round(np.zeros(DIM, dtype=np.float32), step=step)
            )
            if between is not None:
                between(step, f"127.0.0.1:{port}")
                assert await coordinator.wait_for_clients(CLIENTS, 60), local.client_logs()
    finally:
        await coordinator.stop()
    return summaries, ledger.rounds()


def _assert_exact(summary: RoundSummary, step: int, local: Local) -> None:
    """The round completed and its mean is that of exactly the clients it says it includes."""
    assert summary.outcome == "completed", summary.abort_reason
    assert summary.aggregate is not None
    bound = local.config.params.quantizer.error_bound()
    error = np.max(np.abs(summary.aggregate - expected_mean(summary.included, step)))
    assert error <= bound, (summary.included, error)


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_an_honest_session_is_exact_every_round_at_two_messages_a_round(
    local: Local, active: bool
) -> None:
    local.config_path = write_config(
        local.root, local.deployment, active=active, session_rounds=SESSION_ROUNDS
    )
    # Three rounds in one session, then its cap: a fourth round sets up a new session.
    summaries, ledger = asyncio.run(_rounds(local, SESSION_ROUNDS + 1))
    for step, summary in enumerate(summaries):
        _assert_exact(summary, step, local)
        assert summary.included == ALL and not summary.dropped
    assert [s.session_round for s in summaries] == [1, 2, 3, 1]
    assert [s.kind for s in summaries] == ["set-up+round", "session", "session", "set-up+round"]

    # The messages each client sent in each round, counted as frames on its stream: the
    # set-up's four (commit, reveal, advertise, share) beside round 1's, then two a round
    # (the round's message and the unmask answer), three in active mode (the signature).
    per_round = 3 if active else 2
    set_up = 4 + per_round
    assert [s.frames_up for s in summaries] == [
        dict.fromkeys(ALL, set_up),
        dict.fromkeys(ALL, per_round),
        dict.fromkeys(ALL, per_round),
        dict.fromkeys(ALL, set_up),
    ]
    # What the coordinator sent each client in a round after the set-up: its task (with the
    # model), the survivor list in active mode, the unmask request and the round's end.
    assert summaries[1].frames_down == dict.fromkeys(ALL, per_round + 1)
    after = [Stage.MASKED_INPUT, *([Stage.CONSISTENCY] if active else []), Stage.UNMASK]
    assert [list(s.stage_seconds) for s in summaries[1:3]] == [after, after]
    assert list(summaries[0].stage_seconds)[:4] == [
        Stage.COMMIT,
        Stage.REVEAL,
        Stage.ADVERTISE,
        Stage.SHARE,
    ]

    # The ledger says which kind each round was, and which rounds shared a session.
    assert [(r.kind, r.session_round) for r in ledger] == [
        ("set-up+round", 1),
        ("session", 2),
        ("session", 3),
        ("set-up+round", 1),
    ]
    assert len({r.session_id for r in ledger[:3]}) == 1
    assert ledger[3].session_id != ledger[0].session_id
    assert all(r.outcome is RoundOutcome.COMPLETED for r in ledger)

    logs = local.client_logs()
    assert "Traceback" not in logs
    # A session that ran its rounds ends without a client leaving anything behind.
    assert len(re.findall(rf"ran its {SESSION_ROUNDS} rounds", logs)) == CLIENTS
    assert "leaves session" not in logs


@pytest.mark.parametrize("stage", ["masked-input", "unmask"])
def test_a_client_killed_mid_session_is_a_dropout_and_comes_back_at_the_next_set_up(
    local: Local, stage: str
) -> None:
    """Client 3 is killed in round 2 (before its masked input, or after it) and started
    again after round 2. Its neighbours treat it as dropped: round 2 is exact for exactly the
    clients it includes, and so is round 3, which the restarted process does not take part in
    (it has no secrets of the session: it refuses anything of it); round 4 is a new session,
    which it joins."""
    victim = 3
    local.config_path = write_config(local.root, local.deployment, session_rounds=SESSION_ROUNDS)

    def on_stage(round_id: int, now: str) -> None:
        if round_id == 2 and now == stage:
            local.kill(victim)

    def between(step: int, target: str) -> None:
        if step == 1:  # after round 2: the victim comes back, a fresh process
            local.start_client(victim, target)

    summaries, ledger = asyncio.run(_rounds(local, 4, on_stage=on_stage, between=between))
    for step, summary in enumerate(summaries):
        _assert_exact(summary, step, local)
    others = tuple(c for c in ALL if c != victim)
    first, second, third, fourth = summaries
    assert first.included == ALL
    assert second.dropped == {victim: (stage, "disconnected")}
    if stage == "masked-input":
        # Killed before it masked: out of round 2's sum, and no member of the session after.
        assert second.included == others
        assert third.included == others and victim not in ledger[2].cohort
        assert not third.dropped
    else:
        # Killed after its masked input reached the coordinator: in round 2's sum (its
        # neighbours revealed its self mask's shares), still a member for round 3, whose task
        # the restarted process refuses: it holds nothing of the session.
        assert second.included == ALL
        assert third.included == others
        assert third.dropped[victim][1] == "client-aborted"
        assert victim in ledger[2].cohort
    assert (fourth.session_round, fourth.included) == (1, ALL)
    assert [r.session_round for r in ledger] == [1, 2, 3, 1]

    log = (local.root / f"client-{victim}.log").read_text()
    assert "Traceback" not in local.client_logs()
    if stage == "unmask":
        assert re.search(
            r"client 3 refuses round 3: round-closed: this client is in no session", log
        )
    # The restarted process joined the next set-up.
    assert "joins a session set-up (round 4)" in log


@pytest.mark.parametrize(
    ("hold", "left_at", "why"),
    [
        # Every client has sent round 2's masked input; the coordinator holds the stage open.
        (
            "masked-input@2",
            2,
            "round-closed: the connection to the coordinator was lost in the middle of a round",
        ),
        # Round 2 is closed everywhere; round 3 is in the ledger, its tasks not yet sent.
        (
            "task@3",
            2,
            "a new set-up began (the coordinator ended this session, or restarted)",
        ),
    ],
    ids=["mid-round", "between-rounds"],
)
def test_a_coordinator_restarted_mid_session_sets_up_a_new_one_and_its_clients_go_on(
    local: Local, hold: str, left_at: int, why: str
) -> None:
    """A real `secagg serve` killed in the middle of its session and started again: it has no
    session state, so its first round is a new set-up. Each client says in one line that it
    left the old session, and why, and takes part in the new one; nothing prints a
    traceback."""
    local.config_path = write_config(
        local.root, local.deployment, min_clients=CLIENTS, session_rounds=SESSION_ROUNDS
    )
    port = free_port()
    ledger_path = local.config.ledger
    held = int(hold.partition("@")[2])
    coordinator = _serve(local, port, rounds=SESSION_ROUNDS, hold=hold)
    log_path = local.root / "coordinator.log"
    restarted: subprocess.Popen[bytes] | None = None
    try:
        for c in ALL:
            local.start_client(c, f"127.0.0.1:{port}")
        wait_until(
            lambda: log_path.exists() and HELD_LINE in log_path.read_text(),
            lambda: f"round {held} held (coordinator log: {log_path.read_text()[-2000:]})",
            timeout=180,
        )
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        restarted = _serve(local, port, rounds=2)
        assert restarted.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    finally:
        for process in (coordinator, restarted):
            if process is not None and process.poll() is None:
                process.kill()
    with Ledger.open_readonly(ledger_path) as ledger:
        rounds = ledger.rounds()
        aggregates = {r.round_id: ledger.aggregate(r.round_id) for r in rounds[held:]}
    before = [(r, RoundOutcome.COMPLETED, r) for r in range(1, held)]
    assert [(r.round_id, r.outcome, r.session_round) for r in rounds] == [
        *before,
        (held, RoundOutcome.ABORTED, held),
        (held + 1, RoundOutcome.COMPLETED, 1),
        (held + 2, RoundOutcome.COMPLETED, 2),
    ]
    assert rounds[held - 1].abort_reason is not None
    assert "restarted" in rounds[held - 1].abort_reason
    assert rounds[held].session_id != rounds[0].session_id
    assert rounds[held + 1].session_id == rounds[held].session_id
    bound = local.config.params.quantizer.error_bound()
    for r in rounds[held:]:
        assert r.included == ALL
        # The restarted coordinator's step is the round's place in the ledger.
        error = np.max(np.abs(aggregates[r.round_id] - expected_mean(r.included, r.round_id - 1)))
        assert error <= bound
    coordinator_log = log_path.read_text()
    assert (
        f"round {held + 1}: a new session set-up over 6 clients, for up to 3 rounds and "
        "604800 s: no session yet (the coordinator has just started)"
    ) in coordinator_log
    logs = {c: (local.root / f"client-{c}.log").read_text() for c in ALL}
    assert "Traceback" not in "".join(logs.values()) + coordinator_log
    for c, text in logs.items():
        # One line: the old session is left, when, and why.
        left = re.findall(r"client \d+ leaves session [0-9a-f]+ at round (\d+): (.*)", text)
        assert left == [(str(left_at), why)], (c, text[-3000:])
        assert f"joins a session set-up (round {held + 1})" in text

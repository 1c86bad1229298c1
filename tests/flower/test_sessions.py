"""Sessions that span rounds inside Flower's own simulation engine (flwr 1.42, Ray backend).

FedAvg, unchanged, over ``SecureGrid(session_rounds=...)``, against real ``SecAggMod`` nodes
(``tests/flower/session_nodes.py``), two deployments in one run:

- semi-honest, six nodes, sessions of three rounds, six rounds of FedAvg: round 1 sets the
  cohort up; in round 2 one node fails when its round's task arrives (a dropout mid-session)
  and the session goes on without it; round 4 sets up again (the session ran its three
  rounds) and the node is back; in round 5 another node is not available (the cohort
  changes: a new set-up); round 6 is a round of that session;
- active, five nodes, three rounds in one session.

Every round's new global model must be the old one plus the weighted mean of exactly the
included nodes' updates (within the quantisation bound), and the grid's exchanges are
counted (``send_and_receive`` calls under ``SecureGrid``, never timed): a round of a session
after its set-up is two (three in active mode), a round that sets up is six (seven).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from numpy.typing import NDArray

from secagg.flower import SecureGrid, SecureRoundReport
from secagg.flower.server import SESSION_ROUND, SESSION_SETUP
from tests.flower.helpers import delta, flat, model, weight
from tests.flower.session_nodes import (
    FLOAT32,
    GROUPS,
    STEP,
    WAIT,
    client_app,
    provision,
    simulation_env,
    trained,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SEMI, ACTIVE_NODES = 6, 5
SEMI_ROUNDS, ACTIVE_ROUNDS = 6, 3
FAILS_IN_ROUND = 2  # the semi-honest node that fails at its round's task, mid-session
AWAY_IN_ROUND = 5  # from this round on one other semi-honest node is not available


class CountingGrid(Grid):
    """Between ``SecureGrid`` and Flower's grid: counts the exchanges of train messages
    (``send_and_receive`` calls) and offers the strategy only the ``available`` nodes."""

    def __init__(self, grid: Grid, available: Iterable[int]) -> None:
        self._grid = grid
        self.available = set(available)
        self.exchanges = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if any(str(m.metadata.message_type).startswith(MessageType.TRAIN) for m in messages):
            self.exchanges += 1
        return self._grid.send_and_receive(messages, timeout=timeout)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n in self.available]

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)


@dataclass
class Training:
    """One deployment's FedAvg run as the ServerApp saw it."""

    group: str
    nodes: tuple[int, ...]
    # The global model before round 1, then after each round.
    models: list[NDArray[np.float64]] = field(default_factory=list)
    exchanges: list[int] = field(default_factory=list)  # per round
    available: list[tuple[int, ...]] = field(default_factory=list)  # per round
    reports: list[SecureRoundReport] = field(default_factory=list)
    failed: int | None = None
    away: int | None = None


@dataclass
class Record:
    folder: Path
    partitions: dict[int, int] = field(default_factory=dict)
    runs: dict[str, Training] = field(default_factory=dict)
    trained: dict[int, list[int]] = field(default_factory=dict)
    pki: dict[int, bytes] = field(default_factory=dict)


def fedavg_model() -> ArrayRecord:
    """The helpers' six values without their int64 counter (FedAvg would average it into a
    float, and the next round's model would have seven values)."""
    record = model()
    return ArrayRecord({name: record[name] for name in ("w", "b")})


def partitions(grid: Grid, nodes: Iterable[int]) -> dict[int, int]:
    out = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    answers = {}
    for reply in grid.send_and_receive(out, timeout=WAIT):
        answers[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
    return answers


def train(grid: Grid, record: Record, group: str, nodes: tuple[int, ...], rounds: int) -> None:
    """FedAvg over ``nodes`` with a ``SecureGrid`` in sessions; the test's hooks act between
    rounds (in the strategy's evaluation, which runs after each round)."""
    run = record.runs[group] = Training(group, nodes)
    counting = CountingGrid(grid, nodes)
    params = GROUPS[group]
    pki = record.pki if params.active else None
    secure = SecureGrid(
        counting, params, pki=pki, stage_timeout=WAIT, first_round=1, session_rounds=3
    )
    if group == "semi-honest":
        run.failed, run.away = nodes[1], nodes[4]

    def between(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        run.models.append(flat(arrays))
        if server_round:
            run.exchanges.append(counting.exchanges)
        counting.exchanges = 0
        coming = server_round + 1
        if run.failed is not None and coming == FAILS_IN_ROUND:
            # The node fails when its round's task arrives: after the set-up, mid-session.
            (record.folder / f"fail-{run.failed}").write_text("masked-input")
        if run.away is not None and coming == AWAY_IN_ROUND:
            counting.available.discard(run.away)
        run.available.append(tuple(sorted(counting.available)))
        return MetricRecord({})

    FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=len(nodes) - 1,
        min_available_nodes=len(nodes) - 1,
    ).start(grid=secure, initial_arrays=fedavg_model(), num_rounds=rounds, evaluate_fn=between)
    run.reports = list(secure.reports)
    if run.failed is not None:
        assert not (record.folder / f"fail-{run.failed}").exists()  # it did fail


def server_app(record: Record) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        wait_for(lambda: len(list(grid.get_node_ids())) >= SEMI + ACTIVE_NODES, "the nodes")
        nodes = tuple(sorted(grid.get_node_ids()))
        groups = {"semi-honest": nodes[:SEMI], "active": nodes[SEMI:]}
        record.pki = provision(record.folder, groups)
        record.partitions = partitions(grid, nodes)
        train(grid, record, "semi-honest", groups["semi-honest"], SEMI_ROUNDS)
        train(grid, record, "active", groups["active"], ACTIVE_ROUNDS)
        record.trained = trained(record.folder, nodes)

    return app


@pytest.fixture(scope="module")
def run() -> Iterator[Record]:
    folder = Path(tempfile.mkdtemp(prefix="secagg-sessions-"))
    record = Record(folder)
    simulation_env(ROOT)
    run_simulation(
        server_app=server_app(record),
        client_app=client_app(folder),
        num_supernodes=SEMI + ACTIVE_NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": 2,
                "include_dashboard": False,
                "logging_level": "error",
                "log_to_driver": False,
            },
        },
    )
    yield record
    shutil.rmtree(folder, ignore_errors=True)


def expected_mean(record: Record, included: Iterable[int]) -> NDArray[np.float64]:
    parts = [record.partitions[n] for n in included]
    return np.average([delta(p) for p in parts], axis=0, weights=[weight(p) for p in parts])


@pytest.mark.parametrize("group", ["semi-honest", "active"])
def test_every_round_is_the_plaintext_mean_of_exactly_its_included_nodes(
    run: Record, group: str
) -> None:
    training = run.runs[group]
    rounds = SEMI_ROUNDS if group == "semi-honest" else ACTIVE_ROUNDS
    assert len(training.reports) == rounds and len(training.models) == rounds + 1
    for r, report in enumerate(training.reports, start=1):
        assert report.outcome == "completed", report.abort_reason
        got = training.models[r] - training.models[r - 1]
        assert np.max(np.abs(got - expected_mean(run, report.included))) <= STEP + FLOAT32
        assert report.total_weight == sum(weight(run.partitions[n]) for n in report.included)


def test_a_round_after_the_set_up_is_two_exchanges_three_in_active_mode(run: Record) -> None:
    semi, active = run.runs["semi-honest"], run.runs["active"]
    assert [r.kind for r in semi.reports] == [
        SESSION_SETUP,  # the cohort set up
        SESSION_ROUND,  # one node fails at its task
        SESSION_ROUND,  # without it
        SESSION_SETUP,  # the session ran its three rounds: set up again, with it
        SESSION_SETUP,  # the cohort changed
        SESSION_ROUND,
    ]
    assert semi.exchanges == [6, 2, 2, 6, 6, 2]
    assert [r.kind for r in active.reports] == [SESSION_SETUP, SESSION_ROUND, SESSION_ROUND]
    assert active.exchanges == [7, 3, 3]


def test_a_node_that_drops_mid_session_is_out_until_the_next_set_up(run: Record) -> None:
    semi = run.runs["semi-honest"]
    everyone = set(semi.nodes)
    assert semi.failed is not None and semi.away is not None
    included = [set(r.included) for r in semi.reports]
    assert included[0] == everyone
    # Round 2: the node failed when its task came (an error reply: dropped at masked-input).
    assert included[1] == everyone - {semi.failed}
    assert semi.reports[1].dropped == {semi.failed: ("masked-input", "disconnected")}
    # Round 3: it is no longer a member of the session: not asked, not dropped again.
    assert included[2] == everyone - {semi.failed} and semi.reports[2].dropped == {}
    # Round 4's set-up takes it back.
    assert included[3] == everyone
    assert run.trained[semi.failed] == [1, 4, 5, 6]


def test_a_cohort_that_changes_is_set_up_anew_and_its_session_goes_on(run: Record) -> None:
    semi = run.runs["semi-honest"]
    assert semi.away is not None
    without = set(semi.nodes) - {semi.away}
    assert [set(r.nodes) for r in semi.reports[4:]] == [without, without]
    assert [set(r.included) for r in semi.reports[4:]] == [without, without]
    assert run.trained[semi.away] == [1, 2, 3, 4]
    for node in without - {semi.failed}:
        assert run.trained[node] == list(range(1, SEMI_ROUNDS + 1))

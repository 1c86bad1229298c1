"""secagg inside Flower's own simulation engine (flwr 1.42, Ray backend), for real.

The example app (``examples/flower``: FedAvg over a PyTorch MLP on the digits, ``SecAggMod``
on every node, ``SecureGrid`` under the strategy) runs with 20 nodes for 3 rounds; in each
round 2 nodes (10%) fail at one protocol stage each, and across the run every stage is hit
(commit, reveal, advertise, share, masked-input, unmask). A failing node raises inside its
ClientApp, which Flower turns into an error reply, as it does for a crashed node.

Each round's new global model must equal plaintext FedAvg over exactly the nodes whose
updates were included, recomputed here from the previous global model with the same
training code, within the quantisation bound.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.simulation import run_simulation

from examples.flower import apps
from examples.flower.secagg_digits import task
from secagg.flower import wire
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import decode
from secagg.protocol.stages import Stage
from secagg.schemes.masking.messages import RoundConfig

ROOT = Path(__file__).resolve().parents[2]
NODES = 20
ROUNDS = 3
STAGES = (
    Stage.COMMIT,
    Stage.REVEAL,
    Stage.ADVERTISE,
    Stage.SHARE,
    Stage.MASKED_INPUT,
    Stage.UNMASK,
)
# One step of the quantiser (the bound on each coordinate of the decoded mean), plus float32
# rounding: the aggregate is written back as float32 (|weights| < 4, so < 4 * 2**-24 each),
# and each client's update is the float32 difference of two float32 models (likewise).
TOLERANCE = task.deployment(NODES).quantizer.error_bound() + 1e-6


def drop_schedule() -> dict[int, dict[int, Stage]]:
    """Round -> partition -> the stage it fails at: 2 nodes a round, every stage once."""
    rng = DeterministicRandomness(b"secagg/tests/flower/drops")
    stages = [STAGES[int(i)] for i in np.argsort(rng.words(len(STAGES)))]
    schedule: dict[int, dict[int, Stage]] = {}
    for r in range(1, ROUNDS + 1):
        order = np.argsort(rng.words(NODES))
        schedule[r] = {int(order[0]): stages.pop(), int(order[1]): stages.pop()}
    return schedule


def failing_mod(schedule: Mapping[int, Mapping[int, Stage]]) -> Mod:
    """An outer mod that makes a node fail when asked for its scheduled stage."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(wire.RECORD_KEY) if msg.has_content() else None
        if record is not None:
            data = record[wire.MESSAGE]
            assert isinstance(data, bytes)
            message = decode(data)
            if isinstance(message, RoundConfig):
                ctxt.state.config_records["test.round"] = ConfigRecord({"id": message.round_id})
            round_id = ctxt.state.config_records["test.round"]["id"]
            partition = int(ctxt.node_config["partition-id"])
            if schedule.get(round_id, {}).get(partition) is wire.requested_stage(data):
                raise RuntimeError(f"simulated failure of partition {partition}")
        return call_next(msg, ctxt)

    return mod


Run = tuple[apps.RunLog, dict[int, dict[int, Stage]]]


@pytest.fixture(scope="module")
def run() -> Run:
    schedule = drop_schedule()
    log = apps.RunLog()
    # Ray's workers import the apps' modules by name: they start from this environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    run_simulation(
        # Round ids from 1, as the drop schedule and the checks below number them.
        # One-shot rounds, every stage of each (sessions: test_sessions.py).
        server_app=apps.secure_server_app(
            NODES, ROUNDS, log, stage_timeout=60.0, first_round=1, session_rounds=0
        ),
        client_app=apps.secure_client_app(NODES, outer_mods=[failing_mod(schedule)]),
        num_supernodes=NODES,
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
    return log, schedule


def test_every_round_completes_despite_a_tenth_of_the_nodes_failing(run: Run) -> None:
    log, schedule = run
    assert len(log.partitions) == NODES
    assert [r.outcome for r in log.reports] == ["completed"] * ROUNDS
    hit = {stage for failures in schedule.values() for stage in failures.values()}
    assert hit == set(STAGES)


def test_the_nodes_that_failed_before_unmasking_are_left_out_and_the_rest_included(
    run: Run,
) -> None:
    log, schedule = run
    node_of = {p: n for n, p in log.partitions.items()}
    for report in log.reports:
        failures = schedule[report.round_id]
        left_out = {node_of[p] for p, s in failures.items() if s is not Stage.UNMASK}
        assert set(report.included) == set(log.partitions) - left_out
        assert {n: stage for n, (stage, _) in report.dropped.items()} == {
            node_of[p]: s.value for p, s in failures.items()
        }


def test_each_aggregate_is_plaintext_fedavg_over_the_included_nodes(run: Run) -> None:
    log, _ = run
    assert len(log.models) == ROUNDS + 1
    for report in log.reports:
        before = log.models[report.round_id - 1]
        trained, weights = [], []
        for node in report.included:
            model = task.new_model(NODES)
            load(model, before)
            weights.append(task.train(model, log.partitions[node], NODES, report.round_id))
            trained.append(task.state_vector(model).astype(np.float64))
        fedavg = np.average(np.array(trained), axis=0, weights=weights)
        secure = np.concatenate([a.reshape(-1) for a in log.models[report.round_id]])
        assert report.total_weight == sum(weights)
        assert np.max(np.abs(secure - fedavg)) <= TOLERANCE


def test_the_model_learns(run: Run) -> None:
    log, _ = run
    assert log.accuracy[-1] > log.accuracy[0] + 0.3


def load(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    state = dict(zip(model.state_dict(), (torch.from_numpy(a.copy()) for a in arrays), strict=True))
    model.load_state_dict(state)

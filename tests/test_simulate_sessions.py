"""Many rounds over one cohort in the simulator: sessions that span rounds, and one-shot rounds.

Inputs sit on the quantisation grid (clip 7.5, 4 bits: one step is 1.0), so a round's ring
sum is known exactly: each test compares what a round revealed with the plaintext sum of
exactly the clients it says it included, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from typer.testing import CliRunner

from secagg.cli import app
from secagg.errors import ConfigurationError
from secagg.protocol.runner import RoundOutcome
from secagg.schemes.masking.parameters import Params
from secagg.simulate import DropSchedule
from secagg.simulate.rounds import (
    SETUP_STAGES,
    DropPlan,
    RoundKind,
    RunResult,
    random_round_inputs,
    round_stages,
    simulate_rounds,
)

CLIP = 7.5
BITS = 4
LEVELS = 2**BITS - 1


def grid_inputs(dim: int, seed: int) -> object:
    """Client i's input in round r: integers on the grid, different every round."""

    def source(round_index: int, client_id: int) -> NDArray[np.floating]:
        rng = np.random.default_rng([seed, round_index, client_id])
        return (rng.integers(0, LEVELS + 1, dim) - CLIP).astype(np.float32)

    return source


def params(n: int, *, dim: int = 4, protocol: str = "secagg", active: bool = False) -> Params:
    return Params(
        dim=dim,
        max_clients=n,
        protocol=protocol,  # type: ignore[arg-type]
        clip=CLIP,
        value_bits=BITS,
        max_weight=2,
        server_model="semi-malicious" if active else "semi-honest",  # type: ignore[arg-type]
    )


def expected_ring_sum(
    p: Params, inputs: object, index: int, included: tuple[int, ...], weights: NDArray[np.int64]
) -> list[int]:
    """The ring sum round ``index`` must reveal for exactly ``included``: each input's grid
    levels times its weight, summed, then the total weight."""
    assert callable(inputs)
    total = [0] * (p.dim + 1)
    for u in included:
        values = inputs(index, u)
        for i, x in enumerate(values):
            total[i] += round(float(x) + CLIP) * int(weights[u])
        total[-1] += int(weights[u])
    return [value % (1 << p.ring_bits) for value in total]


def check_exact(p: Params, result: RunResult, inputs: object, weights: NDArray[np.int64]) -> None:
    """Every completed round revealed exactly the plaintext sum of its included clients;
    every aborted one revealed nothing."""
    for r, ring_total in zip(result.report.rounds, result.ring_totals, strict=True):
        if r.completed:
            assert ring_total is not None
            expected = expected_ring_sum(p, inputs, r.number - 1, r.report.included, weights)
            assert [int(v) for v in ring_total] == expected, f"round {r.number}"
            assert r.report.max_abs_error is not None
            assert r.report.max_abs_error <= r.report.error_bound
        else:
            assert ring_total is None
            assert r.report.included == ()


ROUND_STAGE_NAMES = [s.value for s in (*SETUP_STAGES, *round_stages(True))]


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, int, int, bool, str, list[dict[int, str]], int]:
    n = draw(st.integers(5, 10))
    rounds = draw(st.integers(1, 5))
    session_rounds = draw(st.integers(1, 3))
    active = draw(st.booleans())
    protocol = draw(st.sampled_from(["secagg", "secagg+"]))
    stages = ROUND_STAGE_NAMES if active else [s for s in ROUND_STAGE_NAMES if s != "consistency"]
    schedules = draw(
        st.lists(
            st.dictionaries(st.integers(0, n - 1), st.sampled_from(stages), max_size=3),
            min_size=rounds,
            max_size=rounds,
        )
    )
    seed = draw(st.integers(0, 2**16))
    return n, rounds, session_rounds, active, protocol, schedules, seed


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_every_round_reveals_exactly_the_sum_of_its_included_inputs(
    run: tuple[int, int, int, bool, str, list[dict[int, str]], int],
) -> None:
    """Over random multi-round dropout schedules (clients silent at any stage of any round,
    set-up stages included, sessions ending at their round cap and set up again), every
    round's sum is the plaintext sum of exactly its included inputs, and the session's own
    rules hold: no client silent before its masked input is in that round's sum, and within
    a session the included only shrink (a departed member never comes back)."""
    n, rounds, session_rounds, active, protocol, schedules, seed = run
    p = params(n, protocol=protocol, active=active)
    inputs = grid_inputs(p.dim, seed)
    weights = np.random.default_rng(seed).integers(1, 3, n)
    plan = DropPlan(
        rounds={
            r + 1: DropSchedule.parse(f"{stage}={u}" for u, stage in sorted(s.items()))
            for r, s in enumerate(schedules)
        }
    )
    result = simulate_rounds(
        p,
        n,
        inputs,  # type: ignore[arg-type]
        rounds,
        session_rounds=session_rounds,
        weights=weights.astype(np.float64),
        drops=plan,
        seed=seed,
        baseline=False,
    )
    check_exact(p, result, inputs, weights)
    report = result.report
    assert len(report.rounds) == rounds
    previous: dict[int, tuple[int, ...]] = {}  # session -> the last completed round's sum
    silent_at_setup: dict[int, set[int]] = {}
    for r, schedule in zip(report.rounds, schedules, strict=True):
        silent_early = {u for u, s in schedule.items() if s in ("masked-input",)}
        assert not silent_early & set(r.report.included)
        assert r.session is not None
        if r.setup is not None:
            assert r.kind is RoundKind.SETUP_AND_ROUND
            silent_at_setup[r.session] = {
                u for u, s in schedule.items() if s in {st.value for st in SETUP_STAGES}
            }
        else:
            assert r.kind is RoundKind.SESSION
        assert not silent_at_setup[r.session] & set(r.report.included)
        if r.completed:
            if r.session in previous:
                assert set(r.report.included) <= set(previous[r.session])
            previous[r.session] = r.report.included
        assert r.session_round is None or r.session_round <= session_rounds
    # A session ends at its cap at the latest: at least one set-up per session_rounds rounds.
    assert len(report.setups) >= -(-rounds // session_rounds)


def test_a_session_sets_up_once_then_runs_rounds_of_two_messages() -> None:
    n = 8
    p = params(n)
    inputs = grid_inputs(p.dim, 1)
    result = simulate_rounds(p, n, inputs, 4, seed=1, baseline=False)  # type: ignore[arg-type]
    report = result.report
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))
    assert [r.kind for r in report.rounds] == [
        RoundKind.SETUP_AND_ROUND,
        RoundKind.SESSION,
        RoundKind.SESSION,
        RoundKind.SESSION,
    ]
    assert [r.session_round for r in report.rounds] == [1, 2, 3, 4]
    assert len(report.setups) == 1 and report.setups[0].reason == "the run's first round"
    # The set-up: config, commit digest, contributions and peer keys down; commitment,
    # reveal, keys and set-up shares up. Its last message (the set-up shares each member
    # receives) carries round 1's task and is answered with round 1's masked input.
    setup = report.setups[0]
    assert (setup.messages_up_per_client, setup.messages_down_per_client) == (4.0, 4.0)
    assert list(setup.stage_seconds) == [s.value for s in SETUP_STAGES]
    assert setup.members == tuple(range(n))
    first, *later = report.rounds
    assert (first.messages_up_per_client, first.messages_down_per_client) == (6.0, 6.0)
    assert list(first.report.stage_seconds) == [
        *(s.value for s in SETUP_STAGES),
        "masked-input",
        "unmask",
    ]
    for r in later:
        assert (r.messages_up_per_client, r.messages_down_per_client) == (2.0, 2.0)
        assert list(r.report.stage_seconds) == ["masked-input", "unmask"]
    for r in report.rounds:
        assert r.report.included == tuple(range(n))
    # Inputs differ per round, and so do the sums.
    totals = {tuple(int(v) for v in t) for t in result.ring_totals if t is not None}
    assert len(totals) == 4


def test_active_mode_rounds_cost_three_messages() -> None:
    n = 6
    p = params(n, active=True)
    inputs = grid_inputs(p.dim, 2)
    result = simulate_rounds(p, n, inputs, 2, seed=2, baseline=False)  # type: ignore[arg-type]
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))
    first, second = result.report.rounds
    assert (first.messages_up_per_client, first.messages_down_per_client) == (7.0, 7.0)
    assert (second.messages_up_per_client, second.messages_down_per_client) == (3.0, 3.0)
    assert list(second.report.stage_seconds) == ["masked-input", "consistency", "unmask"]


def test_one_shot_mode_runs_separate_rounds_over_the_same_inputs() -> None:
    n = 7
    p = params(n, protocol="secagg+")
    inputs = grid_inputs(p.dim, 3)
    session = simulate_rounds(p, n, inputs, 3, seed=3, baseline=False)  # type: ignore[arg-type]
    one_shot = simulate_rounds(
        p,
        n,
        inputs,  # type: ignore[arg-type]
        3,
        session=False,
        seed=3,
        baseline=False,
    )
    weights = np.ones(n, dtype=np.int64)
    check_exact(p, session, inputs, weights)
    check_exact(p, one_shot, inputs, weights)
    assert one_shot.report.mode == "one-shot" and not one_shot.report.setups
    assert {r.kind for r in one_shot.report.rounds} == {RoundKind.ONE_SHOT}
    for a, b in zip(session.ring_totals, one_shot.ring_totals, strict=True):
        assert a is not None and b is not None
        np.testing.assert_array_equal(a, b)  # everyone included: the same plaintext sum
    for r in one_shot.report.rounds:
        assert r.stages == 6


def test_a_session_ends_at_its_cap_and_is_set_up_again() -> None:
    n = 6
    p = params(n)
    inputs = grid_inputs(p.dim, 4)
    result = simulate_rounds(
        p,
        n,
        inputs,  # type: ignore[arg-type]
        5,
        session_rounds=2,
        seed=4,
        baseline=False,
    )
    report = result.report
    assert [(r.session, r.session_round) for r in report.rounds] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
    ]
    assert [s.reason for s in report.setups] == [
        "the run's first round",
        "the session has run its 2 rounds",
        "the session has run its 2 rounds",
    ]
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))


def test_a_dropout_that_leaves_too_few_live_neighbours_starts_a_new_set_up() -> None:
    # SecAgg over 6 clients, t = 3, and sessions whose members mask with all 5 others
    # (k_min = 5): one departure leaves every survivor four, and the session cannot go on.
    n = 6
    p = dataclasses.replace(params(n), threshold=3)
    inputs = grid_inputs(p.dim, 5)
    plan = DropPlan(rounds={1: DropSchedule({"masked-input": frozenset({0})})})
    result = simulate_rounds(
        p,
        n,
        inputs,  # type: ignore[arg-type]
        2,
        min_live_neighbours=5,
        drops=plan,
        seed=5,
        baseline=False,
    )
    report = result.report
    first, second = report.rounds
    assert first.report.included == (1, 2, 3, 4, 5)
    assert second.kind is RoundKind.SETUP_AND_ROUND
    assert report.setups[1].reason == "client 1 has 4 live neighbours, fewer than 5"
    assert second.report.included == tuple(range(n))  # a new set-up: everyone is back
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))


def test_a_round_that_aborts_is_followed_by_a_new_set_up() -> None:
    n = 5
    p = params(n)
    inputs = grid_inputs(p.dim, 6)
    # Three of five silent at the masked input: two inputs, and nobody can remove the masks
    # of the silent (t = 3 holders each): the round aborts before anything is revealed.
    plan = DropPlan(rounds={2: DropSchedule({"masked-input": frozenset({0, 1, 2})})})
    result = simulate_rounds(p, n, inputs, 3, drops=plan, seed=6, baseline=False)  # type: ignore[arg-type]
    report = result.report
    assert [r.report.outcome for r in report.rounds] == [
        RoundOutcome.COMPLETED,
        RoundOutcome.ABORTED,
        RoundOutcome.COMPLETED,
    ]
    assert report.rounds[1].report.abort_reason
    assert report.rounds[2].kind is RoundKind.SETUP_AND_ROUND
    assert report.setups[1].reason == "the last round aborted"
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))


def test_a_set_up_that_aborts_leaves_its_round_unrun() -> None:
    n = 5
    p = params(n)
    inputs = grid_inputs(p.dim, 7)
    plan = DropPlan(rounds={1: DropSchedule({"advertise": frozenset({0, 1, 2})})})
    result = simulate_rounds(p, n, inputs, 2, drops=plan, seed=7, baseline=False)  # type: ignore[arg-type]
    first, second = result.report.rounds
    assert first.report.outcome is RoundOutcome.ABORTED
    assert first.report.abort_reason is not None
    assert first.report.abort_reason.startswith("the set-up aborted")
    assert first.setup is not None and first.setup.outcome is RoundOutcome.ABORTED
    assert second.completed and second.setup is not None
    assert second.setup.reason == "the last set-up aborted"
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))


def test_a_client_that_misses_an_unmask_request_leaves_and_is_met_as_a_dropout() -> None:
    n = 6
    p = params(n)
    inputs = grid_inputs(p.dim, 8)
    plan = DropPlan(rounds={1: DropSchedule({"unmask": frozenset({3})})})
    result = simulate_rounds(p, n, inputs, 2, drops=plan, seed=8, baseline=False)  # type: ignore[arg-type]
    first, second = result.report.rounds
    assert 3 in first.report.included  # its input was in, its self mask rebuilt by others
    assert second.kind is RoundKind.SESSION
    assert 3 not in second.report.included
    assert set(second.report.client_aborts) == {3}  # it left rather than start round 2
    check_exact(p, result, inputs, np.ones(n, dtype=np.int64))


def test_distributed_dp_sessions_decode_each_round_under_its_own_context() -> None:
    from secagg.dp.calibrate import DpConfig

    n, dim = 12, 16
    p = Params(
        dim=dim,
        max_clients=n,
        protocol="secagg",  # type: ignore[arg-type]
        min_cohort=10,
        dp=DpConfig(
            dim=dim,
            l2_clip=1.0,
            bits=20,
            min_clients=10,
            max_clients=n,
            delta=1e-5,
            target_epsilon=8.0,
            rounds=3,
        ),
    )
    result = simulate_rounds(p, n, random_round_inputs(dim, 9), 3, seed=9, baseline=False)
    for r in result.report.rounds:
        assert r.completed
        assert r.report.epsilon is not None
        assert r.report.max_abs_error is not None
        # A decode under another round's rotation would be off by about the clip.
        assert r.report.max_abs_error <= r.report.error_bound


def test_worker_processes_and_seeds_change_nothing_a_run_computes() -> None:
    n = 8
    p = params(n, protocol="secagg+")
    inputs = grid_inputs(p.dim, 10)
    plan = DropPlan(rate=0.2, seed=10)
    here = simulate_rounds(p, n, inputs, 3, drops=plan, seed=10, workers=1, baseline=False)  # type: ignore[arg-type]
    forked = simulate_rounds(p, n, inputs, 3, drops=plan, seed=10, workers=3, baseline=False)  # type: ignore[arg-type]
    for a, b in zip(here.ring_totals, forked.ring_totals, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            np.testing.assert_array_equal(a, b)
    assert [r.report.included for r in here.report.rounds] == [
        r.report.included for r in forked.report.rounds
    ]


def test_drop_plans_parse_rounds_and_apply_stages_to_the_rounds_that_run_them() -> None:
    plan = DropPlan.parse(["masked-input=1", "2:unmask=3,4", "1:commit=5"])
    assert plan.every.at == {"masked-input": frozenset({1})}
    assert set(plan.rounds) == {1, 2}
    round_only = round_stages(False)
    with_setup = (*SETUP_STAGES, *round_only)
    assert plan.schedule(1, round_only, 8).at == {"masked-input": frozenset({1})}
    assert plan.schedule(1, with_setup, 8).at == {
        "masked-input": frozenset({1}),
        "commit": frozenset({5}),
    }
    assert plan.schedule(2, round_only, 8).at == {
        "masked-input": frozenset({1}),
        "unmask": frozenset({3, 4}),
    }
    with pytest.raises(ConfigurationError):
        DropPlan.parse(["x:commit=1"])
    with pytest.raises(ConfigurationError):
        DropPlan(rate=0.1, every=DropSchedule({"commit": frozenset({1})}))
    with pytest.raises(ConfigurationError):  # one client at two stages of one round
        DropPlan.parse(["masked-input=1", "2:unmask=1"]).schedule(2, round_only, 8)
    random = DropPlan(rate=0.25, seed=1)
    drawn = random.schedule(3, round_only, 8)
    assert sum(len(ids) for ids in drawn.at.values()) == 2
    assert set(drawn.at) <= {s.value for s in round_only}


def test_sessions_are_masking_only_and_stages_must_exist() -> None:
    from secagg.schemes.plaintext import PlaintextScheme

    inputs = random_round_inputs(3, 1)
    with pytest.raises(ConfigurationError, match="masking"):
        simulate_rounds(PlaintextScheme(dim=3, max_weight=1), 4, inputs, 2)
    plan = DropPlan(every=DropSchedule({"upload": frozenset({1})}))
    with pytest.raises(ConfigurationError, match="no upload stage"):
        simulate_rounds(params(5), 5, inputs, 2, drops=plan)


def _simulate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["simulate", *args])
    return result.exit_code, result.output


def test_cli_rounds_as_a_session_in_json() -> None:
    code, out = _simulate(
        "-n", "8", "--dim", "20", "--rounds", "3", "--session-rounds", "2", "--seed", "1",
        "--drop", "2:unmask=3", "--json",
    )  # fmt: skip
    assert code == 0, out
    report = json.loads(out)
    assert report["mode"] == "session"
    assert [r["kind"] for r in report["rounds"]] == ["set-up+round", "session", "set-up+round"]
    assert [r["inputs_in_sum"] for r in report["rounds"]] == [8, 8, 8]
    assert report["rounds"][1]["dropped"]["unmask"] == [3]
    assert report["rounds"][0]["setup"]["members"] == 8
    assert report["rounds"][1]["setup"] is None
    assert len(report["setups"]) == 2
    summary = report["summary"]
    assert summary["session"]["messages_up_per_client"] == 2
    assert summary["setup"]["setups"] == 2
    for r in report["rounds"]:
        assert r["max_abs_error"] <= r["error_bound"]


def test_cli_rounds_one_shot_and_the_table() -> None:
    code, out = _simulate("-n", "6", "--dim", "10", "--rounds", "2", "--one-shot", "--seed", "2")
    assert code == 0, out
    assert "one-shot" in out and "set-up" not in out
    code, out = _simulate("-n", "6", "--dim", "10", "--rounds", "2", "--seed", "2")
    assert code == 0, out
    assert "set-up 1" in out and "session (1.2)" in out and "set-up+round (1.1)" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--one-shot"], "need --rounds"),
        (["--rounds", "2", "--one-shot", "--session-rounds", "2"], "drop --one-shot"),
        (["--rounds", "2", "--groups", "2"], "--groups runs one round"),
        (["--rounds", "2", "--scheme", "plaintext"], "add --one-shot"),
    ],
)
def test_cli_rounds_refuses_what_it_cannot_run(args: list[str], says: str) -> None:
    code, out = _simulate("-n", "6", "--dim", "4", *args)
    assert code != 0
    assert says in out


def test_cli_active_mode_random_dropout_draws_among_the_rounds_stages() -> None:
    """--dropout in active mode once drew stages the round does not run (upload, decrypt)
    and the round refused them."""
    code, out = _simulate(
        "-n", "20", "--dim", "10", "--server-model", "semi-malicious", "--dropout", "0.3",
        "--seed", "3", "--json",
    )  # fmt: skip
    assert code in (0, 1), out
    report = json.loads(out)
    assert set(report["dropped"]) <= {s.value for s in (*SETUP_STAGES, *round_stages(True))}
    assert sum(len(ids) for ids in report["dropped"].values()) >= 1

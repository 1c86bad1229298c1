"""Sessions over random dropout schedules: exact, round after round.

Specification: whatever subset of clients falls silent at whatever stage of the set-up or of
any round, and whether the session runs to its end or is set up again (after an aborted
round, at its round cap, or when a client's live neighbours run short), every round that
completes reveals exactly the plaintext sum of exactly the inputs it says it includes, and
no client ever reveals both kinds of share of one peer for one round.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import RoundAborted
from secagg.protocol.stages import Stage
from tests.protocol.test_fuzz_handlers import bounded
from tests.sessions.cohort import Cohort, task_of

ROUND_STAGES = (Stage.MASKED_INPUT, Stage.UNMASK)
ACTIVE_ROUND_STAGES = (Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)
SETUP_STAGES = (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE, Stage.SHARE)


@st.composite
def schedules(
    draw: st.DrawFn,
) -> tuple[dict[str, object], list[dict[int, Stage]], dict[int, Stage]]:
    n = draw(st.integers(6, 11))
    active = draw(st.booleans())
    sparse = draw(st.booleans()) and not active and n >= 8
    degree = 4 if sparse else None
    threshold = 2 if sparse else (n // 2 + 1 if active else 3)
    shape = {"n": n, "active": active, "degree": degree, "threshold": threshold}
    stages = ACTIVE_ROUND_STAGES if active else ROUND_STAGES
    rounds = draw(st.integers(1, 5))
    per_round = [
        draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(stages), max_size=2))
        for _ in range(rounds)
    ]
    setup = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(SETUP_STAGES), max_size=1))
    return shape, per_round, setup


def _one_kind_per_peer(cohort: Cohort) -> None:
    by_round: dict[int, tuple[set[int], set[int]]] = {}
    for answer in cohort.local.transcript.answers:
        seeds, keys = by_round.setdefault(answer.round_number, (set(), set()))
        seeds.update(w for w, _ in answer.self_mask_shares)
        keys.update(w for w, _ in answer.key_shares)
    for seeds, keys in by_round.values():
        assert not seeds & keys


@bounded(60)
@given(schedules(), st.integers(0, 2**16))
def test_every_completed_round_is_exact_over_random_schedules(
    schedule: tuple[dict[str, object], list[dict[int, Stage]], dict[int, Stage]], seed: int
) -> None:
    shape, per_round, setup = schedule
    cohort = Cohort(
        shape["n"],  # type: ignore[arg-type]
        degree=shape["degree"],  # type: ignore[arg-type]
        threshold=shape["threshold"],  # type: ignore[arg-type]
        active=shape["active"],  # type: ignore[arg-type]
        seed=seed,
        max_rounds=3,
    )
    try:
        cohort.local.set_up(setup)
    except RoundAborted:
        return  # too few finished the set-up: nothing was revealed, nothing to check
    completed = 0
    gone: set[int] = set(setup)  # a silent client stays silent: it has left the session
    for r, silent in enumerate(per_round, start=1):
        if cohort.server.needs_setup() is not None:
            break  # a driver would set up again; the next session is a fresh cohort
        updates = cohort.updates()
        try:
            result = cohort.local.run_round(task_of(r), updates, silent)
        except RoundAborted:
            break
        total = result.aggregate.ring_total
        assert total is not None
        assert [int(v) for v in total] == cohort.expected_ring_sum(updates, result.included)
        before_input = {u for u, stage in silent.items() if stage is Stage.MASKED_INPUT}
        assert not set(result.included) & (gone | before_input)
        gone |= set(silent)
        completed += 1
    _one_kind_per_peer(cohort)
    assert completed <= 3

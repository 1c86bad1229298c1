"""Property: under any dropout schedule, a round yields exactly the ring sum of the included
clients' inputs, or aborts and reveals nothing; no secret is ever revealed twice over."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.errors import DropReason, RoundAborted, UsageError
from secagg.schemes.masking.client import Completed
from secagg.schemes.masking.server import Stage
from tests.protocol.harness import Harness

STAGES = ("advertise", "share", "mask", "consistency", "unmask")


@st.composite
def rounds(draw: st.DrawFn) -> tuple[Harness, dict[str, list[int]]]:
    n = draw(st.integers(3, 14))
    complete = n <= 4 or draw(st.booleans())
    degree = None if complete else draw(st.integers(1, (n - 2) // 2)) * 2
    k = n - 1 if degree is None else degree
    # Mostly low thresholds (rounds that survive drops), sometimes up to the degree.
    threshold = draw(st.integers(2, max(2, k // 2 + 1) if draw(st.booleans()) else max(2, k)))
    active = draw(st.booleans())
    stages = STAGES if active else tuple(s for s in STAGES if s != "consistency")
    # Each client drops with probability 1/3, at a uniformly chosen stage.
    dropping = draw(st.lists(st.integers(0, 3 * len(stages) - 1), min_size=n, max_size=n))
    schedule: dict[str, list[int]] = {s: [] for s in STAGES}
    for client, choice in enumerate(dropping):
        if choice < len(stages):
            schedule[stages[choice]].append(client)
    h = Harness(
        n,
        degree=degree,
        threshold=threshold,
        dim=draw(st.integers(1, 5)),
        value_bits=draw(st.integers(1, 6)),
        max_weight=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**16)),
        active=active,
    )
    return h, schedule


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_result_is_the_exact_sum_of_included_inputs_or_nothing(
    case: tuple[Harness, dict[str, list[int]]],
) -> None:
    h, schedule = case
    steps = [h.advertise, h.share, h.mask, h.consistency, h.unmask]
    aborted_at = None
    for stage, step in zip(STAGES, steps, strict=True):
        if stage == "consistency" and not h.config.active:
            continue
        try:
            step(skip=schedule[stage])
        except RoundAborted as exc:
            aborted_at = exc.stage
            break

    revealed_self = {
        u
        for c in h.clients.values()
        if isinstance(c.state, Completed)
        for u in c.state.revealed_self_mask_shares_of
    }
    revealed_keys = {
        u
        for c in h.clients.values()
        if isinstance(c.state, Completed)
        for u in c.state.revealed_key_shares_of
    }
    # Nobody's two secrets are ever both handed out, by anyone.
    assert not revealed_self & revealed_keys

    if aborted_at is not None:
        assert h.server.stage is Stage.ABORTED
        with pytest.raises(UsageError):
            _ = h.server.result
        if aborted_at not in (Stage.UNMASK,):
            assert not revealed_self and not revealed_keys
        assert any(schedule.values()), "a round without drops must never abort"
        return

    result = h.server.result
    # Pruned before masking: excluded. (Pruned at the consistency stage: still included.)
    pruned = {
        c
        for c, d in h.server.drops.items()
        if d.reason is DropReason.TOO_FEW_NEIGHBOURS and d.stage in (Stage.ADVERTISE, Stage.SHARE)
    }
    excluded = set(schedule["advertise"] + schedule["share"] + schedule["mask"]) | pruned
    assert set(result.included) == set(range(len(h.clients))) - excluded
    np.testing.assert_array_equal(result.total, h.expected_total(result.included))


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 10), st.integers(0, 2**16))
def test_round_without_drops_always_completes(n: int, seed: int) -> None:
    h = Harness(n, threshold=max(2, n // 2), seed=seed)
    h.run()
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(n)))

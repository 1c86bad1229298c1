"""The Ray backend: the same round as in process, bit for bit, on a local Ray cluster.

Ray starts once for this module (a local cluster of two CPUs, as on CI) and stops after it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

ray = pytest.importorskip("ray")

from secagg.backends import (  # noqa: E402
    Backend,
    open_cohort,
    ray_backend,
)
from secagg.backends.ray_backend import RayCohort, RayMaskApplier  # noqa: E402
from secagg.cohort import ClientGroup  # noqa: E402
from secagg.errors import ConfigurationError  # noqa: E402
from secagg.hazmat import prg  # noqa: E402
from secagg.hazmat.randomness import DeterministicRandomness  # noqa: E402
from secagg.protocol.codec import Message  # noqa: E402
from secagg.schemes.masking.parameters import Params, ServerModel  # noqa: E402
from secagg.schemes.plaintext import PlaintextScheme  # noqa: E402
from secagg.simulate import (  # noqa: E402
    DropSchedule,
    SimulationResult,
    random_inputs,
    root_randomness,
    simulate_round,
)
from secagg.simulate.rounds import (  # noqa: E402
    DropPlan,
    RoundKind,
    random_round_inputs,
    simulate_rounds,
)

CLIENTS = 30
DIM = 1_000
SEED = 7


@pytest.fixture(scope="module", autouse=True)
def local_cluster() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about GPU variables
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def drops_at(stages: tuple[str, ...], per_stage: int = 2) -> DropSchedule:
    """``per_stage`` clients fail at each stage, never the same one twice."""
    return DropSchedule(
        {s: frozenset(range(per_stage * k, per_stage * (k + 1))) for k, s in enumerate(stages)}
    )


def on_ray(params: Params, drops: DropSchedule, *, batches: int = 3) -> SimulationResult:
    """The round on Ray, with the unmasking always split into Ray tasks (however small)."""
    scheme = params.simulated(
        range(CLIENTS),
        root_randomness(SEED, "round"),
        apply_masks=RayMaskApplier(ranges=3, min_work=0),
    )
    return simulate_round(
        scheme,
        CLIENTS,
        random_inputs(DIM, SEED),
        drops=drops,
        seed=SEED,
        backend=Backend.RAY,
        workers=batches,
        baseline=False,
    )


def in_process(params: Params, drops: DropSchedule) -> SimulationResult:
    return simulate_round(
        params, CLIENTS, random_inputs(DIM, SEED), drops=drops, seed=SEED, baseline=False
    )


def assert_same_round(ray_result: SimulationResult, reference: SimulationResult) -> None:
    assert ray_result.report.outcome == reference.report.outcome == "completed"
    assert ray_result.report.included == reference.report.included
    assert ray_result.report.dropped == reference.report.dropped
    assert ray_result.ring_total is not None and reference.ring_total is not None
    assert ray_result.ring_total.dtype == reference.ring_total.dtype
    np.testing.assert_array_equal(ray_result.ring_total, reference.ring_total)
    assert ray_result.aggregate is not None and reference.aggregate is not None
    assert ray_result.aggregate.tobytes() == reference.aggregate.tobytes()


def test_a_semi_honest_round_on_ray_equals_the_in_process_round_bit_for_bit() -> None:
    params = Params(dim=DIM, max_clients=CLIENTS, dropout_rate=0.33)
    drops = drops_at(("commit", "reveal", "advertise", "share", "masked-input", "unmask"))
    reference = in_process(params, drops)
    result = on_ray(params, drops)
    assert_same_round(result, reference)
    assert result.report.max_abs_error is not None
    assert result.report.max_abs_error <= result.report.error_bound


def test_an_active_round_on_ray_equals_the_in_process_round_bit_for_bit() -> None:
    params = Params(
        dim=DIM,
        max_clients=CLIENTS,
        dropout_rate=0.33,
        server_model=ServerModel.SEMI_MALICIOUS,
        min_cohort=10,
    )
    # Degree 20 and threshold 11 at 30 clients: one drop per stage keeps every secret
    # recoverable (two would leave some self-mask seed with only 10 holders).
    stages = ("reveal", "advertise", "share", "masked-input", "consistency", "unmask")
    drops = drops_at(stages, per_stage=1)
    assert_same_round(on_ray(params, drops), in_process(params, drops))


def test_the_number_of_batches_and_the_chunk_sizes_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = Params(dim=DIM, max_clients=CLIENTS, dropout_rate=0.33)
    drops = drops_at(("advertise", "masked-input"))
    reference = on_ray(params, drops, batches=1)
    # One delivery and one reply per chunk: every stage is many calls and many objects.
    monkeypatch.setattr(ray_backend, "DELIVERY_CHUNK_BYTES", 1)
    monkeypatch.setattr(ray_backend, "REPLY_CHUNK_BYTES", 1)
    assert_same_round(on_ray(params, drops, batches=5), reference)


def test_simulate_round_on_ray_builds_its_own_mask_applier_and_agrees_with_process() -> None:
    params = Params(dim=DIM, max_clients=CLIENTS, dropout_rate=0.33)
    drops = drops_at(("share", "unmask"))
    result = simulate_round(
        params, CLIENTS, random_inputs(DIM, SEED), drops=drops, seed=SEED, backend="ray"
    )
    assert_same_round(result, in_process(params, drops))
    assert result.report.plaintext_seconds is not None  # the baseline ran on Ray too


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masks_applied_by_ray_tasks_over_ranges_equal_masks_applied_in_one_pass(
    dtype: type[np.unsignedinteger],
) -> None:
    rng = DeterministicRandomness(b"ray mask applier test")
    n = 10_007  # not a multiple of the ranges, nor of a keystream block
    start = rng.words(2 * n).view(np.uint64)[:n].astype(dtype)
    masks = [(rng.bytes(16), bool(k % 3 == 0)) for k in range(17)]
    expected = start.copy()
    prg.apply_masks(expected, masks)
    got = start.copy()
    RayMaskApplier(ranges=4, min_work=0)(got, masks)
    np.testing.assert_array_equal(got, expected)


def test_a_client_error_in_a_ray_worker_reaches_the_caller_as_itself() -> None:
    def wrong_shape(client_id: int) -> NDArray[np.float32]:
        return np.zeros(DIM + 1, dtype=np.float32)

    with pytest.raises(ConfigurationError, match=r"expected \(1000,\)"):
        simulate_round(
            PlaintextScheme(dim=DIM), 4, wrong_shape, seed=1, backend="ray", baseline=False
        )


def test_a_ray_cohort_runs_one_actor_per_batch_never_one_per_client() -> None:
    scheme = PlaintextScheme(dim=4)
    config = scheme.round_config(range(3), nonce=bytes(16))

    def group_of(ids: Sequence[int]) -> ClientGroup:
        clients = {i: scheme.client(config, i, DeterministicRandomness(bytes(16))) for i in ids}
        return ClientGroup(clients, zeros, [1, 1, 1], np.ones(3), 4, scheme.reference)

    with RayCohort(group_of, (0, 1, 2), 8) as cohort:
        assert cohort.batches == 3  # never more batches than clients
    with open_cohort(Backend.RAY, group_of, (0, 1, 2), None) as default:
        assert isinstance(default, RayCohort)
        assert default.batches == 2  # one per CPU of the cluster


class CountingDeliveries(Mapping[int, bytes]):
    """Deliveries encoded when they are read, counting the reads."""

    def __init__(self, messages: Mapping[int, Message]) -> None:
        self.messages = messages
        self.reads = 0

    def __getitem__(self, client_id: int) -> bytes:
        self.reads += 1
        return self.messages[client_id].encode()

    def __iter__(self) -> Iterator[int]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)


def test_a_ray_cohort_reads_each_delivery_only_when_its_chunk_is_shipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 12
    scheme = PlaintextScheme(dim=4)
    config = scheme.round_config(range(n), nonce=bytes(16))

    def group_of(ids: Sequence[int]) -> ClientGroup:
        clients = {i: scheme.client(config, i, DeterministicRandomness(bytes(16))) for i in ids}
        return ClientGroup(clients, zeros, [1] * n, np.ones(n), 4, scheme.reference)

    monkeypatch.setattr(ray_backend, "DELIVERY_CHUNK_BYTES", 1)  # one delivery per chunk
    deliveries = CountingDeliveries(scheme.server(config).start())
    with RayCohort(group_of, tuple(range(n)), 2) as cohort:
        replies = cohort.answer(deliveries)
        first, _, _ = next(replies)
        # Before the first reply: two one-delivery chunks shipped to each of the two batches.
        assert deliveries.reads == 4
        answered = [first, *(i for i, _, _ in replies)]
    assert sorted(answered) == list(range(n))
    assert deliveries.reads == n


def zeros(client_id: int) -> NDArray[np.float32]:
    return np.zeros(4, np.float32)


def test_an_unknown_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="process, ray"):
        Backend.parse("spark")


def test_clients_that_cannot_be_shipped_to_ray_are_refused_in_one_line() -> None:
    lock = threading.Lock()  # no pickled form, like a CKKS context

    def locked_inputs(client_id: int) -> NDArray[np.float32]:
        with lock:
            return np.zeros(DIM, dtype=np.float32)

    with pytest.raises(ConfigurationError, match="lock has no pickled form") as caught:
        simulate_round(PlaintextScheme(dim=DIM), 4, locked_inputs, backend="ray", baseline=False)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------- sessions
def test_a_session_on_ray_keeps_its_clients_in_the_same_actors_across_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of rounds as sessions (two set-ups, random dropouts at every stage): one
    ``RayCohort`` for the whole run, so every session client lives in its batch's actor from
    its set-up to its last round; every round's sum is the in-process run's, bit for bit."""
    built: list[int] = []
    original = RayCohort.__init__

    def counting(self: RayCohort, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        built.append(self.batches)

    monkeypatch.setattr(RayCohort, "__init__", counting)
    n, dim, rounds = 16, 300, 4
    params = Params(dim=dim, max_clients=n)
    options = {
        "session_rounds": 2,
        "drops": DropPlan(rate=0.1, seed=SEED),
        "seed": SEED,
        "baseline": False,
    }
    on_ray_run = simulate_rounds(
        params, n, random_round_inputs(dim, SEED), rounds, backend="ray", workers=3, **options
    )
    here = simulate_rounds(params, n, random_round_inputs(dim, SEED), rounds, workers=1, **options)
    assert built == [3]  # one cohort of three actors, for four rounds and two set-ups
    report = on_ray_run.report
    assert [r.kind for r in report.rounds] == [
        RoundKind.SETUP_AND_ROUND,
        RoundKind.SESSION,
        RoundKind.SETUP_AND_ROUND,
        RoundKind.SESSION,
    ]
    assert report.completed == rounds
    for a, b, r in zip(on_ray_run.ring_totals, here.ring_totals, report.rounds, strict=True):
        assert a is not None and b is not None
        np.testing.assert_array_equal(a, b)
        assert r.report.max_abs_error is not None
        assert r.report.max_abs_error <= r.report.error_bound
    assert [r.report.included for r in report.rounds] == [
        r.report.included for r in here.report.rounds
    ]


def test_an_active_session_on_ray_equals_the_in_process_session() -> None:
    n, dim = 10, 50
    params = Params(dim=dim, max_clients=n, server_model=ServerModel.SEMI_MALICIOUS)
    drops = DropPlan(rounds={2: DropSchedule({"consistency": frozenset({4})})})
    runs = [
        simulate_rounds(
            params,
            n,
            random_round_inputs(dim, SEED),
            3,
            drops=drops,
            seed=SEED,
            baseline=False,
            backend=backend,
            workers=2,
        )
        for backend in (Backend.RAY, Backend.PROCESS)
    ]
    for a, b in zip(runs[0].ring_totals, runs[1].ring_totals, strict=True):
        assert a is not None and b is not None
        np.testing.assert_array_equal(a, b)
    # Silent after its masked input: in round 2's sum, then gone from the session.
    assert 4 in runs[0].report.rounds[1].report.included
    assert 4 not in runs[0].report.rounds[2].report.included
    for r in runs[0].report.rounds[1:]:
        assert (r.messages_up_per_client, r.messages_down_per_client) == (3.0, 3.0)

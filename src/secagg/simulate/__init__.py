"""In-process transport: one round of any scheme between many clients and a server, with
scripted dropouts.

This is the executable specification of a round: the round engine
(``secagg.protocol.runner.RoundRun``) drives the scheme's server; every message really is
encoded, counted into the engine's byte meter and decoded on the other side, exactly as it
would travel on the wire; the report is a view of the engine's ``RoundRecord``; and the
result is checked against the exact weighted mean of the (clipped) inputs of the clients
that were included. Inputs are produced one client at a time, when that client uses its
input, so that a cohort of thousands never holds all its vectors at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.backends import Backend, ClientCohort, mask_applier, open_cohort
from secagg.cohort import ClientGroup, Delivery, default_workers, delivery_size
from secagg.errors import ConfigurationError
from secagg.hazmat.randomness import DeterministicRandomness, Randomness, SystemRandomness, forked
from secagg.parallel import MaskApplier
from secagg.protocol.codec import Message
from secagg.protocol.runner import (
    ByteMeter,
    NoiseTakenOff,
    RoundClient,
    RoundOutcome,
    RoundRecord,
    RoundRun,
    RoundServer,
)
from secagg.protocol.stages import DROP_STAGES, Stage
from secagg.schemes.base import RoundOpening, Scheme, SchemeFacts, SchemeSettings
from secagg.schemes.masking.parameters import Params
from secagg.schemes.plaintext import PlaintextScheme

__all__ = [
    "SEMI_HONEST_STAGES",
    "Driven",
    "DropSchedule",
    "InputSource",
    "RoundReport",
    "SimulationResult",
    "StageTraffic",
    "TimedServer",
    "drive",
    "exact_mean",
    "integer_weights",
    "random_inputs",
    "root_randomness",
    "secure_mean",
    "simulate_round",
]

# The stages a semi-honest masking round runs, in order (``DROP_STAGES`` has every stage).
SEMI_HONEST_STAGES = tuple(
    s.value
    for s in (
        Stage.COMMIT,
        Stage.REVEAL,
        Stage.ADVERTISE,
        Stage.SHARE,
        Stage.MASKED_INPUT,
        Stage.UNMASK,
    )
)
WEIGHT_LEVELS = 1 << 10  # resolution of non-integer weights

InputSource = Callable[[int], NDArray[np.floating]]


@dataclass(frozen=True)
class DropSchedule:
    """Which clients fail to send their message at which stage."""

    at: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for stage, ids in self.at.items():
            if stage not in DROP_STAGES:
                raise ConfigurationError(
                    f"unknown stage {stage!r}; stages are {', '.join(DROP_STAGES)}"
                )
            if seen & ids:
                raise ConfigurationError(f"client(s) {sorted(seen & ids)} drop at two stages")
            seen |= ids

    @classmethod
    def parse(cls, specs: Iterable[str]) -> DropSchedule:
        """From ``STAGE=ID,ID,...`` strings (repeatable, stages may repeat)."""
        at: dict[str, set[int]] = {}
        for spec in specs:
            stage, sep, ids = spec.partition("=")
            stage = stage.strip()
            if not sep:
                raise ConfigurationError(f"--drop expects STAGE=ID,ID,...; got {spec!r}")
            try:
                parsed = {int(i) for i in ids.split(",") if i.strip()}
            except ValueError:
                raise ConfigurationError(f"--drop ids must be integers; got {ids!r}") from None
            at.setdefault(stage, set()).update(parsed)
        return cls({s: frozenset(ids) for s, ids in at.items()})

    @classmethod
    def random(
        cls, n: int, rate: float, rng: Randomness, *, stages: Sequence[str] = SEMI_HONEST_STAGES
    ) -> DropSchedule:
        """``round(rate * n)`` distinct clients, each failing at a uniformly chosen stage."""
        if not 0.0 <= rate < 1.0:
            raise ConfigurationError("the dropout rate must be in [0, 1)")
        count = round(rate * n)
        order = _shuffled(n, rng)
        stage_draws = rng.words(count) % len(stages)
        at: dict[str, set[int]] = {}
        for client, s in zip(order[:count], stage_draws, strict=True):
            at.setdefault(stages[int(s)], set()).add(int(client))
        return cls({s: frozenset(ids) for s, ids in at.items()})

    def stage_of(self, client_id: int) -> str | None:
        for stage, ids in self.at.items():
            if client_id in ids:
                return stage
        return None

    def check_ids(self, n: int) -> None:
        for ids in self.at.values():
            bad = sorted(i for i in ids if not 0 <= i < n)
            if bad:
                raise ConfigurationError(f"--drop names client(s) {bad} outside 0..{n - 1}")


def _shuffled(n: int, rng: Randomness) -> NDArray[np.int64]:
    # Sorting by 64-bit random keys is an unbiased shuffle up to negligible collisions.
    keys = rng.words(2 * n).view(np.uint64) if n else np.zeros(0, np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64)


def random_inputs(dim: int, seed: int | None) -> InputSource:
    """Client i's input: ``dim`` values uniform in (-1, 1), reproducible from (seed, i).

    Without a seed the inputs are fresh for each run but still a function of the client id
    within it: whoever reads client i's input again (a check of the aggregate, a group's
    round and the cohort's exact mean) reads the same values."""
    root = root_randomness(seed, "inputs")
    if not isinstance(root, DeterministicRandomness):
        root = DeterministicRandomness(root.bytes(32))

    def source(client_id: int) -> NDArray[np.floating]:
        words = root.fork(f"input/{client_id}").words(dim)
        return (words.astype(np.float64) * (2.0 / 2**32) - 1.0).astype(np.float32)

    return source


def integer_weights(weights: NDArray[np.floating] | None, n: int) -> tuple[list[int], int]:
    """Per-client integer weights and their maximum.

    Integer-valued weights are used as they are; others are scaled so that the largest
    becomes ``WEIGHT_LEVELS`` and rounded (the report's error then includes that rounding).
    """
    if weights is None:
        return [1] * n, 1
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ConfigurationError(f"weights must be a vector of {n} values, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ConfigurationError("weights must be finite, non-negative and not all zero")
    if np.all(w == np.round(w)) and w.max() < 2**31:
        ints = [int(x) for x in w]
    else:
        ints = [int(x) for x in np.round(w / w.max() * WEIGHT_LEVELS)]
    return ints, max(1, max(ints))


@dataclass(frozen=True)
class RoundReport:
    """What one simulated round did and cost; ``to_json`` is the CLI's ``--json`` output.

    Besides what happened (outcome, who was included, who dropped at which stage and why)
    every report carries the round's signals: the inputs in the revealed sum, the threshold
    margin (unmask answers beyond t; masking only), the clip rate, the error bound in force
    and the error measured against it, and time and bytes against a plaintext round over the
    same included clients.
    """

    scheme: str
    outcome: RoundOutcome
    abort_reason: str | None
    clients: int
    dim: int
    included: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    drop_reasons: Mapping[int, str]
    client_aborts: Mapping[int, str]
    facts: SchemeFacts  # what the scheme fixed: protocol, degree, threshold, ring, DP
    session_attempts: int | None  # masking: commit-reveal attempts before the session was agreed
    threshold_margin: int | None  # masking: clients that answered the unmask stage, minus t
    clipped_values: int
    clip_rate: float
    seconds: float
    stage_seconds: Mapping[str, float]
    client_seconds: float  # inside the clients' code, per client
    server_seconds: float  # inside the server's code
    upload_bytes_per_client: float
    download_bytes_per_client: float
    plaintext_bytes_per_client: int
    plaintext_seconds: float | None  # the same included clients' round as plaintext FedAvg
    max_abs_error: float | None  # against the weighted mean of the included inputs, clipped
    error_bound: float  # a hard bound; with distributed DP, one exceeded w.p. below 1e-9
    epsilon: float | None = None  # distributed DP: the guarantee of the sum actually revealed
    # Distributed DP, when most clients' updates were clipped: an L2 clip near the median norm
    # of the updates (two significant figures: a hint, not any one client's norm). None
    # otherwise.
    dp_clip_hint: float | None = None
    # Removable noise layers: what came off the sum (c, A, w, the noise kept); None: none.
    noise_taken_off: NoiseTakenOff | None = None

    @property
    def protocol(self) -> str:
        return self.facts.protocol

    @property
    def threshold(self) -> int | None:
        return self.facts.threshold

    @property
    def degree(self) -> int | None:
        return self.facts.degree

    @property
    def ring_bits(self) -> int | None:
        return self.facts.ring_bits

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "outcome": self.outcome,
            "abort_reason": self.abort_reason,
            "protocol": self.protocol,
            "clients": self.clients,
            "dim": self.dim,
            "included": list(self.included),
            "inputs_in_sum": len(self.included),
            "dropped": {s: list(ids) for s, ids in self.dropped.items()},
            "drop_reasons": {str(i): r for i, r in sorted(self.drop_reasons.items())},
            "client_aborts": {str(i): r for i, r in sorted(self.client_aborts.items())},
            **self.facts.as_dict(),
            "session_attempts": self.session_attempts,
            "threshold_margin": self.threshold_margin,
            "clipped_values": self.clipped_values,
            "clip_rate": self.clip_rate,
            "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "client_seconds": self.client_seconds,
            "server_seconds": self.server_seconds,
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "download_bytes_per_client": self.download_bytes_per_client,
            "plaintext_bytes_per_client": self.plaintext_bytes_per_client,
            "upload_vs_plaintext": self.upload_bytes_per_client / self.plaintext_bytes_per_client,
            "plaintext_seconds": self.plaintext_seconds,
            "seconds_vs_plaintext": (
                None if not self.plaintext_seconds else self.seconds / self.plaintext_seconds
            ),
            "max_abs_error": self.max_abs_error,
            "error_bound": self.error_bound,
            "epsilon": self.epsilon,
            "dp_clip_hint": self.dp_clip_hint,
            "noise_layers": (
                None if self.noise_taken_off is None else dataclasses.asdict(self.noise_taken_off)
            ),
        }


@dataclass(frozen=True)
class SimulationResult:
    report: RoundReport
    aggregate: NDArray[np.float64] | None = field(repr=False)  # the weighted mean, if any
    ring_total: NDArray[np.unsignedinteger] | None = field(repr=False)  # masking only


def root_randomness(seed: int | None, purpose: str) -> Randomness:
    if seed is None:
        return SystemRandomness()
    return DeterministicRandomness(
        hashlib.sha256(f"secagg/simulate/{purpose}/{seed}".encode()).digest()
    )


class _Deliveries(Mapping[int, Delivery]):
    """A stage's deliveries, each encoded (and metered) when the cohort reads it: a stage
    that broadcasts O(n) bytes to each of n clients never holds all of them at once.

    Each is the message's encoding in parts (``Message.encode_parts``), so a list the server
    put in every recipient's message (the cohort's ids, the contributions) is one object that
    a chunk to a worker carries once; the recipient receives, and the meter counts, the
    message's bytes all the same."""

    def __init__(self, outgoing: Mapping[int, Message], meter: ByteMeter, *also: ByteMeter) -> None:
        self._outgoing = outgoing
        self._meters = (meter, *also)

    def __getitem__(self, client_id: int) -> Delivery:
        parts = self._outgoing[client_id].encode_parts()
        size = delivery_size(parts)
        for meter in self._meters:
            meter.sent(client_id, size)
        return parts

    def __iter__(self) -> Iterator[int]:
        return iter(self._outgoing)

    def __len__(self) -> int:
        return len(self._outgoing)


class TimedServer:
    """The scheme's server, with the time spent inside it counted (the server's cost)."""

    def __init__(self, server: RoundServer) -> None:
        self.inner = server
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _timed(self, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.seconds += time.perf_counter() - started

    def start(self) -> dict[int, Message]:
        return self._timed(self.inner.start)  # type: ignore[no-any-return]

    def receive(self, sender: int, data: Message | bytes) -> None:
        self._timed(lambda: self.inner.receive(sender, data))

    def close_stage(self) -> dict[int, Message]:
        return self._timed(self.inner.close_stage)  # type: ignore[no-any-return]


@dataclass
class StageTraffic:
    """One stage's traffic as ``drive`` counted it, per client: bytes (``meter``) and
    messages each way, and whom the server addressed (before any scripted drop)."""

    meter: ByteMeter = field(default_factory=ByteMeter)
    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    addressed: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Driven:
    """What ``drive`` saw: the engine's record, why each client that aborted did, and each
    stage's traffic (a stage that ran twice, such as a second commit attempt, once)."""

    record: RoundRecord
    client_aborts: dict[int, str]
    traffic: Mapping[Stage, StageTraffic] = field(repr=False)
    abort_stages: Mapping[int, Stage] = field(default_factory=dict, repr=False)  # as delivered

    def per_client(
        self, ids: Iterable[int], stages: Iterable[Stage] | None = None
    ) -> tuple[float, float, float, float]:
        """The mean bytes up and down, and messages up and down, of ``ids`` over ``stages``
        (default: every stage)."""
        ids = list(ids)
        chosen = [self.traffic[s] for s in (self.traffic if stages is None else stages)
                  if s in self.traffic]  # fmt: skip
        if not ids:
            return 0.0, 0.0, 0.0, 0.0
        totals = [0, 0, 0, 0]
        for t in chosen:
            for k, counts in enumerate((t.meter.up, t.meter.down, t.up, t.down)):
                totals[k] += sum(counts.get(i, 0) for i in ids)
        up, down, messages_up, messages_down = (x / len(ids) for x in totals)
        return up, down, messages_up, messages_down


def drive(server: RoundServer, cohort: ClientCohort, drops: DropSchedule) -> Driven:
    """Run ``server``'s stages (a round, or a session's round with its set-up) with
    ``cohort``'s clients through the round engine: each delivery encoded and metered as it
    is read, each reply metered and fed back, no message of a stage to the clients ``drops``
    has fail at it."""
    run = RoundRun(server)
    meter = run.meter
    client_aborts: dict[int, str] = {}
    abort_stages: dict[int, Stage] = {}
    traffic: dict[Stage, StageTraffic] = {}
    for stage, outgoing in run.stages():
        seen = traffic.setdefault(stage, StageTraffic())
        seen.addressed.update(outgoing)
        deliveries = _Deliveries(
            {i: m for i, m in outgoing.items() if drops.stage_of(i) != stage.value},
            meter,
            seen.meter,
        )
        for i in deliveries:
            seen.down[i] = seen.down.get(i, 0) + 1
        for i, data, aborted in cohort.answer(deliveries):
            if aborted is not None:
                client_aborts[i] = aborted
                abort_stages[i] = stage
            elif data is not None:  # a message taken without an answer has none
                seen.up[i] = seen.up.get(i, 0) + 1
                meter.received(i, len(data))
                seen.meter.received(i, len(data))
                server.receive(i, data)
    return Driven(run.record, client_aborts, traffic, abort_stages)


def simulate_round(
    scheme: Scheme | SchemeSettings,
    n: int,
    inputs: InputSource,
    *,
    weights: NDArray[np.floating] | None = None,
    drops: DropSchedule | None = None,
    seed: int | None = None,
    workers: int | None = None,
    baseline: bool = True,
    backend: Backend | str = Backend.PROCESS,
) -> SimulationResult:
    """Run one complete round of ``scheme`` (masking when given ``Params``) and report it.

    ``inputs(i)`` gives client i's update (``dim`` values); ``weights`` its weight (default
    1). With a ``seed`` every random choice (keys, seeds, rounding, the nonce) is
    reproducible; without one they come from the operating system. ``workers`` processes run
    the clients (default: one per core for large rounds, none for small ones). ``baseline``
    also runs plaintext FedAvg over the included clients, for the time and bytes ratios.
    ``backend`` is where the clients and the unmasking run: ``"process"`` (this machine) or
    ``"ray"`` (a Ray cluster, ``workers`` batches of clients, default one per CPU; see
    ``secagg.backends.ray_backend``); the result is the same, bit for bit.
    """
    backend = Backend.parse(backend)
    drops = drops or DropSchedule()
    drops.check_ids(n)
    int_weights, max_weight = integer_weights(weights, n)
    root = root_randomness(seed, "round")
    dim = scheme.dim
    if backend is Backend.PROCESS and workers is None:
        workers = default_workers(n, dim)
    if isinstance(scheme, SchemeSettings):
        if max_weight > scheme.max_weight:
            raise ConfigurationError(
                f"weights need max_weight >= {max_weight}; params allow {scheme.max_weight}"
            )
        applier = (
            MaskApplier(workers or 1)
            if backend is Backend.PROCESS
            else mask_applier(backend, workers)
        )
        scheme = scheme.simulated(range(n), root, apply_masks=applier)
    unknown = set(drops.at) - {s.value for s in scheme.stages}
    if unknown:
        raise ConfigurationError(
            f"this round has no {', '.join(sorted(unknown))} stage: its stages are "
            f"{', '.join(s.value for s in scheme.stages)}"
        )
    exact_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    outcome = _run(scheme, n, inputs, int_weights, exact_weights, drops, root, workers, backend)
    report = _report(scheme, n, inputs, outcome, weights, exact_weights, drops)
    if baseline and outcome.record.completed:
        report = _with_baseline(
            report, n, inputs, int_weights, exact_weights, max_weight, dim, backend
        )
    return SimulationResult(report, outcome.mean, outcome.ring_total)


@dataclass
class _Outcome:
    config: RoundOpening
    record: RoundRecord
    server: TimedServer
    tally_clipped: int
    tally_norms: list[float]
    client_seconds: float
    contributed: set[int]
    weighted_sum: NDArray[np.float64]
    weight_sum: float
    client_aborts: dict[int, str]
    mean: NDArray[np.float64] | None = None
    ring_total: NDArray[np.unsignedinteger] | None = None


def _run(
    scheme: Scheme,
    n: int,
    inputs: InputSource,
    int_weights: Sequence[int],
    exact_weights: NDArray[np.float64],
    drops: DropSchedule,
    root: Randomness,
    workers: int | None,
    backend: Backend = Backend.PROCESS,
) -> _Outcome:
    config = scheme.round_config(range(n), nonce=root.bytes(16))

    def group_of(ids: Sequence[int]) -> ClientGroup:
        clients: dict[int, RoundClient] = {}
        for i in ids:
            scheme.check(config, i)  # each client runs only what its deployment allows
            clients[i] = scheme.client(config, i, forked(root, f"client/{i}"))
        return ClientGroup(
            clients, inputs, int_weights, exact_weights, scheme.dim, scheme.reference
        )

    server = TimedServer(scheme.server(config))
    with open_cohort(backend, group_of, tuple(range(n)), workers) as cohort:
        driven = drive(server, cohort, drops)
        tally = cohort.tally()
    record, client_aborts = driven.record, driven.client_aborts
    outcome = _Outcome(
        config,
        record,
        server,
        tally.clipped,
        tally.norms,
        tally.client_seconds,
        tally.contributed,
        tally.weighted_sum,
        tally.weight_sum,
        client_aborts,
    )
    if record.aggregate is not None:
        outcome.mean = record.aggregate.mean
        outcome.ring_total = record.aggregate.ring_total
    return outcome


def _report(
    scheme: Scheme,
    n: int,
    inputs: InputSource,
    outcome: _Outcome,
    weights: NDArray[np.floating] | None,
    exact_weights: NDArray[np.float64],
    drops: DropSchedule,
    stages: Sequence[Stage] | None = None,
) -> RoundReport:
    """The round's report from its outcome; ``stages`` are the ones it ran (default: the
    scheme's one-shot round's)."""
    server, record = outcome.server, outcome.record
    ran = scheme.stages if stages is None else stages
    dropped: dict[str, list[int]] = {s.value: [] for s in ran}
    reasons: dict[int, str] = {}
    for d in record.drops.values():
        dropped.setdefault(d.stage.value, []).append(d.client_id)
        reasons[d.client_id] = d.reason.value
    facts = scheme.facts(n)
    bound = scheme.error_bound(n)
    included: tuple[int, ...] = ()
    max_abs_error: float | None = None
    margin: int | None = None
    epsilon: float | None = None
    aggregate = record.aggregate
    if aggregate is not None:
        included = aggregate.included
        bound = aggregate.error_bound  # for the number of inputs actually included
        epsilon = scheme.epsilon(len(included))
        if aggregate.noise_taken_off is not None:
            # Accounted at the noise the sum kept over the inputs its count vouches for.
            epsilon = aggregate.noise_taken_off.epsilon
        if set(included) == outcome.contributed:
            exact = outcome.weighted_sum / outcome.weight_sum
        else:  # a client used its input but was not included: recompute over exactly those
            exact, _ = exact_mean(inputs, included, exact_weights, scheme.dim, scheme.reference)
        max_abs_error = float(np.max(np.abs(aggregate.mean - exact)))
    if weights is not None and not np.all(exact_weights == np.round(exact_weights)):
        # Rounding the weights moves the mean too.
        bound += 2 * (facts.clip or 0.0) / WEIGHT_LEVELS
    # DP clips each update's L2 norm (counted per client); the others clip values.
    per_client = facts.dp is not None
    clip_units = len(outcome.contributed) * (1 if per_client else scheme.dim)
    clip_hint = None
    if per_client and 2 * outcome.tally_clipped > len(outcome.contributed):
        # Most updates were scaled down to the clip: the mean shrinks toward 0 by their
        # norm / clip. The median norm clips about half (the usual choice, Andrew et al.,
        # "Differentially Private Learning with Adaptive Clipping", 2021).
        clip_hint = float(f"{np.median(outcome.tally_norms):.2g}")
    margin = server.inner.threshold_margin if aggregate else None
    members = set(included)
    full = [i for i in range(n) if i in members and drops.stage_of(i) is None]
    up, down = record.bytes_per_client(full)
    return RoundReport(
        scheme=scheme.kind.value,
        outcome=record.outcome,
        abort_reason=None if record.abort is None else str(record.abort),
        clients=n,
        dim=scheme.dim,
        included=included,
        dropped={s: tuple(sorted(ids)) for s, ids in dropped.items()},
        drop_reasons=reasons,
        client_aborts=outcome.client_aborts,
        facts=facts,
        session_attempts=record.attempts,
        threshold_margin=margin,
        clipped_values=outcome.tally_clipped,
        clip_rate=outcome.tally_clipped / max(1, clip_units),
        seconds=record.seconds,
        stage_seconds={s.value: t for s, t in record.stage_seconds.items()},
        client_seconds=outcome.client_seconds / max(1, len(outcome.contributed)),
        server_seconds=server.seconds,
        upload_bytes_per_client=up,
        download_bytes_per_client=down,
        plaintext_bytes_per_client=4 * scheme.dim,
        plaintext_seconds=None,
        max_abs_error=max_abs_error,
        error_bound=bound,
        epsilon=epsilon,
        dp_clip_hint=clip_hint,
        noise_taken_off=None if aggregate is None else aggregate.noise_taken_off,
    )


def _with_baseline(
    report: RoundReport,
    n: int,
    inputs: InputSource,
    int_weights: Sequence[int],
    exact_weights: NDArray[np.float64],
    max_weight: int,
    dim: int,
    backend: Backend,
) -> RoundReport:
    """The same included clients' round as plaintext FedAvg: the time it takes."""
    included = report.included

    def source(i: int) -> NDArray[np.floating]:
        return inputs(included[i])

    plain = PlaintextScheme(dim=dim, max_weight=max_weight)
    outcome = _run(
        plain,
        len(included),
        source,
        [int_weights[c] for c in included],
        exact_weights[list(included)],
        DropSchedule(),
        root_randomness(None, "baseline"),
        1 if backend is Backend.PROCESS else None,
        backend,
    )
    return dataclasses.replace(report, plaintext_seconds=outcome.record.seconds)


def exact_mean(
    inputs: InputSource,
    included: Sequence[int],
    exact_weights: NDArray[np.float64],
    dim: int,
    reference: Callable[[NDArray[np.floating]], NDArray[np.float64]],
) -> tuple[NDArray[np.float64], float]:
    """The weighted mean of exactly the included clients' inputs as the scheme clips them
    (what a round's aggregate is checked against), and the largest absolute value among
    those inputs."""
    total = np.zeros(dim, dtype=np.float64)
    largest = 0.0
    for i in included:
        values = reference(np.asarray(inputs(i), dtype=np.float64))
        largest = max(largest, float(np.max(np.abs(values), initial=0.0)))
        total += exact_weights[i] * values
    return total / float(sum(exact_weights[i] for i in included)), largest


def secure_mean(
    updates: NDArray[np.floating],
    weights: NDArray[np.floating] | None = None,
    *,
    params: Params | None = None,
    drops: DropSchedule | None = None,
    seed: int | None = None,
) -> SimulationResult:
    """Securely aggregate the rows of ``updates`` (clients x dim) in one simulated round.

    Returns the round's result: ``.aggregate`` is the weighted mean of the rows whose inputs
    were included (all of them unless ``drops`` says otherwise), ``.report`` what it cost.
    """
    array = np.asarray(updates)
    if array.ndim != 2:
        raise ConfigurationError(f"updates must be a 2-D array, got shape {array.shape}")
    n, dim = array.shape
    if params is None:
        _, max_weight = integer_weights(weights, n)
        params = Params(dim=dim, max_clients=n, max_weight=max_weight)
    return simulate_round(params, n, lambda i: array[i], weights=weights, drops=drops, seed=seed)

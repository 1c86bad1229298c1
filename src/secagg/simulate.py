"""In-process driver: one round between many clients and a server, with scripted dropouts.

This is the executable specification of a round: every message really is encoded, counted
and decoded on the other side, exactly as it would travel on the wire, and the result is
checked against the plaintext weighted mean of the clients whose inputs were included.
Inputs are produced one client at a time, when that client masks, so that a cohort of
thousands never holds all its vectors at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.cohort import ClientGroup, Cohort, default_workers
from secagg.errors import ConfigurationError, RoundAborted
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness, Randomness, SystemRandomness
from secagg.parallel import MaskApplier
from secagg.params import Params
from secagg.policy import ClientPolicy
from secagg.protocol.client import Client
from secagg.protocol.messages import Message, RoundConfig
from secagg.protocol.server import Server, Stage

__all__ = [
    "DROP_STAGES",
    "SEMI_HONEST_STAGES",
    "DropSchedule",
    "InputSource",
    "RoundReport",
    "SimulationResult",
    "integer_weights",
    "random_inputs",
    "root_randomness",
    "simulate_round",
]

# Where a client can fail to answer, in order; the names are ``Stage`` values.
DROP_STAGES = tuple(
    s.value
    for s in (
        Stage.COMMIT,
        Stage.REVEAL,
        Stage.ADVERTISE,
        Stage.SHARE,
        Stage.MASKED_INPUT,
        Stage.CONSISTENCY,
        Stage.UNMASK,
    )
)
SEMI_HONEST_STAGES = tuple(s for s in DROP_STAGES if s != Stage.CONSISTENCY)
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
    """Client i's input: ``dim`` values uniform in (-1, 1), reproducible from (seed, i)."""
    root = root_randomness(seed, "inputs")

    def source(client_id: int) -> NDArray[np.floating]:
        rng = root.fork(f"input/{client_id}") if isinstance(root, DeterministicRandomness) else root
        words = rng.words(dim)
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
    """What one simulated round did and cost; ``to_json`` is the CLI's ``--json`` output."""

    outcome: str  # "completed" or "aborted"
    abort_reason: str | None
    protocol: str
    clients: int
    dim: int
    included: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    drop_reasons: Mapping[int, str]
    client_aborts: Mapping[int, str]
    threshold: int
    degree: int
    session_attempts: int  # commit-reveal attempts before the session was agreed
    ring_bits: int
    value_bits: int
    clip: float
    clipped_values: int
    seconds: float
    stage_seconds: Mapping[str, float]
    upload_bytes_per_client: float
    download_bytes_per_client: float
    plaintext_bytes_per_client: int
    max_abs_error: float | None  # against the weighted mean of the included inputs, clipped
    error_bound: float

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "abort_reason": self.abort_reason,
            "protocol": self.protocol,
            "clients": self.clients,
            "dim": self.dim,
            "included": list(self.included),
            "dropped": {s: list(ids) for s, ids in self.dropped.items()},
            "drop_reasons": {str(i): r for i, r in sorted(self.drop_reasons.items())},
            "client_aborts": {str(i): r for i, r in sorted(self.client_aborts.items())},
            "threshold": self.threshold,
            "degree": self.degree,
            "session_attempts": self.session_attempts,
            "ring_bits": self.ring_bits,
            "value_bits": self.value_bits,
            "clip": self.clip,
            "clipped_values": self.clipped_values,
            "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "download_bytes_per_client": self.download_bytes_per_client,
            "plaintext_bytes_per_client": self.plaintext_bytes_per_client,
            "upload_vs_plaintext": self.upload_bytes_per_client / self.plaintext_bytes_per_client,
            "max_abs_error": self.max_abs_error,
            "error_bound": self.error_bound,
        }


@dataclass(frozen=True)
class SimulationResult:
    report: RoundReport
    aggregate: NDArray[np.float64] | None = field(repr=False)  # the weighted mean, if any
    ring_total: NDArray[np.unsignedinteger] | None = field(repr=False)


def root_randomness(seed: int | None, purpose: str) -> Randomness:
    if seed is None:
        return SystemRandomness()
    return DeterministicRandomness(
        hashlib.sha256(f"secagg/simulate/{purpose}/{seed}".encode()).digest()
    )


class _Meter:
    """Bytes each client sent and received, counted on the encoded messages."""

    def __init__(self) -> None:
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}

    def delivered(self, client_id: int, message: Message) -> bytes:
        data = message.encode()
        self.down[client_id] = self.down.get(client_id, 0) + len(data)
        return data

    def sent(self, client_id: int, data: bytes) -> bytes:
        self.up[client_id] = self.up.get(client_id, 0) + len(data)
        return data


def make_config(
    params: Params, n: int, rng: Randomness, *, round_id: int = 0, task_hash: bytes = bytes(32)
) -> RoundConfig:
    """The round configuration a server fixes for cohort ``0..n-1``."""
    return params.round_config(
        range(n), nonce=rng.bytes(16), round_id=round_id, task_hash=task_hash
    )


def simulate_round(
    params: Params,
    n: int,
    inputs: InputSource,
    *,
    weights: NDArray[np.floating] | None = None,
    drops: DropSchedule | None = None,
    seed: int | None = None,
    workers: int | None = None,
) -> SimulationResult:
    """Run one complete round in process and report it.

    ``inputs(i)`` gives client i's update (``params.dim`` values); ``weights`` its weight
    (default 1). With a ``seed`` every random choice (keys, seeds, rounding, the nonce) is
    reproducible; without one they come from the operating system. ``workers`` processes
    run the clients (default: one per core for large rounds, none for small ones).
    """
    drops = drops or DropSchedule()
    drops.check_ids(n)
    int_weights, max_weight = integer_weights(weights, n)
    if max_weight > params.max_weight:
        raise ConfigurationError(
            f"weights need max_weight >= {max_weight}; params allow {params.max_weight}"
        )
    root = root_randomness(seed, "round")
    config = make_config(params, n, root)
    stages = DROP_STAGES if config.active else SEMI_HONEST_STAGES
    if not config.active and drops.at.get("consistency"):
        raise ConfigurationError("the consistency stage exists only against a malicious server")

    def fork(label: str) -> Randomness:
        return root.fork(label) if isinstance(root, DeterministicRandomness) else root

    # Active mode: each client's long-term identity; the public keys are the PKI.
    identities = (
        {i: Ed25519SigningKey.generate(fork(f"identity/{i}")) for i in config.client_ids}
        if config.active
        else {}
    )
    pki = {i: key.public for i, key in identities.items()}
    workers = default_workers(n, params.dim) if workers is None else workers
    server = Server(config, pki=pki if config.active else None, apply_masks=MaskApplier(workers))
    exact_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)

    policy = ClientPolicy(params, frozenset(config.client_ids))

    def group_of(ids: Sequence[int]) -> ClientGroup:
        for i in ids:
            policy.check(config, i)  # each client runs only what its deployment allows
        clients = {
            i: Client(
                config,
                i,
                fork(f"client/{i}"),
                identity=identities.get(i),
                pki=pki if config.active else None,
            )
            for i in ids
        }
        return ClientGroup(clients, inputs, int_weights, exact_weights, params.dim)

    meter = _Meter()
    stage_seconds: dict[str, float] = {}
    client_aborts: dict[int, str] = {}
    abort: RoundAborted | None = None
    started = time.perf_counter()
    with Cohort(group_of, config.client_ids, workers) as cohort:
        outgoing: dict[int, Message] = server.start()
        while not server.done:
            stage = server.stage
            t0 = time.perf_counter()
            deliveries = {
                i: meter.delivered(i, m)
                for i, m in outgoing.items()
                if drops.stage_of(i) != stage.value
            }
            for i, data, aborted in cohort.answer(deliveries):
                if aborted is not None:
                    client_aborts[i] = aborted
                else:
                    assert data is not None
                    server.receive(i, meter.sent(i, data))
            try:
                outgoing = server.close_stage()
            except RoundAborted as exc:
                abort = exc
            # A stage that runs again (a second commit attempt) adds to its time.
            stage_seconds[stage.value] = (
                stage_seconds.get(stage.value, 0.0) + time.perf_counter() - t0
            )
        seconds = time.perf_counter() - started
        tally = cohort.tally()

    dropped: dict[str, list[int]] = {s: [] for s in stages}
    reasons: dict[int, str] = {}
    for d in server.drops.values():
        dropped[d.stage.value].append(d.client_id)
        reasons[d.client_id] = d.reason.value
    quantizer = params.quantizer
    bound = quantizer.error_bound()
    if weights is not None and not np.all(exact_weights == np.round(exact_weights)):
        bound += 2 * params.clip / WEIGHT_LEVELS  # rounding the weights moves the mean too
    aggregate: NDArray[np.float64] | None = None
    ring_total = None
    max_abs_error: float | None = None
    included: tuple[int, ...] = ()
    if abort is None and server.stage is Stage.COMPLETED:
        result = server.result
        included = result.included
        ring_total = result.total
        aggregate = result.weighted_mean(quantizer)
        if set(included) == tally.contributed and tally.clipped == 0:
            exact = tally.weighted_sum / tally.weight_sum
        else:
            # The server excluded a client after it sent, or inputs were clipped: what secure
            # aggregation promises is the mean of exactly the included inputs, as clipped.
            exact = _exact_mean(inputs, included, exact_weights, params.dim, params.clip)
        max_abs_error = float(np.max(np.abs(aggregate - exact)))
    full = [i for i in config.client_ids if i in included and drops.stage_of(i) is None]
    report = RoundReport(
        outcome="completed" if aggregate is not None else "aborted",
        abort_reason=None if abort is None else str(abort),
        protocol=params.protocol.value,
        clients=n,
        dim=params.dim,
        included=included,
        dropped={s: tuple(sorted(ids)) for s, ids in dropped.items()},
        drop_reasons=reasons,
        client_aborts=client_aborts,
        threshold=config.threshold,
        degree=config.degree,
        session_attempts=server.attempt,
        ring_bits=config.ring_bits,
        value_bits=params.value_bits,
        clip=params.clip,
        clipped_values=tally.clipped,
        seconds=seconds,
        stage_seconds=stage_seconds,
        upload_bytes_per_client=_mean(meter.up, full),
        download_bytes_per_client=_mean(meter.down, full),
        plaintext_bytes_per_client=4 * params.dim,
        max_abs_error=max_abs_error,
        error_bound=bound,
    )
    return SimulationResult(report, aggregate, ring_total)


def _mean(counts: Mapping[int, int], ids: Sequence[int]) -> float:
    if not ids:
        return 0.0
    return float(sum(counts.get(i, 0) for i in ids)) / len(ids)


def _exact_mean(
    inputs: InputSource, ids: Sequence[int], weights: NDArray[np.float64], dim: int, clip: float
) -> NDArray[np.float64]:
    """The float64 weighted mean of the clients' inputs clipped to [-clip, clip]."""
    total = np.zeros(dim, dtype=np.float64)
    for i in ids:
        total += weights[i] * np.clip(np.asarray(inputs(i), dtype=np.float64), -clip, clip)
    return total / float(sum(weights[i] for i in ids))

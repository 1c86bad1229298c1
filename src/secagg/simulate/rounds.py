"""Many rounds over one cohort, in process: a session that spans rounds, or one-shot rounds.

``simulate_rounds`` runs R rounds of masking over a fixed cohort of n clients, with fresh
inputs every round, and checks each round's aggregate against the exact weighted mean of
exactly the clients it included, as ``simulate_round`` checks its one round.

In session mode (docs/SESSIONS.md) the cohort is set up once (commit, reveal, advertise and
the set-up shares), then every round costs each client two messages (three in active mode).
A new set-up runs when the server says the next round cannot run in the session
(``SessionServer.needs_setup``: the session's round cap, a member left with fewer live
neighbours than k_min, fewer members than the minimum cohort), or when a round or a set-up
aborted. In one-shot mode every round is ``simulate_round``'s own, set-up included.

What is measured: each round is a ``SessionRound`` (a session's round as a ``RoundServer``)
driven through the round engine (``secagg.protocol.runner.RoundRun``, via
``secagg.simulate.drive``) exactly as a one-shot round is: every message encoded, counted
into the engine's byte meter and decoded on the other side, every stage timed. The engine's
record fits as it is (a session's round is a round: stages, drops, an aggregate), so each
round's report is a view of it, as the one-shot report is. A session's first round runs the
set-up's stages first, and the set-up's last message (the set-up shares each member
receives) carries the round's task and is answered with the masked input; ``drive`` counts
traffic per stage, so the set-up's own cost (``SetupReport``) is its four stages' part.

Clients live in the backend for the whole run: one ``SessionGroup`` per worker process or Ray
actor, kept across rounds and set-ups. A client is built when its session's configuration
reaches it (checked against its own deployment first, as a device checks it), rebuilt at the
next set-up (every secret of the last session dropped), and produces its round's input only
when that round's task reaches it.

Dropouts (``DropPlan``): in each round, the clients that fall silent at each stage, set-up
stages included when the round starts with a set-up; a client silent at a stage of a session
round has left the session by its own rule (S4) and is met by the others as a dropout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.backends import Backend, mask_applier
from secagg.backends import open_cohort as open_clients
from secagg.cohort import ClientGroup, Reply, Tally, default_workers
from secagg.errors import AbortReason, ClientAbort, ConfigurationError, UsageError
from secagg.hazmat import prg
from secagg.hazmat.kdf import encode_fields
from secagg.hazmat.randomness import DeterministicRandomness, Randomness, forked
from secagg.parallel import MaskApplier
from secagg.protocol.codec import Message, decode
from secagg.protocol.runner import RoundKind, RoundOutcome
from secagg.protocol.stages import Stage
from secagg.schemes.base import RoundOpening, Scheme, SchemeFacts, SchemeSettings
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.scheme import MaskingScheme
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.messages import opened_task, session_terms
from secagg.schemes.masking.session.round import SessionRound
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import DEFAULT_MAX_SECONDS, SessionTerms
from secagg.simulate import (
    Driven,
    DropSchedule,
    InputSource,
    RoundReport,
    TimedServer,
    _Outcome,
    _report,
    _with_baseline,
    drive,
    integer_weights,
    root_randomness,
    simulate_round,
)

__all__ = [
    "SETUP_STAGES",
    "ClientRecipe",
    "DropPlan",
    "RoundHook",
    "RoundInputs",
    "RoundKind",
    "RunReport",
    "RunResult",
    "RunRound",
    "SessionGroup",
    "SetupReport",
    "of_round",
    "random_round_inputs",
    "round_stages",
    "simulate_rounds",
]

# Round index (from 0) and client id -> that client's update in that round.
RoundInputs = Callable[[int, int], NDArray[np.floating]]

SETUP_STAGES = (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE, Stage.SHARE)
# Beyond this many rounds a session is refused by the terms (a u32 on the wire).
_MAX_SESSION_ROUNDS = 2**32 - 1


def round_stages(active: bool) -> tuple[Stage, ...]:
    """The stages of a session's round: the masked input, the signed survivor set (active
    mode) and the unmasking."""
    if active:
        return (Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)
    return (Stage.MASKED_INPUT, Stage.UNMASK)


def random_round_inputs(dim: int, seed: int | None) -> RoundInputs:
    """Client i's input in round r: ``dim`` values uniform in (-1, 1), a function of
    (seed, r, i) alone (without a seed, fresh for the run but the same whenever read)."""
    root = root_randomness(seed, "round-inputs")
    if not isinstance(root, DeterministicRandomness):
        root = DeterministicRandomness(root.bytes(32))

    def source(round_index: int, client_id: int) -> NDArray[np.floating]:
        words = root.fork(f"round/{round_index}/input/{client_id}").words(dim)
        return (words.astype(np.float64) * (2.0 / 2**32) - 1.0).astype(np.float32)

    return source


def of_round(inputs: RoundInputs, index: int) -> InputSource:
    """Round ``index``'s inputs, by client."""

    def source(client_id: int) -> NDArray[np.floating]:
        return inputs(index, client_id)

    return source


# ----------------------------------------------------------------- dropouts
@dataclass(frozen=True)
class DropPlan:
    """Who falls silent where, round by round: ``every`` in every round, ``rounds[r]`` in
    round r only (from 1), or, with a ``rate``, that fraction of the cohort each round, each
    client at a stage drawn among the round's own (reproducible from ``seed``).

    A stage applies to the rounds that run it: a set-up stage's drops to rounds that start
    with a set-up (and to one-shot rounds), a round stage's to every round."""

    every: DropSchedule = field(default_factory=DropSchedule)
    rounds: Mapping[int, DropSchedule] = field(default_factory=dict)
    rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ConfigurationError("the dropout rate must be in [0, 1)")
        if self.rate and (self.every.at or self.rounds):
            raise ConfigurationError("use either a dropout rate or a drop schedule, not both")
        if any(r < 1 for r in self.rounds):
            raise ConfigurationError("rounds are numbered from 1")

    @classmethod
    def parse(cls, specs: Iterable[str]) -> DropPlan:
        """From ``[ROUND:]STAGE=ID,ID,...`` strings: without a round, every round."""
        every: list[str] = []
        by_round: dict[int, list[str]] = {}
        for spec in specs:
            head, sep, rest = spec.partition(":")
            if sep and "=" not in head:
                try:
                    number = int(head)
                except ValueError:
                    raise ConfigurationError(
                        f"--drop expects [ROUND:]STAGE=ID,ID,...; got {spec!r}"
                    ) from None
                by_round.setdefault(number, []).append(rest)
            else:
                every.append(spec)
        return cls(
            DropSchedule.parse(every),
            {r: DropSchedule.parse(s) for r, s in sorted(by_round.items())},
        )

    @property
    def stages(self) -> frozenset[str]:
        """Every stage the plan names."""
        named = set(self.every.at)
        for schedule in self.rounds.values():
            named |= set(schedule.at)
        return frozenset(named)

    def check_ids(self, n: int) -> None:
        self.every.check_ids(n)
        for schedule in self.rounds.values():
            schedule.check_ids(n)

    def schedule(self, number: int, stages: Sequence[Stage], n: int) -> DropSchedule:
        """Round ``number``'s (from 1) drops at ``stages``, the stages it runs."""
        names = tuple(s.value for s in stages)
        if self.rate:
            rng = root_randomness(self.seed, f"dropout/round/{number}")
            return DropSchedule.random(n, self.rate, rng, stages=names)
        at: dict[str, frozenset[int]] = {}
        for schedule in (self.every, self.rounds.get(number, DropSchedule())):
            for stage, ids in schedule.at.items():
                if stage in names:
                    at[stage] = at.get(stage, frozenset()) | ids
        return DropSchedule(at)  # refuses a client silent at two stages of one round


# ----------------------------------------------------------------- the clients
@dataclass(frozen=True)
class ClientRecipe:
    """What every simulated session client of a run is made from (shipped once to each
    worker process or Ray actor): its deployment's masking scheme (parameters, identities,
    PKI, allow-list), the caps it accepts a session under, and the randomness its keys are
    drawn from (seeded for a reproducible simulation only; a device draws from the
    operating system)."""

    scheme: MaskingScheme
    root: Randomness
    max_rounds: int
    max_seconds: int = DEFAULT_MAX_SECONDS

    def client(self, terms: SessionTerms, client_id: int) -> SessionClient:
        """Client ``client_id`` of the session ``terms`` describes, once they pass its own
        deployment's checks (``ClientAbort`` otherwise)."""
        config = terms.config
        self.scheme.check(config, client_id)  # as it checks a one-shot round's
        if terms.max_rounds > self.max_rounds or terms.max_seconds > self.max_seconds:
            raise ClientAbort(
                AbortReason.INVALID_CONFIG,
                f"a session of {terms.max_rounds} rounds and {terms.max_seconds} s; this "
                f"deployment allows {self.max_rounds} and {self.max_seconds}",
            )
        rng = forked(self.root, f"session/{config.nonce.hex()}/client/{client_id}")
        return self.scheme.session_client(terms, client_id, rng)


def _no_inputs(client_id: int) -> NDArray[np.floating]:
    raise UsageError("a session client's input depends on its round")


class SessionGroup(ClientGroup):
    """The session clients one process (or Ray actor) runs, across rounds and set-ups.

    A ``SessionConfig`` builds the recipient's client afresh; a ``RoundTask`` first gives
    the client its input for that round (``inputs(round, client)``, the round found from the
    task's digest in ``round_of``; a simulated client does not train, so the digest stands
    for the model it would have trained). ``tally()`` returns what the clients put in since
    the last call: the driver takes it once per round."""

    def __init__(
        self,
        recipe: ClientRecipe,
        ids: Sequence[int],
        inputs: RoundInputs,
        round_of: Mapping[bytes, int],
        weights: Sequence[int],
        exact_weights: NDArray[np.float64],
        dim: int,
        reference: Callable[[NDArray[np.floating]], NDArray[np.float64]],
    ) -> None:
        super().__init__({}, _no_inputs, weights, exact_weights, dim, reference)
        self._recipe = recipe
        self._ids = frozenset(ids)
        self._sessions: dict[int, SessionClient] = {}
        self._round_inputs = inputs
        self._round_of = round_of
        self._int_weights = weights
        self._float_weights = exact_weights
        self._width = dim
        self._clip = reference
        self._put_in = Tally(np.zeros(dim, dtype=np.float64))

    def answer(self, deliveries: Iterable[tuple[int, bytes]]) -> Iterator[Reply]:
        for i, data in deliveries:
            try:
                reply = self._answer(i, decode(data))
            except ClientAbort as exc:
                yield (i, None, exc.reason.value)
                continue
            yield (i, None if reply is None else reply.encode(), None)

    def _answer(self, i: int, message: Message) -> Message | None:
        if i not in self._ids:
            raise UsageError(f"client {i} is not in this group")
        terms = session_terms(message)
        if terms is not None:
            # A new session: the last one's client, and every secret it held, are dropped.
            self._sessions.pop(i, None)
            self._sessions[i] = self._recipe.client(terms, i)
        client = self._sessions.get(i)
        if client is None:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "no session to answer in")
        left = client.departure
        if left is not None:
            raise ClientAbort(left.reason, f"left the session: {left.detail}")
        started = time.perf_counter()
        try:
            task = opened_task(message)
            if task is not None:
                self._set_round_input(i, client, task)
            reply = client.receive(message)
            if task is not None and reply is not None:  # it masked this round's input
                self._put_in.clipped += client.clipped
            return reply
        finally:
            self._put_in.client_seconds += time.perf_counter() - started

    def _set_round_input(self, i: int, client: SessionClient, task: bytes) -> None:
        index = self._round_of.get(task)
        if index is None:
            raise ConfigurationError("a round task of no round of this run")
        values = np.asarray(self._round_inputs(index, i))
        if values.shape != (self._width,):
            raise ConfigurationError(
                f"client {i}'s input has shape {values.shape}; expected ({self._width},)"
            )
        client.set_input(values, self._int_weights[i], task)
        w = float(self._float_weights[i])
        tally = self._put_in
        tally.weighted_sum += w * self._clip(values)
        tally.weight_sum += w
        tally.contributed.add(i)
        with np.errstate(over="ignore"):  # as ClientGroup: numpy's own sum, not BLAS
            wide = values.astype(np.float64)
            tally.norms.append(math.sqrt(float(np.sum(wide * wide))))

    def tally(self) -> Tally:
        """What the clients put in since the last call (then forgotten here)."""
        taken = self._put_in
        self._put_in = Tally(np.zeros(self._width, dtype=np.float64))
        return taken


# ----------------------------------------------------------------- reports
@dataclass(frozen=True)
class SetupReport:
    """One session's set-up: why it ran, who finished it, and what it cost (bytes and
    messages per member, over the members that finished it)."""

    session: int  # from 1
    reason: str  # why a new set-up ran
    outcome: RoundOutcome
    abort_reason: str | None
    members: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    drop_reasons: Mapping[int, str]
    client_aborts: Mapping[int, str]
    attempts: int | None
    seconds: float
    stage_seconds: Mapping[str, float]
    upload_bytes_per_client: float
    download_bytes_per_client: float
    messages_up_per_client: float
    messages_down_per_client: float

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "reason": self.reason,
            "outcome": self.outcome,
            "abort_reason": self.abort_reason,
            "members": len(self.members),
            "dropped": {s: list(ids) for s, ids in self.dropped.items()},
            "drop_reasons": {str(i): r for i, r in sorted(self.drop_reasons.items())},
            "client_aborts": {str(i): r for i, r in sorted(self.client_aborts.items())},
            "attempts": self.attempts,
            "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "download_bytes_per_client": self.download_bytes_per_client,
            "messages_up_per_client": self.messages_up_per_client,
            "messages_down_per_client": self.messages_down_per_client,
        }


@dataclass(frozen=True)
class RunRound:
    """Round ``number`` (from 1) of a run: its kind, the session it ran in and its number
    there, its report (``RoundReport``: outcome, included, drops, bytes, seconds, error
    against the exact mean of exactly its included clients) and the messages per client
    (the clients that took part to the end); for a set-up+round, the set-up's report."""

    number: int
    kind: RoundKind
    session: int | None
    session_round: int | None
    report: RoundReport
    messages_up_per_client: float
    messages_down_per_client: float
    setup: SetupReport | None = None

    @property
    def completed(self) -> bool:
        return self.report.outcome is RoundOutcome.COMPLETED

    @property
    def stages(self) -> int:
        """The stages the round ran (a commit that ran twice counts once)."""
        return len(self.report.stage_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "kind": self.kind.value,
            "session": self.session,
            "session_round": self.session_round,
            **self.report.to_json(),
            "stages": self.stages,
            "messages_up_per_client": self.messages_up_per_client,
            "messages_down_per_client": self.messages_down_per_client,
            "setup": None if self.setup is None else self.setup.to_json(),
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class RunReport:
    """A run of rounds over one cohort: each round, each set-up, and the plaintext round's
    time (``plaintext_seconds``: the last completed round's included clients, as plaintext
    FedAvg), with medians by kind in ``summary``."""

    mode: str  # "session" or "one-shot"
    scheme: str
    clients: int
    dim: int
    facts: SchemeFacts
    rounds: tuple[RunRound, ...]
    setups: tuple[SetupReport, ...]
    plaintext_seconds: float | None

    @property
    def completed(self) -> int:
        return sum(1 for r in self.rounds if r.completed)

    def kind_summary(self, kind: RoundKind) -> dict[str, Any] | None:
        """Medians over the completed rounds of ``kind`` (None: there were none)."""
        done = [r for r in self.rounds if r.kind is kind and r.completed]
        if not done:
            return None
        return {
            "rounds": len(done),
            "seconds": _median([r.report.seconds for r in done]),
            "upload_bytes_per_client": _median([r.report.upload_bytes_per_client for r in done]),
            "download_bytes_per_client": _median(
                [r.report.download_bytes_per_client for r in done]
            ),
            "upload_vs_plaintext": _median(
                [
                    r.report.upload_bytes_per_client / r.report.plaintext_bytes_per_client
                    for r in done
                ]
            ),
            "stages": _median([float(r.stages) for r in done]),
            "messages_up_per_client": _median([r.messages_up_per_client for r in done]),
            "messages_down_per_client": _median([r.messages_down_per_client for r in done]),
            "included": _median([float(len(r.report.included)) for r in done]),
        }

    def setup_summary(self) -> dict[str, Any] | None:
        """Medians over the set-ups that finished, and their count and total time."""
        done = [s for s in self.setups if s.outcome is RoundOutcome.COMPLETED]
        if not self.setups:
            return None
        return {
            "setups": len(self.setups),
            "completed": len(done),
            "total_seconds": sum(s.seconds for s in self.setups),
            "seconds": _median([s.seconds for s in done]),
            "upload_bytes_per_client": _median([s.upload_bytes_per_client for s in done]),
            "download_bytes_per_client": _median([s.download_bytes_per_client for s in done]),
            "messages_up_per_client": _median([s.messages_up_per_client for s in done]),
            "messages_down_per_client": _median([s.messages_down_per_client for s in done]),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "rounds": len(self.rounds),
            "completed": self.completed,
            "setup": self.setup_summary(),
            **{kind.value: self.kind_summary(kind) for kind in RoundKind},
            "plaintext_seconds": self.plaintext_seconds,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scheme": self.scheme,
            "clients": self.clients,
            "dim": self.dim,
            **self.facts.as_dict(),
            "summary": self.summary(),
            "rounds": [r.to_json() for r in self.rounds],
            "setups": [s.to_json() for s in self.setups],
        }


@dataclass(frozen=True)
class RunResult:
    report: RunReport
    # Per round: the weighted mean it revealed (None if it aborted), and its ring total.
    aggregates: tuple[NDArray[np.float64] | None, ...] = field(repr=False)
    ring_totals: tuple[NDArray[np.unsignedinteger] | None, ...] = field(repr=False)


# ----------------------------------------------------------------- the run
def simulate_rounds(
    settings: Params | Scheme | SchemeSettings,
    n: int,
    inputs: RoundInputs,
    rounds: int,
    *,
    session: bool = True,
    session_rounds: int | None = None,
    min_live_neighbours: int | None = None,
    weights: NDArray[np.floating] | None = None,
    drops: DropPlan | None = None,
    seed: int | None = None,
    workers: int | None = None,
    baseline: bool = True,
    backend: Backend | str = Backend.PROCESS,
    on_round: RoundHook | None = None,
) -> RunResult:
    """Run ``rounds`` rounds over clients 0..n-1 and report each.

    ``inputs(r, i)`` is client i's update in round r (from 0). With ``session`` (masking
    ``Params`` only) the rounds run as sessions: at most ``session_rounds`` rounds each
    (default: all of them), a new set-up whenever the server says the next round cannot run
    in the session or a round aborted; ``min_live_neighbours`` is the sessions' k_min (the
    fewest live neighbours a member masks with; default the threshold). Without ``session``
    each round is a one-shot round of ``simulate_round``. ``weights``, ``seed``,
    ``workers`` and ``backend`` are ``simulate_round``'s; ``drops`` says who falls silent
    where in each round. ``baseline`` times a plaintext round over the last completed
    round's included clients. ``on_round(round, aggregate)`` is called as each round ends,
    before the next begins: a training loop moves its model there (clients in this process
    read it when they compute their next update: ``workers=1`` on the process backend).
    """
    if rounds < 1:
        raise ConfigurationError("a run has at least one round")
    backend = Backend.parse(backend)
    plan = drops or DropPlan()
    plan.check_ids(n)
    int_weights, max_weight = integer_weights(weights, n)
    exact_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if session:
        settings = Params.of(settings, "a session that spans rounds (run others one-shot)")
        if max_weight > settings.max_weight:
            raise ConfigurationError(
                f"weights need max_weight >= {max_weight}; params allow {settings.max_weight}"
            )
        if session_rounds is not None and not 1 <= session_rounds <= _MAX_SESSION_ROUNDS:
            raise ConfigurationError(f"session rounds must be in [1, {_MAX_SESSION_ROUNDS}]")
        runner = _SessionRun(
            settings,
            n,
            inputs,
            int_weights,
            exact_weights,
            weights,
            plan,
            seed,
            workers,
            backend,
            min(rounds, _MAX_SESSION_ROUNDS) if session_rounds is None else session_rounds,
            min_live_neighbours,
        )
        played, setups, scheme = runner.run(rounds, on_round)
    else:
        played, scheme = _one_shot_rounds(
            settings, n, inputs, rounds, weights, plan, seed, workers, backend, on_round
        )
        setups = []
    plaintext = None
    last = next((r for r in reversed(played) if r[0].completed), None)
    if baseline and last is not None:
        index = last[0].number - 1
        timed = _with_baseline(
            last[0].report,
            n,
            of_round(inputs, index),
            int_weights,
            exact_weights,
            max_weight,
            scheme.dim,
            backend,
        )
        plaintext = timed.plaintext_seconds
    reports = tuple(
        dataclasses.replace(r, report=dataclasses.replace(r.report, plaintext_seconds=plaintext))
        if r.completed
        else r
        for r, _, _ in played
    )
    report = RunReport(
        mode="session" if session else "one-shot",
        scheme=scheme.kind.value,
        clients=n,
        dim=scheme.dim,
        facts=scheme.facts(n),
        rounds=reports,
        setups=tuple(setups),
        plaintext_seconds=plaintext,
    )
    return RunResult(report, tuple(p[1] for p in played), tuple(p[2] for p in played))


_Played = tuple[RunRound, NDArray[np.float64] | None, NDArray[np.unsignedinteger] | None]
# Called as each round ends: the round's report, and the mean it revealed (None: aborted).
RoundHook = Callable[[RunRound, NDArray[np.float64] | None], None]


def _round_seed(seed: int | None, number: int) -> int | None:
    if seed is None:
        return None
    digest = hashlib.sha256(f"secagg/simulate/rounds/{seed}/{number}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _one_shot_rounds(
    settings: Params | Scheme | SchemeSettings,
    n: int,
    inputs: RoundInputs,
    rounds: int,
    weights: NDArray[np.floating] | None,
    plan: DropPlan,
    seed: int | None,
    workers: int | None,
    backend: Backend,
    on_round: RoundHook | None = None,
) -> tuple[list[_Played], Scheme]:
    scheme: Scheme
    if isinstance(settings, SchemeSettings):
        scheme = settings.simulated(range(n), root_randomness(seed, "probe"))
        stages = scheme.stages
    else:
        scheme = settings
        stages = scheme.stages
    _check_stages(plan, stages)
    played: list[_Played] = []
    for index in range(rounds):
        number = index + 1
        schedule = plan.schedule(number, stages, n)
        result = simulate_round(
            settings,
            n,
            of_round(inputs, index),
            weights=weights,
            drops=schedule,
            seed=_round_seed(seed, number),
            workers=workers,
            baseline=False,
            backend=backend,
        )
        report = result.report
        # Messages: one down per stage the client reached, one up per stage it answered
        # (commit and reveal once each, unless the agreement needed another attempt).
        stages_run = float(len(report.stage_seconds))
        played.append(
            (
                RunRound(number, RoundKind.ONE_SHOT, None, None, report, stages_run, stages_run),
                result.aggregate,
                result.ring_total,
            )
        )
        if on_round is not None:
            on_round(played[-1][0], result.aggregate)
    return played, scheme


def _check_stages(plan: DropPlan, stages: Sequence[Stage]) -> None:
    unknown = plan.stages - {s.value for s in stages}
    if unknown:
        raise ConfigurationError(
            f"these rounds have no {', '.join(sorted(unknown))} stage: their stages are "
            f"{', '.join(s.value for s in stages)}"
        )


def _task_digest(run: bytes, index: int) -> bytes:
    """Round ``index``'s task: the digest that stands for the model of that round."""
    return hashlib.sha256(encode_fields("secagg/simulate/round-task", run, index)).digest()


class _SessionRun:
    """The rounds of a run as sessions, over one cohort of clients kept in the backend."""

    def __init__(
        self,
        params: Params,
        n: int,
        inputs: RoundInputs,
        int_weights: Sequence[int],
        exact_weights: NDArray[np.float64],
        weights: NDArray[np.floating] | None,
        plan: DropPlan,
        seed: int | None,
        workers: int | None,
        backend: Backend,
        session_rounds: int,
        min_live_neighbours: int | None,
    ) -> None:
        self.params = params
        self.n = n
        self.inputs = inputs
        self.int_weights = int_weights
        self.exact_weights = exact_weights
        self.weights = weights
        self.plan = plan
        self.backend = backend
        self.session_rounds = session_rounds
        self.min_live_neighbours = min_live_neighbours
        self.root = root_randomness(seed, "session-run")
        if backend is Backend.PROCESS and workers is None:
            workers = default_workers(n, params.dim)
        self.workers = workers
        self.applier: prg.ApplyMasks = (
            MaskApplier(workers or 1)
            if backend is Backend.PROCESS
            else mask_applier(backend, workers)
        )
        # The deployment every client runs (identities and PKI in active mode), and the
        # server's, which regenerates masks through the backend.
        self.scheme = params.simulated(range(n), forked(self.root, "deployment"))
        self.server_scheme = dataclasses.replace(self.scheme, apply_masks=self.applier)
        self.round_stages = round_stages(params.active)
        _check_stages(plan, (*SETUP_STAGES, *self.round_stages))
        self._config: RoundOpening | None = None  # the current session's configuration

    def _terms(self, session: int) -> SessionTerms:
        nonce = forked(self.root, f"session/{session}").bytes(16)
        config = self.scheme.round_config(range(self.n), nonce=nonce, round_id=session)
        return SessionTerms.carrying(
            config, max_rounds=self.session_rounds, min_live_neighbours=self.min_live_neighbours
        )

    def run(
        self, rounds: int, on_round: RoundHook | None = None
    ) -> tuple[list[_Played], list[SetupReport], Scheme]:
        run_id = forked(self.root, "run").bytes(16)
        tasks = [_task_digest(run_id, index) for index in range(rounds)]
        round_of = {task: index for index, task in enumerate(tasks)}
        recipe = ClientRecipe(self.scheme, forked(self.root, "clients"), self.session_rounds)
        scheme, inputs = self.scheme, self.inputs
        int_weights, exact_weights, dim = self.int_weights, self.exact_weights, self.params.dim

        def group_of(ids: Sequence[int]) -> ClientGroup:
            return SessionGroup(
                recipe, ids, inputs, round_of, int_weights, exact_weights, dim, scheme.reference
            )

        played: list[_Played] = []
        setups: list[SetupReport] = []
        server: SessionServer | None = None
        why: str | None = "the run's first round"
        count = 0
        with open_clients(self.backend, group_of, tuple(range(self.n)), self.workers) as cohort:
            for index in range(rounds):
                if server is not None and why is None:
                    why = server.needs_setup()
                stages = self.round_stages
                if why is not None:  # this round starts with a set-up
                    stages = (*SETUP_STAGES, *self.round_stages)
                    count += 1
                    terms = self._terms(count)
                    self._config = terms.config
                    server = self.server_scheme.session_server(terms)
                assert server is not None
                schedule = self.plan.schedule(index + 1, stages, self.n)
                timed = TimedServer(SessionRound(server, tasks[index]))
                driven = drive(timed, cohort, schedule)
                tally = cohort.tally()
                setup = None
                if why is not None:
                    setup = self._setup_report(count, why, server, driven)
                    setups.append(setup)
                played.append(
                    self._round(index, count, server, timed, driven, tally, schedule, stages, setup)
                )
                if driven.record.completed:
                    why = None
                elif setup is not None and setup.outcome is not RoundOutcome.COMPLETED:
                    why = "the last set-up aborted"
                else:
                    why = "the last round aborted"
                if on_round is not None:
                    on_round(played[-1][0], played[-1][1])
        return played, setups, scheme

    def _setup_report(
        self, session: int, why: str, server: SessionServer, driven: Driven
    ) -> SetupReport:
        """The set-up's part of a session's first round: its stages, drops and traffic, per
        member (the clients its last message, which opens round 1, went to)."""
        record = driven.record
        finished = server.round_number >= 1  # round 1 opened: the set-up closed
        dropped: dict[str, list[int]] = {s.value: [] for s in SETUP_STAGES}
        reasons: dict[int, str] = {}
        for d in record.drops.values():
            if d.stage in SETUP_STAGES:
                dropped[d.stage.value].append(d.client_id)
                reasons[d.client_id] = d.reason.value
        members: tuple[int, ...] = ()
        if finished and Stage.MASKED_INPUT in driven.traffic:
            members = tuple(sorted(driven.traffic[Stage.MASKED_INPUT].addressed))
        up, down, messages_up, messages_down = driven.per_client(members, SETUP_STAGES)
        try:
            attempts: int | None = server.session.attempt
        except UsageError:  # never agreed
            attempts = None
        return SetupReport(
            session=session,
            reason=why,
            outcome=RoundOutcome.COMPLETED if finished else RoundOutcome.ABORTED,
            abort_reason=None if finished else str(record.abort),
            members=members,
            dropped={s: tuple(sorted(ids)) for s, ids in dropped.items()},
            drop_reasons=reasons,
            client_aborts={
                i: reason
                for i, reason in driven.client_aborts.items()
                if driven.abort_stages.get(i) in SETUP_STAGES
            },
            attempts=attempts,
            seconds=sum(record.stage_seconds.get(s, 0.0) for s in SETUP_STAGES),
            stage_seconds={
                s.value: t for s, t in record.stage_seconds.items() if s in SETUP_STAGES
            },
            upload_bytes_per_client=up,
            download_bytes_per_client=down,
            messages_up_per_client=messages_up,
            messages_down_per_client=messages_down,
        )

    def _round(
        self,
        index: int,
        session: int,
        server: SessionServer,
        timed: TimedServer,
        driven: Driven,
        tally: Tally,
        schedule: DropSchedule,
        stages: Sequence[Stage],
        setup: SetupReport | None,
    ) -> _Played:
        config = self._config
        assert config is not None
        record = driven.record
        outcome = _Outcome(
            config,
            record,
            timed,
            tally.clipped,
            tally.norms,
            tally.client_seconds,
            tally.contributed,
            tally.weighted_sum,
            tally.weight_sum,
            dict(driven.client_aborts),
        )
        if record.aggregate is not None:
            outcome.mean = record.aggregate.mean
            outcome.ring_total = record.aggregate.ring_total
        report = _report(
            self.scheme,
            self.n,
            of_round(self.inputs, index),
            outcome,
            self.weights,
            self.exact_weights,
            schedule,
            stages=stages,
        )
        if setup is not None and setup.outcome is not RoundOutcome.COMPLETED:
            report = dataclasses.replace(
                report, abort_reason=f"the set-up aborted: {setup.abort_reason}"
            )
        full = set(report.included)
        took_part = [i for i in range(self.n) if i in full and schedule.stage_of(i) is None]
        _, _, up, down = driven.per_client(took_part)
        kind = RoundKind.SESSION if setup is None else RoundKind.SETUP_AND_ROUND
        number = server.round_number if server.round_number >= 1 else None
        return (
            RunRound(index + 1, kind, session, number, report, up, down, setup),
            outcome.mean,
            outcome.ring_total,
        )

"""Rounds: the coordinator's transport over the round engine, with deadlines, the ledger and
the operator metrics.

A round starts once ``min_clients`` clients are connected and takes every connected client
(up to ``max_clients``). The coordinator binds it to the model it sends (the task digest is
in the round configuration, hence in the session id) and hands the deployment's scheme
(masking or CKKS, ``secagg.schemes``) to the one round engine, ``RoundRun``: for each stage
the engine names, this module delivers what the scheme's server sends, feeds back what
arrives, and resumes the engine when the stage's deadline passes or nobody is awaited any
more. It keeps no list of stages and dispatches no message itself. It listens to the engine
(a stage closed, a drop: the log, the metrics and the ledger as the round goes), and the
round's summary, its ledger row and its outcome metric are views of the engine's
``RoundRecord``; the transport counts each frame's bytes into the engine's meter. There is
no plaintext path: clients only ever send protocol messages. A client that misses a
deadline, disconnects or misbehaves is dropped with a reason and the round goes on while
enough remain; when it cannot, the abort reason says what happened to whom (how many
clients dropped where, and why) before the scheme's own reason. A completed round's log
line, summary and ledger name each client that dropped, its stage, its typed reason and the
detail, which is never empty (``connection lost``, the deadline it missed, the reason a
client gave for leaving).

Flow control keeps the coordinator's memory independent of how many clients upload: it is
O(dim x W + clients x degree) for an upload window of W clients (``upload_window``). Every
message goes out through the transport's bounded writes (built when its turn comes, at most
W model-sized frames in flight: the model broadcast). In an upload stage (the engine's
``UPLOAD_STAGES``: masking's masked input, CKKS's encrypted update, whose answers are as
long as the model) at most W clients hold the message that makes them upload (masking's
``PeerShares``, CKKS's Task) without having answered it; the rest are told they are queued
(a ``Queued`` frame with their position) and are sent their message, the same one, as
answers arrive. Each client's deadline is ``stage_timeout`` from the moment its message was
written, so a queued client is never late for a turn that has not come, and a client that
holds a place in the window without answering is dropped at its deadline and frees it. A
stage therefore lasts at most ``ceil(n / W) + 1`` stage timeouts (the stretched deadline).
While a stage runs, every client still in the round that waits on the coordinator (queued,
or done with the stage) is sent a ``Queued`` frame every half stage timeout: a sign of life
that its own per-stage deadline (``[clients] stage_timeout``, which exceeds the
coordinator's) counts, within the bound that the client sets itself (``secagg.service.client``).

Every round is written to the ledger when it starts; a completed round's aggregate is
committed before anyone is told the round completed. A round that cannot finish because
the coordinator is stopped (a signal cancels it) or because the ledger fails (a full disk)
is recorded as aborted where the ledger still can, and its clients are told it aborted.

The ledger's ``protocol``, ``degree`` and ``threshold`` columns come from the scheme's
description of the round: masking's protocol, graph degree k and threshold t; for CKKS the
protocol ``ckks``, degree 0 (no neighbour graph) and, as threshold, the round's minimum
cohort, the fewest inputs a revealed sum may hold, which the ledger checks as it does t.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.dp.round_privacy import RoundPrivacy
from secagg.errors import (
    AbortReason,
    DropReason,
    LedgerError,
    RoundAborted,
    SecAggError,
    UsageError,
    one_line,
)
from secagg.hazmat import prg
from secagg.ledger import DropRecord, Ledger, account_round, describe_drops
from secagg.protocol.codec import Message
from secagg.protocol.runner import (
    UPLOAD_STAGES,
    ByteMeter,
    RoundKind,
    RoundListener,
    RoundOutcome,
    RoundRecord,
    RoundRun,
    RoundServer,
)
from secagg.protocol.stages import MISSED_REASONS, Drop, Stage, missed
from secagg.schemes.base import RoundOpening, Scheme
from secagg.schemes.masking.session.messages import SessionConfig
from secagg.schemes.masking.session.round import SessionRound
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms
from secagg.service.metrics import Metrics, NullMetrics
from secagg.service.sessions import SessionSide
from secagg.service.settings import CoordinatorSettings
from secagg.service.testhooks import hold, hold_points, holds
from secagg.service.transport import Connection, Transport
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.wire import encode_model, task_digest

__all__ = [
    "NoCohort",
    "RoundDriver",
    "RoundSummary",
    "describe_abort",
    "drop_detail",
    "drop_records",
]

log = logging.getLogger("secagg.coordinator")

StageHook = Callable[[int, Stage], Awaitable[None] | None]


class NoCohort(SecAggError):
    """Fewer than ``min_clients`` clients connected within ``cohort_wait``: no round began."""


@dataclass(frozen=True)
class RoundSummary:
    """What a round did, as the coordinator saw it (also in the ledger)."""

    round_id: int
    outcome: RoundOutcome
    cohort: tuple[int, ...]
    included: tuple[int, ...]
    dropped: Mapping[int, tuple[Stage, DropReason]]
    stage_seconds: Mapping[Stage, float]
    seconds: float
    upload_bytes_per_client: float
    download_bytes_per_client: float
    abort_reason: str | None = None
    aggregate: NDArray[np.float64] | None = field(default=None, repr=False)
    session_attempts: int = 1
    scheme: str = "masking"
    # The largest error the scheme's encoding may add to a coordinate of the aggregate.
    error_bound: float | None = None
    # Distributed DP (completed rounds): the revealed sum's epsilon and the epsilon spent.
    privacy: RoundPrivacy | None = None
    # Who dropped, where and why, as words (``describe_drops``; empty when nobody dropped).
    drops: str = ""
    # The round's number in its session that spans rounds (None: a one-shot round); round 1
    # of a session also ran the session's set-up.
    session_round: int | None = None
    # How many frames each client sent (``frames_up``) and was sent during the round: a
    # session round costs a client two (three in active mode) after its set-up.
    frames_up: Mapping[int, int] = field(default_factory=dict, repr=False)
    frames_down: Mapping[int, int] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> RoundKind:
        """One-shot, a session's first round (with its set-up) or a later one."""
        return RoundKind.of(self.session_round)


class _TimedMasks:
    """Masking's mask applier, timed: unmasking is told apart from Shamir reconstruction,
    which is the rest of the unmask stage's close."""

    def __init__(self, apply: prg.ApplyMasks) -> None:
        self._apply = apply
        self.seconds = 0.0

    def __call__(self, total: NDArray[np.unsignedinteger], masks: Sequence[prg.Mask]) -> None:
        started = time.perf_counter()
        try:
            self._apply(total, masks)
        finally:
            self.seconds += time.perf_counter() - started


class _FrameMeter(ByteMeter):
    """The round's byte meter, counting frames as well: each ``sent`` and ``received`` is
    one frame on a client's stream."""

    __slots__ = ("frames_down", "frames_up")

    def __init__(self) -> None:
        super().__init__()
        self.frames_up: dict[int, int] = {}
        self.frames_down: dict[int, int] = {}

    def sent(self, client_id: int, size: int) -> None:
        super().sent(client_id, size)
        self.frames_down[client_id] = self.frames_down.get(client_id, 0) + 1

    def received(self, client_id: int, size: int) -> None:
        super().received(client_id, size)
        self.frames_up[client_id] = self.frames_up.get(client_id, 0) + 1


@dataclass
class _Session:
    """The session the coordinator runs rounds in: its server, since when (its age against
    ``session_seconds``) and the digest of its configuration (the ledger's session id of each
    of its rounds)."""

    server: SessionServer
    terms: SessionTerms
    started: float


@dataclass(frozen=True)
class _Closing:
    """A stage whose deadline has passed, while the engine closes it."""

    expected: int
    answered: int
    unmasked_before: float  # the mask applier's seconds then


class _Delivery:
    """One stage's messages on their way out, and when each awaited client becomes late.

    A client is late ``timeout`` seconds after its message was written to its stream, or
    after the stage began if the stage sends it nothing. In an upload stage (``paced``) at
    most ``window`` clients hold a message they have not answered (``open``); the others wait
    in ``queue``, in the engine's order, with their message ``held``, and have no deadline
    until their turn comes.
    """

    def __init__(
        self,
        stage: Stage,
        *,
        started: float,
        timeout: float,
        window: int,
        paced: bool,
        awaited: int,
        wake: Callable[[], None],
    ) -> None:
        self.stage = stage
        self.timeout = timeout
        self.window = window
        self.paced = paced
        self.queue: deque[int] = deque()
        self.held: dict[int, Message] = {}
        self.open: set[int] = set()
        # The stretched deadline: each window of clients may take a whole stage timeout, and
        # so may the writes of the stage's messages; nobody is waited for beyond it.
        self.windows = max(1, math.ceil(awaited / window))
        self.limit = started + timeout * (self.windows + 1)
        self.next_refresh = started + timeout / 2
        self._late: list[tuple[float, int]] = []  # (when, client): a heap
        # Deadlines started (messages written, or none to send); the test hook's "training"
        # point (``secagg.service.testhooks``) waits for every task to be written.
        self.written_count = 0
        self._wake = wake

    def late_from(self, client_id: int, when: float) -> None:
        """``client_id`` is late from ``when + timeout`` on (its message was written then)."""
        if not self._late:
            self._wake()  # the stage's loop may be asleep until a later moment
        heapq.heappush(self._late, (when + self.timeout, client_id))
        self.written_count += 1

    def written(self, client_id: int) -> Callable[[], None]:
        return lambda: self.late_from(client_id, time.perf_counter())

    def due(self, now: float) -> list[int]:
        """The clients whose deadline has passed (whether or not they answered since)."""
        due = []
        while self._late and self._late[0][0] <= now:
            due.append(heapq.heappop(self._late)[1])
        return due

    def next_deadline(self) -> float:
        return self._late[0][0] if self._late else math.inf


class _Round:
    """The round in progress: the engine driving the scheme's server, who is in it, when its
    stage began, and how the stage's messages are going out."""

    def __init__(
        self,
        round_id: int,
        cohort: tuple[int, ...],
        config: RoundOpening,
        server: RoundServer,
        task: pb.Task,
        listener: RoundListener,
        *,
        model: bytes,
        step: int,
        masks: _TimedMasks | None,
        session_round: int | None = None,
    ) -> None:
        self.round_id = round_id
        self.cohort = cohort
        self.config = config
        self.server = server
        self.task = task  # what opens the round (a session's: its set-up, if it runs one)
        self.model = model  # what the clients train, and the step: a session's tasks carry both
        self.step = step
        self.masks = masks  # the mask applier of the scheme's server, timed
        self.session_round = session_round  # its number in a session (None: one-shot)
        self.meter = _FrameMeter()
        self.run = RoundRun(server, listener=listener, meter=self.meter)
        self.closing: _Closing | None = None  # the stage the engine is closing
        self.progress = asyncio.Event()
        self.stage_started = time.perf_counter()
        self.stage = server.stage  # the stage running (or the last one run)
        self.delivery: _Delivery | None = None
        self.peak = 0  # the largest resident memory sampled since the stage began


class RoundDriver(RoundListener):
    """Drives rounds of ``scheme`` over ``transport`` through the round engine (``RoundRun``:
    the engine runs a round, this drives it over gRPC); it is the transport's listener while
    it lives, and the engine's. ``scheme`` holds the coordinator's side of the
    deployment: masking's PKI and mask applier, or CKKS's evaluation context."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        transport: Transport,
        *,
        ledger: Ledger,
        scheme: Scheme,
        metrics: Metrics | None = None,
        on_stage: StageHook | None = None,
        sessions: SessionSide | None = None,
    ) -> None:
        if scheme.dim != settings.params.dim:
            raise UsageError(
                f"a scheme of dim {scheme.dim} for a deployment of {settings.params.dim}"
            )
        self.settings = settings
        self.ledger = ledger
        self._transport = transport
        self._masks: _TimedMasks | None = None

        def timed(apply: prg.ApplyMasks) -> prg.ApplyMasks:
            self._masks = _TimedMasks(apply)
            return self._masks

        self.scheme = scheme.wrapping_masks(timed)  # a scheme without masks never calls it
        # Sessions that span rounds (``session_rounds`` > 0): their side of the deployment,
        # its mask applier timed too, and the session rounds run in (None: none yet, as when
        # the coordinator starts: its first round sets one up).
        if settings.sessions and sessions is None:
            raise UsageError("session_rounds is set but the driver has no session side")
        self._session_masks: _TimedMasks | None = None
        self.sessions: SessionSide | None = None
        if settings.sessions and sessions is not None:
            self._session_masks = _TimedMasks(sessions.apply_masks)
            self.sessions = dataclasses.replace(sessions, apply_masks=self._session_masks)
        self._session: _Session | None = None
        self._metrics: Metrics = NullMetrics() if metrics is None else metrics
        self._on_stage = on_stage
        self._round: _Round | None = None
        # Test-only (``secagg.service.testhooks``): empty unless SECAGG_TEST_HOLD is set.
        self._hold = hold_points()
        transport.listener = self

    # ----------------------------------------------------------------- what clients send
    def on_frame(self, conn: Connection, frame: pb.ClientFrame) -> None:
        active = self._round
        if active is None or conn.client_id not in active.cohort:
            return  # nothing is expected from this client now: ignore
        server = active.server
        kind = frame.WhichOneof("body")
        if kind == "protocol":
            if conn.client_id in server.waiting_for():
                self._metrics.client_responded(
                    server.stage, time.perf_counter() - active.stage_started
                )
            server.receive(conn.client_id, frame.protocol)
        elif kind == "abort":
            if frame.abort.round_id == active.round_id:
                # The client's typed reason, and its own words (one line: they are its text).
                reason = _abort_reason(frame.abort.reason)
                words = one_line(frame.abort.detail)
                detail = (f"{reason}: {words}" if words else reason)[:200]
                log.warning("client %d left round %d: %s", conn.client_id, active.round_id, detail)
                server.drop(conn.client_id, DropReason.CLIENT_ABORTED, detail)
        else:
            server.drop(conn.client_id, DropReason.WRONG_STAGE, f"unexpected {kind} frame")
        self._check_progress(active)

    def on_disconnect(self, conn: Connection) -> None:
        active = self._round
        if active is not None and conn.client_id in active.cohort:
            active.server.drop(
                conn.client_id,
                DropReason.DISCONNECTED,
                _RECONNECTED if conn.superseded else _CONNECTION_LOST,
            )
            self._check_progress(active)

    def _check_progress(self, active: _Round) -> None:
        waiting = active.server.waiting_for()
        if not waiting:
            active.progress.set()
        elif active.delivery is not None and active.delivery.paced:
            self._release(active, waiting)

    # ----------------------------------------------------------------- a round
    async def cohort(self) -> tuple[int, ...]:
        """Every connected client (up to max_clients), once min_clients are connected. A wait
        says what it waits for: how many, and which allow-listed clients are missing."""
        settings = self.settings
        if len(self._transport.connected) < settings.min_clients:
            log.info(
                "waiting up to %g s (cohort_wait) for %d clients (min_clients): %d connected; "
                "not connected: %s",
                settings.cohort_wait,
                settings.min_clients,
                len(self._transport.connected),
                self._missing(),
            )
        if not await self._transport.wait_for_clients(settings.min_clients, settings.cohort_wait):
            raise NoCohort(
                f"only {len(self._transport.connected)} of the {settings.min_clients} clients "
                f"a round needs (min_clients) connected within {settings.cohort_wait:g} s "
                f"(cohort_wait); not connected: {self._missing()}"
            )
        return tuple(sorted(self._transport.connected)[: settings.params.max_clients])

    def _missing(self) -> str:
        """The allow-listed clients not connected now, as words (the first few ids)."""
        connected = self._transport.connected
        missing = [c for c in self._transport.allow_list.keys if c not in connected]
        return _some_ids(missing, "client")

    async def run(
        self,
        model: NDArray[np.floating],
        *,
        step: int = 0,
        cohort: tuple[int, ...] | None = None,
    ) -> RoundSummary:
        """One round; ``model`` is what the clients train at training round ``step``.

        The cohort is the clients connected now (or those of ``cohort`` that are). With
        sessions (``session_rounds`` > 0), the round runs in the live session, among its
        members (a member no longer connected is an ordinary dropout); where there is none,
        or it cannot run one more round, this round sets up a new one over that cohort first
        (module ``secagg.service.sessions``). Raises
        ``NoCohort`` if too few connect in time, ``LedgerError`` if the ledger fails (the
        round is then recorded as aborted if the ledger still can be written), and lets a
        cancellation through once the running round is recorded as aborted.
        """
        if self._round is not None:
            raise UsageError("a round is already running")
        given = None
        if cohort is not None:
            connected = self._transport.connected
            given = cohort = tuple(sorted(c for c in cohort if c in connected))
        model_bytes = encode_model(model)
        if len(model_bytes) != 4 * self.settings.params.dim:
            raise UsageError(f"the model must have {self.settings.params.dim} parameters")
        if self.sessions is not None:
            return await self._run_in_session(given, model_bytes, step)
        if cohort is None:
            cohort = await self.cohort()
        return await self._run(cohort, model_bytes, step)

    async def _run(self, cohort: tuple[int, ...], model: bytes, step: int) -> RoundSummary:
        round_id = self.ledger.next_round_id()
        scheme = self.scheme
        config = scheme.round_config(
            cohort, nonce=os.urandom(16), round_id=round_id, task_hash=task_digest(model, step)
        )
        facts = scheme.facts(len(cohort))
        server = scheme.server(config)
        self.ledger.start_round(
            round_id=round_id,
            session_id=config.config_id,
            task_hash=config.task_hash,
            protocol=facts.protocol,
            cohort=cohort,
            degree=0 if facts.degree is None else facts.degree,
            threshold=config.min_cohort if facts.threshold is None else facts.threshold,
            dim=config.dim,
        )
        task = pb.Task(round_id=round_id, round_config=config.encode(), model=model, step=step)
        active = _Round(
            round_id, cohort, config, server, task, self, model=model, step=step, masks=self._masks
        )
        kind = f"{scheme.kind.value}, one-shot"
        facts_words = ", ".join(f"{key}={value}" for key, value in facts.as_dict().items())
        return await self._drive(active, f"{kind}, cohort of {len(cohort)}, {facts_words}")

    # ----------------------------------------------------------------- a session's round
    def _why_set_up(self, now: float) -> str | None:
        """Why the next round needs a new session set-up (None: it runs in the live one)."""
        live = self._session
        sessions = self.sessions
        assert sessions is not None
        if live is None:
            return "no session yet (the coordinator has just started)"
        server = live.server
        if server.ended is not None:
            return f"the session ended: {server.ended}"
        if not server.between_rounds:  # cut short (the coordinator stopped, the ledger failed)
            return f"its round {server.round_number} did not finish"
        why = server.needs_setup()
        if why is not None:
            return why
        if now - live.started >= live.terms.max_seconds:
            return f"the session is older than its {live.terms.max_seconds} s (session_seconds)"
        return None

    async def _run_in_session(
        self, given: tuple[int, ...] | None, model: bytes, step: int
    ) -> RoundSummary:
        """One round in the live session, or, where it cannot run one more (or there is
        none), a new session's set-up and its first round, in one ledger round."""
        sessions = self.sessions
        assert sessions is not None
        task = task_digest(model, step)
        why = self._why_set_up(time.time())
        if why is not None:
            if self._session is not None:
                log.info("the session ends: %s", why)
                self._session = None
            cohort = await self.cohort() if given is None else given
            round_id = self.ledger.next_round_id()
            terms = sessions.terms(cohort, nonce=os.urandom(16), round_id=round_id)
            live = _Session(sessions.server(terms), terms, time.time())
            self._session = live
            members = cohort
            log.info(
                "round %d: a new session set-up over %d clients, for up to %d rounds and %d s: %s",
                round_id,
                len(cohort),
                terms.max_rounds,
                terms.max_seconds,
                why,
            )
        else:
            assert self._session is not None
            live = self._session
            round_id = self.ledger.next_round_id()
            members = tuple(sorted(live.server.members))
        set_up = why is not None
        number = live.server.round_number + 1
        config = live.terms.config
        self.ledger.start_round(
            round_id=round_id,
            session_id=config.config_id,
            task_hash=task,
            protocol=config.protocol,
            cohort=members,
            degree=config.degree,
            threshold=config.threshold,
            dim=config.dim,
            session_round=number,
        )
        opening = pb.Task(
            round_id=round_id, round_config=SessionConfig.of(live.terms).encode(), step=0
        )
        active = _Round(
            round_id,
            members,
            config,
            SessionRound(live.server, task),
            opening,
            self,
            model=model,
            step=step,
            masks=self._session_masks,
            session_round=number,
        )
        words = (
            f"masking, session round {number}{' with its set-up' if set_up else ''}, "
            f"{len(members)} members, {config.protocol} k={config.degree} t={config.threshold}"
        )
        summary = await self._drive(active, words)
        if live.server.ended is not None and self._session is live:
            log.info("the session ends with round %d: the next round sets up a new one", round_id)
            self._session = None
        return summary

    async def _drive(self, active: _Round, words: str) -> RoundSummary:
        """Run a round the ledger holds as running, to its end (see ``run``)."""
        round_id = active.round_id
        self._metrics.round_started()
        self._round = active
        self._transport.meter = active.run.meter  # this round's bytes, from now on
        log.info("round %d: %s (resident memory %d MiB)", round_id, words, _resident_bytes() >> 20)
        sampler = asyncio.create_task(_sample_resident(active))
        try:
            record = await self._stages(active)
            if record.abort is not None:
                return self._aborted(active, record, record.abort)
            return self._completed(active, record)
        except asyncio.CancelledError:
            self._interrupted(active, "the coordinator was stopped")
            raise
        except LedgerError as exc:
            self._interrupted(active, f"the ledger failed: {exc}")
            raise
        finally:
            self._round = None
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _stages(self, active: _Round) -> RoundRecord:
        """The engine's stages, one by one: deliver, wait, resume (which closes the stage)."""
        server = active.server
        for stage, outgoing in active.run.stages():
            active.stage = stage
            active.stage_started = time.perf_counter()  # clients' response times count from here
            await self._stage_started(active.round_id, stage)
            expected = server.waiting_for()
            active.peak = _resident_bytes()
            first = active.closing is None
            if first and holds(self._hold, "task", active.round_id):
                await hold(active.round_id, "task")
            self._deliver(active, outgoing)
            if first and holds(self._hold, "training", active.round_id):
                await self._hold_once_written(active, expected)
            await self._await_stage(active)
            if holds(self._hold, stage.value, active.round_id):
                await hold(active.round_id, stage.value)
            active.delivery = None
            answered = len(expected - server.waiting_for() - server.drops.keys())
            active.closing = _Closing(
                len(expected),
                answered,
                0.0 if active.masks is None else active.masks.seconds,
            )
        record = active.run.record
        for stage, seconds in record.stage_seconds.items():
            self.ledger.record_stage(active.round_id, stage.value, seconds)
        return record

    async def _hold_once_written(self, active: _Round, sent: frozenset[int]) -> None:
        """Test-only: hold the round once the task of every client still in it is written
        (a written message starts its client's deadline)."""
        delivery = active.delivery
        assert delivery is not None
        while delivery.written_count < len(sent - active.server.drops.keys()):
            await asyncio.sleep(0.01)
        await hold(active.round_id, "training")

    # ----------------------------------------------------------------- the engine's listener
    def stage_closed(self, stage: Stage, seconds: float, closing: float) -> None:
        """Metrics and log for a stage the engine has just closed (its drops follow, one
        ``dropped`` each)."""
        active = self._round
        assert active is not None and active.closing is not None
        counts = active.closing
        self._metrics.stage_finished(stage, seconds, counts.expected, counts.answered)
        if stage is Stage.UNMASK and active.run.abort is None and active.masks is not None:
            # The close of the unmask stage is unmasking (the mask applier's time) and Shamir
            # reconstruction (the rest).
            unmasking = active.masks.seconds - counts.unmasked_before
            self._metrics.unmasking_seconds(unmasking)
            self._metrics.reconstruction_seconds(max(0.0, closing - unmasking))
        log.info(
            "round %d: %s took %.2f s (resident memory %d MiB, peak %d MiB)",
            active.round_id,
            stage,
            seconds,
            _resident_bytes() >> 20,
            max(active.peak, _resident_bytes()) >> 20,
        )

    def dropped(self, drop: Drop) -> None:
        """A drop, into the metrics and the ledger as it is known."""
        active = self._round
        assert active is not None
        self._metrics.client_dropped(drop.stage, drop.reason)
        self.ledger.record_drop(
            active.round_id,
            drop.client_id,
            drop.stage.value,
            drop.reason.value,
            drop_detail(drop),
        )

    async def _stage_started(self, round_id: int, stage: Stage) -> None:
        if self._on_stage is not None:
            outcome = self._on_stage(round_id, stage)
            if outcome is not None:
                await outcome

    async def _await_stage(self, active: _Round) -> None:
        """Until nobody is awaited: drop each client at its deadline (freeing its place in an
        upload window), tell the waiting they are not forgotten every half stage timeout, and
        give up at the stage's stretched deadline (the engine's close drops whoever is left)."""
        server = active.server
        delivery = active.delivery
        assert delivery is not None
        timeout = self.settings.stage_timeout
        missed_it = missed(delivery.stage)
        while waiting := server.waiting_for():
            now = time.perf_counter()
            if now >= delivery.limit:
                return
            late = [c for c in delivery.due(now) if c in waiting]
            if late:
                for c in late:
                    server.drop(c, missed_it, f"no answer within {timeout:g} s of its message")
                self._check_progress(active)
                continue
            if now >= delivery.next_refresh:
                self._tell_waiting(active, waiting)
                delivery.next_refresh = now + timeout / 2
            wake = min(delivery.limit, delivery.next_deadline(), delivery.next_refresh)
            active.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.progress.wait(), max(0.0, wake - now))

    def _deliver(self, active: _Round, outgoing: Mapping[int, Message]) -> None:
        """Send each client its message, or, in an upload stage, as many as the window holds
        and queue the rest (they are told their place)."""
        server = active.server
        stage = server.stage
        awaited = server.waiting_for()
        started = time.perf_counter()
        delivery = active.delivery = _Delivery(
            stage,
            started=started,
            timeout=self.settings.stage_timeout,
            window=self.settings.upload_window,
            paced=stage in UPLOAD_STAGES,
            awaited=len(awaited),
            wake=active.progress.set,
        )
        for c in sorted(awaited - outgoing.keys()):
            delivery.late_from(c, started)  # awaited, though sent nothing now
        drops = server.drops
        for c, message in outgoing.items():
            if c in drops:
                continue  # dropped since the stage closed (disconnected, superseded)
            if delivery.paced:
                delivery.queue.append(c)
                delivery.held[c] = message
            else:
                self._send(active, c, message)
        if delivery.paced:
            self._release(active, awaited)
            self._tell_waiting(active, server.waiting_for(), queued_only=True)

    def _release(self, active: _Round, waiting: frozenset[int]) -> None:
        """Send queued messages while the upload window has room: a place is taken from the
        moment a client is sent its message until it answers or is dropped."""
        delivery = active.delivery
        assert delivery is not None
        delivery.open &= waiting
        drops: Mapping[int, object] | None = None
        while delivery.queue and len(delivery.open) < delivery.window:
            c = delivery.queue.popleft()
            message = delivery.held.pop(c)
            drops = active.server.drops if drops is None else drops
            if c in drops:
                continue  # dropped while queued (disconnected): nothing to send
            self._send(active, c, message)
            if c in waiting:
                delivery.open.add(c)

    def _send(self, active: _Round, c: int, message: Message) -> None:
        """One client's message, built only when the transport writes it: the configuration
        travels in a Task, with the model (a session's configuration without one: each of its
        rounds' tasks travels in a SessionTask, with the round's model); its deadline starts
        once it is written."""
        conn = self._transport.connection(c)
        if conn is None:
            active.server.drop(c, DropReason.DISCONNECTED, _CONNECTION_LOST)
            return
        delivery = active.delivery
        written = None if delivery is None else delivery.written(c)
        if message.OPENS_ROUND:
            task = active.task
            conn.send(lambda: pb.ServerFrame(task=task), written=written)
        elif message.opens_training:
            # What opens a session's round (its task, or round 1's set-up shares), with the
            # round's model.
            round_id, model, step = active.round_id, active.model, active.step

            def session_task() -> pb.ServerFrame:
                return pb.ServerFrame(
                    session_task=pb.SessionTask(
                        round_id=round_id, round_task=message.encode(), model=model, step=step
                    )
                )

            conn.send(session_task, written=written)
        else:
            conn.send(lambda: pb.ServerFrame(protocol=message.encode()), written=written)

    def _tell_waiting(
        self, active: _Round, waiting: frozenset[int], *, queued_only: bool = False
    ) -> None:
        """A ``Queued`` frame for each client still in the round that waits on the coordinator:
        those queued (with how many are served before them) and, unless ``queued_only``, those
        the stage no longer awaits (with how many it still does). Clients holding a message
        they have not answered are left alone: it is their turn."""
        delivery = active.delivery
        assert delivery is not None
        window = delivery.window
        queued: set[int] = set()
        position = 0
        for c in delivery.queue:
            if c in waiting:
                self._send_queued(active, c, position, window)
                queued.add(c)
                position += 1
        if queued_only:
            return
        drops = active.server.drops
        for c in active.cohort:
            if c not in waiting and c not in drops and c not in queued:
                self._send_queued(active, c, len(waiting), window)

    def _send_queued(self, active: _Round, c: int, position: int, window: int) -> None:
        conn = self._transport.connection(c)
        if conn is not None:
            conn.send(
                pb.ServerFrame(
                    queued=pb.Queued(round_id=active.round_id, position=position, window=window)
                )
            )

    # ----------------------------------------------------------------- how it ends
    def _bytes(self, record: RoundRecord, ids: Sequence[int]) -> tuple[float, float]:
        """The mean bytes up and down of those of ``ids`` still connected."""
        return record.bytes_per_client(c for c in ids if self._transport.connection(c))

    def _tell(
        self, active: _Round, completed: bool, included: tuple[int, ...], reason: str
    ) -> None:
        for c in active.cohort:
            conn = self._transport.connection(c)
            if conn is not None:
                conn.send(
                    pb.ServerFrame(
                        round_end=pb.RoundEnd(
                            round_id=active.round_id,
                            completed=completed,
                            included=c in included,
                            reason=reason,
                        )
                    )
                )

    def _summary(
        self,
        active: _Round,
        record: RoundRecord,
        *,
        up: float,
        down: float,
        abort_reason: str | None = None,
        privacy: RoundPrivacy | None = None,
        drops: str = "",
    ) -> RoundSummary:
        """The round's summary: a view of its record, in the coordinator's terms."""
        aggregate = record.aggregate
        return RoundSummary(
            active.round_id,
            record.outcome,
            active.cohort,
            record.included,
            {c: (d.stage, d.reason) for c, d in record.drops.items()},
            dict(record.stage_seconds),
            record.seconds,
            up,
            down,
            abort_reason,
            None if aggregate is None else aggregate.mean,
            # Masking's commit-reveal attempts; the other schemes have one.
            session_attempts=1 if record.attempts is None else record.attempts,
            scheme=self.scheme.kind.value,
            error_bound=None if aggregate is None else aggregate.error_bound,
            privacy=privacy,
            drops=drops,
            session_round=active.session_round,
            frames_up=dict(active.meter.frames_up),
            frames_down=dict(active.meter.frames_down),
        )

    def _aborted(self, active: _Round, record: RoundRecord, abort: RoundAborted) -> RoundSummary:
        reason = describe_abort(abort, record.drops)
        self.ledger.abort_round(active.round_id, reason)
        self._metrics.round_finished(record.outcome)
        log.warning("round %d %s", active.round_id, reason)
        up, down = self._bytes(record, active.cohort)
        self._tell(active, False, (), reason)
        return self._summary(active, record, up=up, down=down, abort_reason=reason)

    def _completed(self, active: _Round, record: RoundRecord) -> RoundSummary:
        result = record.aggregate
        assert result is not None  # a completed record has its aggregate
        finishers = tuple(c for c in result.included if c not in record.drops)
        up, down = self._bytes(record, finishers)
        plan = self.scheme.dp_plan
        privacy = None if plan is None else account_round(self.ledger, plan, len(result.included))
        # Durable before anyone hears the round completed.
        self.ledger.complete_round(
            active.round_id,
            included=result.included,
            aggregate=result.mean,
            total_weight=round(result.total_weight),
            upload_bytes_per_client=up,
            download_bytes_per_client=down,
            privacy=privacy,
        )
        self._metrics.round_finished(record.outcome)
        self._tell(active, True, result.included, "")
        drops = describe_drops(drop_records(record.drops))
        log.info(
            "round %d completed: %d included%s",
            active.round_id,
            len(result.included),
            f"; {drops}" if drops else "",
        )
        return self._summary(active, record, up=up, down=down, privacy=privacy, drops=drops)

    def _interrupted(self, active: _Round, why: str) -> None:
        """The round cannot go on: record it as aborted where the ledger still can be
        written (else the next start recovers it), and tell its clients."""
        reason = f"aborted at {active.stage}: {why}"
        with contextlib.suppress(LedgerError):
            active.run.report_drops()
        with contextlib.suppress(LedgerError):
            self.ledger.abort_round(active.round_id, reason)
        self._metrics.round_finished(RoundOutcome.ABORTED)
        log.warning("round %d %s", active.round_id, reason)
        self._tell(active, False, (), reason)


# Why a client was dropped, as words for an abort reason ("3 clients disconnected at
# masked-input"); every reason not listed reads "sent <reason>".
_DROP_WORDS = {
    DropReason.DISCONNECTED: "disconnected",
    DropReason.CLIENT_ABORTED: "left the round (their own abort)",
    DropReason.TOO_FEW_NEIGHBOURS: "had too few live neighbours",
    DropReason.BAD_REVEAL: "revealed what they had not committed",
    **dict.fromkeys(MISSED_REASONS, "missed the deadline"),
}
_STAGE_ORDER = {stage: index for index, stage in enumerate(Stage)}


# What a drop's detail says when the scheme gave none: every drop in the ledger has words.
_CONNECTION_LOST = "connection lost"
_RECONNECTED = "connected again: its previous stream is closed"
# Ids named in one line (the clients a cohort still waits for), then how many more.
_NAMED = 10


def drop_detail(drop: Drop) -> str:
    """A drop's detail: the scheme's words or, where it gave none (a deadline missed when the
    stage closed, a lost connection), the reason's."""
    if drop.detail:
        return drop.detail
    if drop.reason is DropReason.DISCONNECTED:
        return _CONNECTION_LOST
    if drop.reason in MISSED_REASONS:
        return "no answer before the stage closed"
    return ""


def drop_records(drops: Mapping[int, Drop]) -> list[DropRecord]:
    """The drops as the ledger records them, in the order of the stages, then of the ids."""
    ordered = sorted(drops.values(), key=lambda d: (_STAGE_ORDER[d.stage], d.client_id))
    return [DropRecord(d.client_id, d.stage.value, d.reason.value, drop_detail(d)) for d in ordered]


def _some_ids(ids: Sequence[int], noun: str) -> str:
    """``client 3`` / ``clients 0, 1, 2`` / the first ten and how many more / ``none``."""
    if not ids:
        return "none"
    shown = ", ".join(str(i) for i in ids[:_NAMED])
    more = f" and {len(ids) - _NAMED} more" if len(ids) > _NAMED else ""
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}{more}"


def describe_abort(abort: RoundAborted, drops: Mapping[int, Drop]) -> str:
    """Why a round aborted, cause first: who dropped where and why (as counts, in the order
    of the stages), then the protocol's reason, e.g. "aborted at masked-input: 3 clients
    disconnected at masked-input; the self mask of client 2 cannot be removed: fewer than
    3 surviving holders of its shares"."""
    counts = Counter((d.stage, d.reason) for d in drops.values())
    causes = [
        f"{n} client{'s' if n > 1 else ''} "
        f"{_DROP_WORDS.get(reason, f'sent {reason.value}')} at {stage.value}"
        for (stage, reason), n in sorted(
            counts.items(), key=lambda item: (_STAGE_ORDER[item[0][0]], item[0][1].value)
        )
    ]
    return f"aborted at {abort.stage}: " + "; ".join([*causes, abort.detail])


async def _sample_resident(active: _Round, every: float = 0.2) -> None:
    """The largest resident memory of each stage (the log's per-stage peak), sampled."""
    while True:
        active.peak = max(active.peak, _resident_bytes())
        await asyncio.sleep(every)


def _abort_reason(code: str) -> str:
    """A client's abort reason as one of ours (it is the client's word: never trusted as text)."""
    try:
        return AbortReason(code).value
    except ValueError:
        return "unknown"


def _resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

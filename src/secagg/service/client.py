"""A client of the coordinator: connects out, proves its identity, answers rounds.

The client trusts nothing the coordinator says. Its deployment (its ``Scheme``, masking or
CKKS, whose ``check`` is the client's policy: parameters, threat model, allow-list, minimum
cohort) is the source of truth, and every round is checked against it before the client
trains, generates a key or reveals anything:

1. the round configuration must be one the policy accepts (``secagg.schemes.masking.policy``
   for masking, ``CkksScheme.check`` for CKKS; a configuration of another scheme is a
   ``parameter-mismatch``), for a round id this client has not taken part in before;
2. the model must be the one the configuration is bound to (its digest is in the config, so
   in the session id), finite and of the deployment's dimension;
3. the update the callback returns must be a finite vector of that dimension and an integer
   weight in range; a callback that raises aborts the round, not the client.

Any refusal is a typed ``ClientAbort`` sent to the coordinator and logged; the client stays
connected for the next round. Nothing the coordinator sends can crash it: every frame is
validated, and a silent coordinator is noticed at the client's own per-stage deadline. One
INFO line per round (the audit line) says what the client agreed to and how the round ended.

That deadline runs from the moment the client has done what the round last asked of it, and
only a message of the round or a sign of life restarts it. A coordinator that serves a large
cohort a window at a time (flow control) says ``Queued`` to the clients it keeps waiting, at
least every half of its own stage timeout; each such frame of the client's round restarts the
deadline, but never beyond a bound the client fixes at the first one, from the cohort's size
and the window the coordinator announces: one stage deadline per window of the cohort, and
three more (``_Patience``), which covers the longest an honest coordinator takes: a stage of
``ceil(n / W) + 1`` of its own (shorter) stage timeouts, then the next stage's. A coordinator
that keeps a client queued for longer is left, like a silent one: the client waits longer
for a larger cohort, never for ever.

However a stream or its channel ends (the coordinator stopped, killed or restarted, a proxy
or the network resetting it, at any stage or while the client trains: any gRPC status, a
write to a finished call, a call gRPC cancelled itself), the client has lost a connection,
not its life: it connects again with backoff and takes part in the coordinator's next round
with fresh keys. ``max_attempts`` counts failures in a row; a coordinator's welcome starts
the count again, so no number of coordinator restarts uses the budget up.

Every decision is the client session's (``secagg.client_session``): this class moves frames,
runs the update callback and keeps time. What the client promised (the rounds and tasks it took
part in, each attempt, the survivor set it signed, the shares it revealed, the privacy it
spent) is written to its journal, beside its identity file, before the answer leaves; the
audit line of a round comes from the journal, never from the coordinator's ``RoundEnd``
(recorded as the coordinator's word beside it). The client never listens and never writes a
round secret to disk: each round's keys, seeds and shares live in the session's client of that
round only, and a new round (including after a reconnection or a restart) starts with fresh
ones. There is no plaintext path: the only vector
that leaves the client is its masked input, or under CKKS its encrypted update (and, for a
key holder, the decrypted mean of the round's sum).

Sessions that span rounds (docs/SERVICE_SESSIONS.md): a ``Task`` whose configuration is a
``SessionConfig`` sets one up, and each round's opening comes in a ``SessionTask`` with its
model; they go through the client session's session API (``_JoinSessions``). A session's
secrets live in this process's memory only: a restarted client has left its session and takes
part from the next set-up. At most one session or one-shot round is live at a time (S12).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from numpy.typing import NDArray

from secagg.client_session import Accepted, Answer, ClientSession, Offer
from secagg.dp.budget import ClientBudget
from secagg.errors import (
    AbortReason,
    ClientAbort,
    DecodeError,
    Rejected,
    Unreachable,
    one_line,
)
from secagg.journal import Event, InSession, Journal, JournalTransaction
from secagg.protocol.codec import MAGIC
from secagg.protocol.stages import Stage
from secagg.schemes.base import RoundOpening, Scheme
from secagg.schemes.masking.session.messages import SessionConfig
from secagg.schemes.masking.session.terms import DEFAULT_MAX_SECONDS
from secagg.service.credentials import ClientIdentity, sign_challenge
from secagg.service.threads import in_daemon_thread
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import ModelTask, channel_options
from secagg.updates import UpdateFn  # re-exported: where users first found it

__all__ = ["ClientSettings", "ClientStats", "Rejected", "SecAggClient", "Unreachable", "UpdateFn"]

log = logging.getLogger("secagg.client")

# Longest detail sent in a ClientAbort frame: one line for the operator, never a dump.
_DETAIL_CHARS = 200


class _Retry(Exception):
    """A refusal the coordinator says is temporary."""


@dataclass(frozen=True)
class ClientSettings:
    """How a client reaches its coordinator, and the deployment it holds the server to."""

    target: str  # host:port
    identity: ClientIdentity = field(repr=False)
    ca_cert: bytes | None  # PEM root; None only for tests over an insecure channel
    max_message_bytes: int
    # The deployment's scheme on this client's side (``run.client_policy`` builds it): its
    # ``check`` is the client's policy, and it makes the client of each round.
    policy: Scheme
    # Every allow-listed client's identity public key: the cohort must lie within it, and in
    # active mode signatures are checked against it (public data).
    pki: Mapping[int, bytes] = field(repr=False)
    # Longest wait for the coordinator's next message in a round: it must exceed the
    # coordinator's stage timeout, since a fast client waits for the slowest one.
    stage_timeout: float = 120.0
    server_name: str = "localhost"
    retry_initial: float = 0.2
    retry_max: float = 5.0
    max_attempts: int | None = None  # connection attempts in a row before giving up
    # The client's journal (``secagg.journal``): what it promised, kept before it answers.
    # ``secagg join`` keeps it beside the identity file; None: a journal in a private
    # temporary folder, for in-process clients whose promises last as long as the process.
    journal: Path | None = None
    # Under distributed DP, the privacy budget the client holds itself to.
    budget: ClientBudget | None = None
    # Sessions that span rounds: the deployment's caps ([coordinator] session_rounds and
    # session_seconds, which the coordinator reads too); 0 rounds: it refuses any session.
    session_rounds: int = 0
    session_seconds: int = DEFAULT_MAX_SECONDS


@dataclass
class ClientStats:
    rounds: int = 0
    included: int = 0
    aborted: int = 0
    reconnects: int = 0
    events: list[str] = field(default_factory=list)
    abort_reasons: list[AbortReason] = field(default_factory=list)
    sessions: int = 0  # session set-ups this client took part in
    session_rounds: int = 0  # session rounds it answered to the end


@dataclass
class _RoundState:
    """The round this client is in, as far as it has got."""

    round_id: int
    config: RoundOpening | None = None
    active: bool = False  # False once this client has left the round (or before it began)
    accepted: bool = False  # this process took the round's task (its journal holds the round)
    queued: bool = False  # the coordinator said it keeps this client waiting its turn
    aborted: ClientAbort | None = None


class SecAggClient:
    """Takes part in the coordinator's rounds with updates from ``update`` (see ``UpdateFn``).

    ``rounds`` ends ``run`` after that many rounds have ended (None: run until cancelled);
    ``on_stage(round_id, stage)`` is called as each stage starts, for progress displays.
    """

    def __init__(
        self,
        settings: ClientSettings,
        update: UpdateFn,
        *,
        rounds: int | None = None,
        on_stage: Callable[[int, str], None] | None = None,
    ) -> None:
        self.settings = settings
        scheme = _signing_as(settings)
        self._update = update
        self._rounds = rounds
        self._on_stage = on_stage
        self.stats = ClientStats()
        # The retry budget (``max_attempts`` failures in a row) and the backoff.
        self._failures = 0
        self._delay = settings.retry_initial
        self._welcomed = False  # the session being tried got as far as the coordinator's welcome
        path = settings.journal
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="secagg-client-")) / "client.journal"
        # Every decision of a round is the session's; this class moves frames and keeps time.
        self.session = ClientSession(
            lambda client_id, members: scheme,
            Journal.open(path, exclusive=True),
            self_id=settings.identity.client_id,
            allowed=frozenset(settings.pki),
            stage_timeout=settings.stage_timeout,
            budget=settings.budget,
            max_session_rounds=max(1, settings.session_rounds),
            max_session_seconds=settings.session_seconds,
        )
        # Sessions that span rounds: this client's part in them (in memory only).
        self.sessions = _JoinSessions(self)
        self.sessions.sync()

    @property
    def client_id(self) -> int:
        return self.settings.identity.client_id

    async def run(self) -> ClientStats:
        """Connect (retrying with backoff) and take part in rounds until told enough.

        Each failed attempt is logged. A refusal by the coordinator (``Rejected``) and a
        certificate that does not verify (``Unreachable``) end the run at once: retrying would
        not help. Otherwise ``max_attempts`` failures in a row end it (``Unreachable``).
        """
        self._delay = self.settings.retry_initial
        self._failures = 0
        while not self._done():
            self._welcomed = False
            try:
                await self._session()
            except _Retry as exc:
                self._failed(f"refused for now: {exc}")
            except grpc.aio.AioRpcError as exc:
                if _certificate_failure(exc):
                    raise Unreachable(
                        f"the coordinator at {self.settings.target} presented a certificate "
                        "that does not verify against the deployment's CA"
                    ) from None
                # Any status: the coordinator stopped, restarted or vanished, a proxy or the
                # network reset the stream. None of them is the client's end.
                self._failed(_rpc_reason(exc))
            except (ConnectionError, OSError, EOFError, asyncio.InvalidStateError) as exc:
                # A stream the coordinator closed while this client trained (it stopped or
                # restarted) refuses the next write: the connection is lost, not the client.
                self._failed(one_line(str(exc)) or type(exc).__name__)
            except asyncio.CancelledError:
                # grpc-aio raises CancelledError from a call it cancelled itself (a stream the
                # channel gave up on); only a cancellation of this task is a stop.
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                self._failed("the stream was cancelled")
            if self._done():
                break
            self.stats.reconnects += 1
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.settings.retry_max)
        return self.stats

    def _welcome(self) -> None:
        """The coordinator took this client: the retry budget counts failures in a row, so a
        coordinator that restarts any number of times never uses it up."""
        self._welcomed = True
        self._delay, self._failures = self.settings.retry_initial, 0

    def _failed(self, reason: str) -> None:
        self._failures += 1
        failures, delay = self._failures, self._delay
        self.stats.events.append(f"connection lost: {reason}")
        limit = self.settings.max_attempts
        if self._welcomed:  # (its first failure in a row: the welcome reset the count)
            log.warning(
                "client %d: lost the coordinator at %s: %s",
                self.client_id,
                self.settings.target,
                reason,
            )
        else:
            log.warning(
                "client %d: no session with the coordinator at %s (attempt %d%s): %s",
                self.client_id,
                self.settings.target,
                failures,
                "" if limit is None else f" of {limit}",
                reason,
            )
        if limit is not None and failures >= limit:
            raise Unreachable(
                f"gave up on the coordinator at {self.settings.target} after {failures} "
                f"attempts: {reason}"
            )
        log.info("client %d: trying again in %.1f s", self.client_id, delay)

    def _done(self) -> bool:
        return self._rounds is not None and self.stats.rounds >= self._rounds

    def _channel(self) -> grpc.aio.Channel:
        options = [
            *channel_options(self.settings.max_message_bytes),
            ("grpc.ssl_target_name_override", self.settings.server_name),
        ]
        if self.settings.ca_cert is None:
            return grpc.aio.insecure_channel(self.settings.target, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=self.settings.ca_cert)
        return grpc.aio.secure_channel(self.settings.target, creds, options=options)

    async def _session(self) -> None:
        async with self._channel() as channel:
            stub = pb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Connect()
            try:
                await self._converse(call)
            finally:
                call.cancel()
                self.sessions.lost(time.time())

    async def _read(self, call: grpc.aio.StreamStreamCall) -> pb.ServerFrame | None:
        frame = await call.read()
        if frame is grpc.aio.EOF:
            return None
        if not isinstance(frame, pb.ServerFrame):
            raise ConnectionError("the coordinator sent something that is not a frame")
        return frame

    async def _pump(
        self, call: grpc.aio.StreamStreamCall, inbox: asyncio.Queue[pb.ServerFrame | Exception]
    ) -> None:
        """Read frames into ``inbox`` (a deadline then waits on the queue, never cancelling a
        read in the middle of the stream)."""
        try:
            while True:
                frame = await self._read(call)
                if frame is None:
                    inbox.put_nowait(ConnectionError("the coordinator closed the stream"))
                    return
                inbox.put_nowait(frame)
                del frame  # the inbox has it; not kept while the next one is awaited
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the session is over: nobody reads the inbox any more
            # A read grpc-aio cancelled itself: the stream is gone. Said, or the client would
            # wait for ever between rounds on a stream that will bring nothing.
            inbox.put_nowait(ConnectionError("the stream was cancelled"))
        except Exception as exc:
            inbox.put_nowait(exc)

    async def _converse(self, call: grpc.aio.StreamStreamCall) -> None:
        identity = self.settings.identity
        first = await self._read(call)
        if first is None or not first.HasField("challenge"):
            raise ConnectionError("the coordinator did not send a challenge")
        await call.write(
            pb.ClientFrame(
                hello=pb.Hello(
                    client_id=identity.client_id,
                    public_key=identity.public_key,
                    signature=sign_challenge(identity, first.challenge.nonce),
                )
            )
        )
        answer = await self._read(call)
        if answer is None:
            raise ConnectionError("the coordinator closed the stream after the hello")
        if answer.HasField("reject"):
            if answer.reject.retryable:
                raise _Retry(one_line(answer.reject.reason))
            raise Rejected(one_line(answer.reject.reason))
        self.stats.events.append("welcomed")
        self._welcome()
        inbox: asyncio.Queue[pb.ServerFrame | Exception] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(call, inbox))
        try:
            await self._rounds_on(call, inbox)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    async def _rounds_on(
        self, call: grpc.aio.StreamStreamCall, inbox: asyncio.Queue[pb.ServerFrame | Exception]
    ) -> None:
        current: _RoundState | None = None
        sessions = self.sessions
        while not self._done():
            # Between rounds the coordinator may be idle as long as it likes; inside one, it
            # must say something by the session's deadline (a one-shot round's, or the
            # deadline of the session round in progress).
            deadline = None
            if (current is not None and current.active) or sessions.live:
                deadline = self.session.deadline()
            wait = None if deadline is None else max(0.0, deadline - time.time())
            try:
                item = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                now = time.time()
                round_id = sessions.round_id
                expired = self.session.expire(now)
                if current is not None and current.active and current.round_id in expired:
                    why = expired[current.round_id]
                    await self._leave(call, current, ClientAbort(AbortReason.STAGE_TIMEOUT, why))
                if sessions.live and sessions.sync() and round_id is not None:
                    abort = ClientAbort(AbortReason.STAGE_TIMEOUT, "no word from the coordinator")
                    await self._refuse_session(call, _Refused(round_id, abort, said=True))
                continue
            if isinstance(item, Exception):
                raise item
            frame = item
            del item
            kind = frame.WhichOneof("body")
            if kind == "task":
                if _opens_session(frame.task.round_config):
                    if current is not None and current.active:  # one live round at a time
                        abort = ClientAbort(AbortReason.ROUND_CLOSED, "a session set-up began")
                        await self._leave(call, current, abort)
                    current = None
                    await self._set_up(call, frame.task)
                else:
                    current = await self._start(call, frame.task)
                    sessions.sync()  # (a one-shot round leaves a session: S12)
            elif kind == "session_task":
                if current is not None and current.active:
                    abort = ClientAbort(AbortReason.ROUND_CLOSED, "a session round began")
                    await self._leave(call, current, abort)
                current = None
                await self._session_round(call, frame.session_task)
            elif kind == "protocol":
                if current is not None and current.active:
                    await self._answer(call, current, frame.protocol)
                elif sessions.live:
                    await self._session_answer(call, frame.protocol)
            elif kind == "queued":
                if current is not None and current.active:
                    self._queued(current, frame.queued)
            elif kind == "round_end":
                if current is not None and frame.round_end.round_id == current.round_id:
                    self._finish(current, frame.round_end)
                    current = None
                else:
                    sessions.server_ended(frame.round_end, time.time())
            elif kind == "reject":
                if frame.reject.retryable:
                    raise _Retry(one_line(frame.reject.reason))
                raise Rejected(one_line(frame.reject.reason))
            # Anything else (a second welcome, a challenge, an empty frame) carries nothing
            # this client acts on. The frame (it may hold the model) is not kept while the
            # next one is awaited.
            del frame

    def _queued(self, state: _RoundState, queued: pb.Queued) -> None:
        """The coordinator keeps this client waiting its turn: a sign of life, within the
        bound the session sets from the cohort and the window (the coordinator's word: only
        its bound counts)."""
        config = state.config
        if queued.round_id != state.round_id or queued.window < 1 or config is None:
            return
        if not state.queued:
            state.queued = True
            self.stats.events.append(
                f"round {state.round_id}: queued behind {queued.position} client(s)"
            )
        cohort = len(getattr(config, "client_ids", ()))
        self.session.queued(state.round_id, cohort, queued.window, time.time())
        log.debug(
            "client %d: round %d, queued behind %d client(s)",
            self.client_id,
            state.round_id,
            queued.position,
        )

    # ----------------------------------------------------------------- a round
    async def _start(self, call: grpc.aio.StreamStreamCall, task: pb.Task) -> _RoundState:
        state = _RoundState(task.round_id)
        offer = Offer(task.round_config, ModelTask(task.model, task.step), round_id=task.round_id)
        try:
            accepted = self.session.offer(offer, time.time())
            state.accepted = True
            state.config = accepted.config
            self._stage(task.round_id, "train")
            values, weight = await self._train(accepted.model, task.step)
            first = self.session.begin(accepted, values, weight, time.time())
        except ClientAbort as exc:
            await self._leave(call, state, exc)
            return state
        state.active = True
        self._stage(state.round_id, first.stage.value)
        await call.write(pb.ClientFrame(protocol=first.data))
        return state

    async def _train(
        self, model: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.floating], int]:
        # A daemon thread: a process told to stop never waits for the user's training.
        try:
            result = await in_daemon_thread(self._update, model, step)
        except Exception as exc:  # the user's callback: its failure ends the round, not us
            raise ClientAbort(
                AbortReason.UPDATE_FAILED, f"the update callback raised {type(exc).__name__}"
            ) from None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ClientAbort(
                AbortReason.INVALID_UPDATE, "the update callback must return (values, weight)"
            )
        values, weight = result
        try:
            array = np.asarray(values)
            # A floating update keeps its precision (float32 is half the memory while the
            # client waits for its turn to mask); anything else must read as float64.
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ClientAbort(AbortReason.INVALID_UPDATE, "the update is not numeric") from None
        return array, weight

    async def _answer(
        self, call: grpc.aio.StreamStreamCall, state: _RoundState, data: bytes
    ) -> None:
        try:
            answer = self.session.receive(data, time.time())
        except ClientAbort as exc:
            await self._leave(call, state, exc)
            return
        self._stage(state.round_id, answer.stage.value)
        await call.write(pb.ClientFrame(protocol=answer.data))

    async def _leave(
        self, call: grpc.aio.StreamStreamCall, state: _RoundState, abort: ClientAbort
    ) -> None:
        """Leave the round: tell the coordinator why, log it, and reveal nothing more."""
        state.active = False
        state.aborted = abort
        if state.accepted:
            self.session.leave(state.round_id, abort.reason, one_line(abort.detail), time.time())
        self.stats.aborted += 1
        self.stats.abort_reasons.append(abort.reason)
        self.stats.events.append(f"aborted round {state.round_id}: {abort.reason.value}")
        log.warning(
            "client %d leaves round %d: %s", self.client_id, state.round_id, one_line(str(abort))
        )
        if state.accepted:
            log.info("%s", self.session.audit(state.round_id))
        else:
            log.info("round %d: refused before it began (%s)", state.round_id, abort.reason.value)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(
                pb.ClientFrame(
                    abort=pb.ClientAbort(
                        round_id=state.round_id,
                        reason=abort.reason.value,
                        detail=one_line(abort.detail)[:_DETAIL_CHARS],
                    )
                )
            )

    def _finish(self, state: _RoundState, end: pb.RoundEnd) -> None:
        """The coordinator says the round ended: recorded as its word; the audit line says
        what this client itself did ("included" only if it answered the unmask request)."""
        state.active = False
        self.stats.rounds += 1
        claim = f"{'completed' if end.completed else 'aborted'}, {'' if end.included else 'not '}"
        if not state.accepted:
            # A round this client refused (a replayed id, say): the journal's round of that id,
            # if any, is an earlier one, and nothing the coordinator says changes it.
            self.stats.events.append(f"round {end.round_id}: refused")
            log.info(
                "round %d: refused before it began (the coordinator says: %sincluded)",
                end.round_id,
                claim,
            )
            return
        line = self.session.server_ended(end.round_id, end.completed, end.included, time.time())
        included = self.session.included(end.round_id)
        if included:
            self.stats.included += 1
        outcome = "completed" if end.completed else "aborted"
        self.stats.events.append(
            f"round {end.round_id}: {outcome}{', included' if included else ''}"
        )
        log.info("%s", line)

    def _stage(self, round_id: int, stage: str) -> None:
        if self._on_stage is not None:
            self._on_stage(round_id, stage)

    # ----------------------------------------------------------------- sessions
    async def _set_up(self, call: grpc.aio.StreamStreamCall, task: pb.Task) -> None:
        """A session's set-up: its configuration checked, the commitment sent."""
        try:
            answer = self.sessions.set_up(task, time.time())
        except _Refused as refused:
            await self._refuse_session(call, refused)
            return
        self._stage(task.round_id, Stage.COMMIT.value)
        await call.write(pb.ClientFrame(protocol=answer))

    async def _session_round(self, call: grpc.aio.StreamStreamCall, frame: pb.SessionTask) -> None:
        """A session round: its task checked and journalled, the update trained, the round's
        message sent."""
        sessions = self.sessions
        try:
            accepted = sessions.offer(frame, time.time())
        except _Retransmitted as again:
            await call.write(pb.ClientFrame(protocol=again.answer))
            return
        except _Refused as refused:
            await self._refuse_session(call, refused)
            return
        self._stage(frame.round_id, "train")
        try:
            values, weight = await self._train(accepted.model, frame.step)
            answer = sessions.begin(values, weight, time.time())
        except ClientAbort as exc:
            sessions.leave(exc.reason, one_line(exc.detail), time.time())
            await self._refuse_session(call, _Refused(frame.round_id, exc, said=True))
            return
        except _Refused as refused:
            await self._refuse_session(call, refused)
            return
        await call.write(pb.ClientFrame(protocol=answer))

    async def _session_answer(self, call: grpc.aio.StreamStreamCall, data: bytes) -> None:
        try:
            answer = self.sessions.receive(data, time.time())
        except _Refused as refused:
            await self._refuse_session(call, refused)
            return
        if answer is not None:
            await call.write(pb.ClientFrame(protocol=answer))

    async def _refuse_session(
        self, call: grpc.aio.StreamStreamCall, refused: _Refused, *, said: bool = False
    ) -> None:
        """Tell the coordinator why this client refused (and, in a session, left it)."""
        abort = refused.abort
        self.stats.aborted += 1
        self.stats.abort_reasons.append(abort.reason)
        self.stats.events.append(f"refused round {refused.round_id}: {abort.reason.value}")
        if not (said or refused.said):
            log.warning(
                "client %d refuses round %d: %s",
                self.client_id,
                refused.round_id,
                one_line(str(abort)),
            )
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(
                pb.ClientFrame(
                    abort=pb.ClientAbort(
                        round_id=refused.round_id,
                        reason=abort.reason.value,
                        detail=one_line(abort.detail)[:_DETAIL_CHARS],
                    )
                )
            )


def _signing_as(settings: ClientSettings) -> Scheme:
    """The deployment's scheme, able to sign as this client where the scheme signs (masking's
    active mode: its long-term identity signs its keys and the survivor set)."""
    identity = settings.identity
    return settings.policy.signing_as(identity.client_id, identity.signing_key, settings.pki)


# What the journal's words for leaving a session mean to the operator of a `join`.
_GLOSSES = {
    "a new set-up began": "a new set-up began (the coordinator ended this session, or restarted)",
}


def _opens_session(round_config: bytes) -> bool:
    """A ``Task`` whose configuration is a session's (``SessionConfig``), read from its header
    (the session's checks decode it)."""
    head = len(MAGIC)
    return (
        len(round_config) > head + 1
        and round_config[:head] == MAGIC
        and round_config[head + 1] == SessionConfig.TAG
    )


def _certificate_failure(exc: grpc.aio.AioRpcError) -> bool:
    """gRPC reports a TLS verification failure only in its details text."""
    details = (exc.details() or "").upper()
    return "CERTIFICATE_VERIFY_FAILED" in details or "CERTIFICATE VERIFY FAILED" in details


def _rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    details = one_line(exc.details() or "")
    return f"{exc.code().name.lower()}: {details[:160]}" if details else exc.code().name.lower()


# --------------------------------------------------------------------------- sessions
class _Refused(Exception):
    """A session frame this client refuses: the abort it sends, for the round it names
    (``said``: the client already logged why, as it left its session)."""

    def __init__(self, round_id: int, abort: ClientAbort, *, said: bool = False) -> None:
        super().__init__(str(abort))
        self.round_id = round_id
        self.abort = abort
        self.said = said


class _Retransmitted(Exception):
    """A message answered before: its recorded answer again (nothing new leaves)."""

    def __init__(self, answer: bytes) -> None:
        super().__init__("retransmitted")
        self.answer = answer


class _JoinSessions:
    """``secagg join``'s part in sessions that span rounds (docs/SESSIONS.md): frames to the
    client session's session API (``offer_session``, ``receive``, ``offer_round``,
    ``begin_round``, ``leave_session``) and back. Every decision is the client session's and
    its journal's; its session client lives in this process's memory only (``keep_secrets``
    is off), so a restarted ``join`` has left its session (the journal says "the client
    restarted") and takes part from the next set-up. What is the transport's:

    - which ledger round (the envelope's ``round_id``) a session round is, for the frames that
      name it (``ClientAbort``, ``Queued``, ``RoundEnd``);
    - the coordinator's ``RoundEnd`` is its word: a round it ends before this client closed
      it is a round the client leaves (S4);
    - a lost connection in the middle of a set-up or a round leaves the session (the
      coordinator dropped this client from it); between rounds the session survives it;
    - one log line whenever the client leaves its session, from its journal: when, and why.
    """

    def __init__(self, owner: SecAggClient) -> None:
        self._owner = owner
        self.seq: int | None = None  # the journal's number of the session this process is in
        self.sid = ""  # its id, as the log names it (once agreed)
        self.round_id: int | None = None  # the ledger's id of the round in progress, or last
        self.number = 0  # the session's round in progress, or last (0: the set-up)
        self.awaiting = False  # in the middle of the set-up or a round
        self._rounds: dict[int, int] = {}  # ledger round id -> the session's round number
        self._accepted: Accepted | None = None

    @property
    def live(self) -> bool:
        return self.seq is not None

    @property
    def _session(self) -> ClientSession:
        return self._owner.session

    # ----------------------------------------------------------------- the set-up
    def set_up(self, task: pb.Task, now: float) -> bytes:
        """A new session's configuration (a ``Task`` whose configuration is a
        ``SessionConfig``): its first answer, the commitment."""
        owner = self._owner
        self.round_id, self.number, self.awaiting = task.round_id, 0, False
        if not owner.settings.session_rounds:
            raise _Refused(
                task.round_id,
                ClientAbort(
                    AbortReason.PARAMETER_MISMATCH,
                    "a session set-up; this deployment runs one-shot rounds (session_rounds = 0)",
                ),
            )
        try:
            config = SessionConfig.decode(task.round_config).config
        except DecodeError as exc:
            raise _Refused(
                task.round_id, ClientAbort(AbortReason.INVALID_CONFIG, str(exc))
            ) from None
        if task.round_id != config.round_id or task.model or task.step:
            raise _Refused(
                task.round_id,
                ClientAbort(
                    AbortReason.INVALID_CONFIG,
                    "a session's set-up carries its configuration's round id and no model",
                ),
            )
        try:
            answer = self._session.offer_session(task.round_config, now)
        except ClientAbort as exc:
            raise _Refused(task.round_id, exc, said=self.sync()) from None
        finally:
            self.sync()
        owner.stats.sessions += 1
        owner.stats.events.append(f"session set-up in round {task.round_id}")
        log.info(
            "client %d: joins a session set-up (round %d): %s",
            owner.client_id,
            task.round_id,
            config.terms(),
        )
        self.awaiting = True
        return answer.data

    # ----------------------------------------------------------------- a round
    def offer(self, frame: pb.SessionTask, now: float) -> Accepted:
        """What opens a session's round (its ``RoundTask``, or round 1's set-up shares) with
        the round's model: the client session checks and journals it; the model to train. A
        task answered before: ``_Retransmitted``, with the answer it was given."""
        self.round_id = frame.round_id
        task = ModelTask(frame.model, frame.step)
        try:
            accepted = self._session.offer_round(frame.round_task, task, now)
        except ClientAbort as exc:
            if exc.reason is AbortReason.REPLAYED_ROUND and self._still_live():
                # Answered before, and the session goes on: the recorded answer, nothing new.
                raise _Retransmitted(self._recorded(frame.round_task, now)) from None
            raise _Refused(frame.round_id, exc, said=self.sync()) from None
        self._accepted = accepted
        self._rounds[frame.round_id] = self.number = accepted.round_id
        self.awaiting = False  # it trains: the coordinator waits on it
        return accepted

    def begin(self, values: NDArray[np.floating], weight: int, now: float) -> bytes:
        """The trained update: the round's message (journalled with its DP charge before it
        is returned)."""
        accepted = self._accepted
        assert accepted is not None and self.round_id is not None
        self._accepted = None
        try:
            answer = self._session.begin_round(accepted, values, weight, now)
        except ClientAbort as exc:
            raise _Refused(self.round_id, exc, said=self.sync()) from None
        return self._answered(answer, now)

    def receive(self, data: bytes, now: float) -> bytes | None:
        """A later message of the session (None: nothing to answer, as the set-up's shares
        when round 1's task does not come with them)."""
        round_id = self.round_id or 0
        try:
            answer = self._session.receive(data, now)
        except ClientAbort as exc:
            raise _Refused(round_id, exc, said=self.sync()) from None
        return self._answered(answer, now) or None

    def _answered(self, answer: Answer, now: float) -> bytes:
        """Where the answer leaves the client: between rounds once the round is closed."""
        owner = self._owner
        if not answer.data:  # the set-up's shares alone: set up, round 1's task comes next
            self.awaiting = False
        elif answer.stage is Stage.UNMASK:
            self.awaiting = False
            owner.stats.session_rounds += 1
        else:
            self.awaiting = True
        self.sync()
        owner._stage(self.round_id or 0, answer.stage.value)
        return answer.data

    def _still_live(self) -> bool:
        live = self._session.live_session()
        return live is not None and live.seq == self.seq

    def _recorded(self, data: bytes, now: float) -> bytes:
        try:
            return self._session.receive(data, now).data
        except ClientAbort as exc:
            raise _Refused(self.round_id or 0, exc, said=self.sync()) from None

    # ----------------------------------------------------------------- the end
    def server_ended(self, end: pb.RoundEnd, now: float) -> bool:
        """The coordinator says a round ended (its word, never believed); True if it was this
        session's. A round it ends before this client closed it is left."""
        if end.round_id != self.round_id and end.round_id not in self._rounds:
            return False
        owner = self._owner
        owner.stats.rounds += 1
        claim = (
            f"{'completed' if end.completed else 'aborted'}, {'' if end.included else 'not '}"
            "included"
        )
        if self.live and self.awaiting and end.round_id == self.round_id:
            self.leave(
                AbortReason.ROUND_CLOSED,
                f"the coordinator ended round {end.round_id} ({claim}) before this client "
                "closed it",
                now,
            )
        number = self._rounds.get(end.round_id)
        included = False
        line = f"round {end.round_id}: refused before it began (the coordinator says: {claim})"
        if number is not None:
            with self._session.journal.transaction() as txn:
                seq = self.seq if self.seq is not None else self._last_seq(txn)
                entry = None if seq is None else txn.session_round(seq, number)
                included = entry is not None and entry.included
            audit = self._session.session_audit(number, seq)
            line = f"round {end.round_id}: {audit} (the coordinator says: {claim})"
        if included:
            owner.stats.included += 1
        owner.stats.events.append(
            f"round {end.round_id}: session round {number}, "
            f"{'completed' if end.completed else 'aborted'}{', included' if included else ''}"
        )
        log.info("%s", line)
        return True

    @staticmethod
    def _last_seq(txn: JournalTransaction) -> int | None:
        sessions = txn.all_sessions()
        return sessions[-1].seq if sessions else None

    def lost(self, now: float) -> None:
        """The connection is gone: in the middle of a set-up or a round, so is this client's
        part in it."""
        if self.live and self.awaiting:
            self.leave(
                AbortReason.ROUND_CLOSED,
                "the connection to the coordinator was lost in the middle of a round",
                now,
            )

    def leave(self, reason: AbortReason, detail: str, now: float) -> None:
        """The transport's side of leaving the session (its update callback failed, ...)."""
        self._session.leave_session(reason, detail, now)
        self.sync()

    def sync(self) -> bool:
        """Catch up with the journal: log the session this process was in if it has been
        left (and why: the journal's words), and take up the live one. True if it logged a
        departure."""
        owner = self._owner
        said = False
        with self._session.journal.transaction() as txn:
            if self.seq is not None:
                entry = txn.session(self.seq)
                if entry is None or not entry.live:
                    said = self._say_left(txn, self.seq)
                    self.seq, self.sid, self.awaiting = None, "", False
            live = txn.live_session()
            if live is not None:
                self.seq = live.seq
                if live.session_id is not None and not self.sid:
                    self.sid = live.session_id.hex()[:12]
                    log.info("client %d: session %s agreed", owner.client_id, self.sid)
        return said

    def _say_left(self, txn: JournalTransaction, seq: int) -> bool:
        owner = self._owner
        rounds = txn.session_rounds(seq)
        number = rounds[-1].round_number if rounds else 0
        events = txn.events(InSession(seq, number))
        why = next((d for _, k, d in reversed(events) if k in (Event.LEFT, Event.EXPIRED)), "left")
        name = self.sid or "being set up"
        why = _GLOSSES.get(why, why)
        owner.stats.events.append(f"left session {name}: {why}")
        if why.startswith("the session ran its"):
            log.info(
                "client %d: session %s %s", owner.client_id, name, why.removeprefix("the session ")
            )
            return True
        log.warning(
            "client %d leaves session %s at round %d: %s", owner.client_id, name, number, why
        )
        return True

"""The coordinator: an async gRPC server that admits authenticated clients and runs rounds.

Each client keeps one bidirectional stream open. On connection the coordinator sends a fresh
challenge; the client answers with its id and an Ed25519 signature, checked against the
allow-list. Rounds then follow one another: the coordinator forms a cohort from the idle
connected clients, binds the round to the model it sends (the task digest is in the round
configuration, hence in the session id), and drives the sans-I/O ``Server`` stage by stage,
each with a deadline, until the server says the round is done. There is no plaintext path:
clients only ever send protocol messages. A client that
misses a deadline, disconnects or misbehaves is dropped with a reason and the round goes on
while enough remain. Masked inputs are summed as they arrive, so memory stays
O(dim + clients x degree). Every round is written to the ledger; a completed round's
aggregate is committed before anyone is told the round completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from numpy.typing import NDArray

from secagg.errors import AbortReason, AuthenticationError, DropReason, RoundAborted, UsageError
from secagg.parallel import MaskApplier
from secagg.params import Params
from secagg.protocol.messages import Message, RoundConfig
from secagg.protocol.server import Server
from secagg.service.credentials import AllowList, new_challenge
from secagg.service.ledger import Ledger
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import channel_options, encode_model, message_size_limit, task_digest

__all__ = ["Coordinator", "CoordinatorSettings", "RoundSummary"]

log = logging.getLogger("secagg.coordinator")


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator listens, forms cohorts and paces stages."""

    params: Params
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see Coordinator.port)
    min_clients: int = 3
    cohort_wait: float = 60.0  # seconds to wait for min_clients before giving up a round
    stage_timeout: float = 30.0  # per stage; a client that misses it is dropped
    auth_timeout: float = 10.0

    @property
    def max_message_bytes(self) -> int:
        p = self.params
        return message_size_limit(p.dim, p.max_clients, p.ring_bits)


@dataclass(frozen=True)
class RoundSummary:
    """What a round did, as the coordinator saw it (also in the ledger)."""

    round_id: int
    outcome: str  # "completed" or "aborted"
    cohort: tuple[int, ...]
    included: tuple[int, ...]
    dropped: Mapping[int, tuple[str, str]]  # client -> (stage, reason)
    stage_seconds: Mapping[str, float]
    seconds: float
    upload_bytes_per_client: float
    download_bytes_per_client: float
    abort_reason: str | None = None
    aggregate: NDArray[np.float64] | None = field(default=None, repr=False)
    session_attempts: int = 1


# A Task frame (it carries the model) is built only when its turn to be written comes, and at
# most _LARGE_WRITES of them are in flight: the coordinator never holds a copy of the model
# per client.
_LARGE_WRITES = 16

Outgoing = pb.ServerFrame | Callable[[], pb.ServerFrame] | None


class _Connection:
    """One authenticated client stream."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.up = 0
        self.down = 0

    def send(self, frame: pb.ServerFrame | Callable[[], pb.ServerFrame]) -> None:
        self.outbox.put_nowait(frame)


class _Round:
    """The round in progress: the protocol server and who is in it."""

    def __init__(self, round_id: int, cohort: tuple[int, ...], server: Server) -> None:
        self.round_id = round_id
        self.cohort = cohort
        self.server = server
        self.progress = asyncio.Event()

    def waiting_for(self) -> frozenset[int]:
        return self.server.waiting_for()


class Coordinator(pb_grpc.CoordinatorServicer):
    """Embed with ``await coordinator.start()``, ``await coordinator.run_round(model)``."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        ledger: Ledger,
        allow_list: AllowList,
        tls: tuple[bytes, bytes] | None,
        on_stage: Callable[[int, str], Awaitable[None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.allow_list = allow_list
        self._tls = tls
        self._on_stage = on_stage
        self._connections: dict[int, _Connection] = {}
        self._round: _Round | None = None
        self._server: grpc.aio.Server | None = None
        self._connected = asyncio.Condition()
        self._large_writes = asyncio.Semaphore(_LARGE_WRITES)
        # Unmasking on every core, through a fork server: this process runs gRPC.
        self._mask_applier = MaskApplier(start_method="forkserver")
        self.port = 0
        self.rejections: list[str] = []  # why connections were refused, for tests and reports

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        recovered = self.ledger.recover()
        if recovered:
            log.warning("rounds %s were left running by a previous coordinator: aborted", recovered)
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(options=channel_options(limit))
        pb_grpc.add_CoordinatorServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        address = f"{self.settings.host}:{self.settings.port}"
        if self._tls is None:
            self.port = server.add_insecure_port(address)
        else:
            key, chain = self._tls
            creds = grpc.ssl_server_credentials([(key, chain)])
            self.port = server.add_secure_port(address, creds)
        await server.start()
        self._server = server
        log.info("coordinator listening on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        for conn in self._connections.values():
            conn.outbox.put_nowait(None)
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    @property
    def connected(self) -> frozenset[int]:
        return frozenset(self._connections)

    async def wait_for_clients(self, count: int, timeout: float) -> bool:
        """Until ``count`` clients are connected (True) or the timeout passes (False)."""
        async with self._connected:
            try:
                await asyncio.wait_for(
                    self._connected.wait_for(lambda: len(self._connections) >= count), timeout
                )
            except TimeoutError:
                return False
        return True

    # ----------------------------------------------------------------- the stream
    async def Connect(  # noqa: N802  (the gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> None:
        del request_iterator  # the stream is read with context.read()
        try:
            await self._connect(context)
        except asyncio.CancelledError:
            # The server is stopping: the stream simply ends (its client will reconnect).
            return

    async def _connect(self, context: grpc.aio.ServicerContext) -> None:
        challenge = new_challenge()
        await context.write(pb.ServerFrame(challenge=pb.Challenge(nonce=challenge)))
        try:
            first = await asyncio.wait_for(context.read(), self.settings.auth_timeout)
        except TimeoutError:
            await self._reject(context, "no hello before the authentication deadline")
            return
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await self._reject(context, "the first frame must be a hello")
            return
        hello = first.hello
        try:
            self.allow_list.verify(hello.client_id, hello.public_key, challenge, hello.signature)
        except AuthenticationError as exc:
            # The peer learns only that it failed: which ids are listed is not its business.
            await self._reject(context, "authentication failed", detail=str(exc))
            return
        client_id = hello.client_id
        if client_id in self._connections:
            await self._reject(context, f"client {client_id} is already connected")
            return
        conn = _Connection(client_id)
        conn.up += first.ByteSize()
        self._connections[client_id] = conn
        async with self._connected:
            self._connected.notify_all()
        log.info("client %d connected", client_id)
        conn.send(
            pb.ServerFrame(
                welcome=pb.Welcome(
                    client_id=client_id, max_message_bytes=self.settings.max_message_bytes
                )
            )
        )
        reader = asyncio.create_task(self._read(conn, context))
        try:
            while True:
                outgoing = await conn.outbox.get()
                if outgoing is None:
                    break
                if callable(outgoing):
                    async with self._large_writes:
                        frame = outgoing()
                        conn.down += frame.ByteSize()
                        await context.write(frame)
                else:
                    conn.down += outgoing.ByteSize()
                    await context.write(outgoing)
                if reader.done():
                    break
        except (asyncio.CancelledError, grpc.aio.AioRpcError, ConnectionError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._disconnected(conn)

    async def _reject(
        self, context: grpc.aio.ServicerContext, reason: str, *, detail: str = ""
    ) -> None:
        self.rejections.append(detail or reason)
        log.warning("connection refused: %s", detail or reason)
        with contextlib.suppress(Exception):
            await context.write(pb.ServerFrame(reject=pb.Reject(reason=reason)))

    async def _read(self, conn: _Connection, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF:
                    break
                conn.up += frame.ByteSize()
                self._on_frame(conn, frame)
        finally:
            conn.outbox.put_nowait(None)  # wake the writer: the stream is over

    def _disconnected(self, conn: _Connection) -> None:
        if self._connections.get(conn.client_id) is conn:
            del self._connections[conn.client_id]
        log.info("client %d disconnected", conn.client_id)
        active = self._round
        if active is not None and conn.client_id in active.cohort:
            active.server.drop(conn.client_id, DropReason.DISCONNECTED)
            self._check_progress(active)

    def _on_frame(self, conn: _Connection, frame: pb.ClientFrame) -> None:
        active = self._round
        if active is None or conn.client_id not in active.cohort:
            return  # nothing is expected from this client now: ignore
        kind = frame.WhichOneof("body")
        if kind == "protocol":
            active.server.receive(conn.client_id, frame.protocol)
        elif kind == "abort":
            if frame.abort.round_id == active.round_id:
                reason = _abort_reason(frame.abort.reason)
                detail = f"{reason}: {frame.abort.detail}"[:200]
                log.warning("client %d left round %d: %s", conn.client_id, active.round_id, detail)
                active.server.drop(conn.client_id, DropReason.CLIENT_ABORTED, detail)
        else:
            active.server.drop(conn.client_id, DropReason.WRONG_STAGE, f"unexpected {kind} frame")
        self._check_progress(active)

    def _check_progress(self, active: _Round) -> None:
        if not active.waiting_for():
            active.progress.set()

    # ----------------------------------------------------------------- rounds
    async def _cohort(self) -> tuple[int, ...]:
        settings = self.settings
        if not await self.wait_for_clients(settings.min_clients, settings.cohort_wait):
            raise RoundAborted(
                "cohort",
                f"only {len(self._connections)} clients connected within "
                f"{settings.cohort_wait:g} s; at least {settings.min_clients} are needed",
            )
        ids = sorted(self._connections)[: settings.params.max_clients]
        return tuple(ids)

    async def run_round(
        self,
        model: NDArray[np.floating],
        *,
        step: int = 0,
        cohort: tuple[int, ...] | None = None,
    ) -> RoundSummary:
        """One round; ``model`` is what the clients train at training round ``step``.

        The cohort is the clients connected now (or those of ``cohort`` that are).
        """
        if self._round is not None:
            raise UsageError("a round is already running")
        if cohort is None:
            cohort = await self._cohort()
        else:
            cohort = tuple(sorted(c for c in cohort if c in self._connections))
        model_bytes = encode_model(model)
        if len(model_bytes) != 4 * self.settings.params.dim:
            raise UsageError(f"the model must have {self.settings.params.dim} parameters")
        return await self._run(cohort, model_bytes, step)

    def _config(
        self, round_id: int, cohort: tuple[int, ...], model: bytes, step: int
    ) -> RoundConfig:
        return self.settings.params.round_config(
            cohort, nonce=os.urandom(16), round_id=round_id, task_hash=task_digest(model, step)
        )

    async def _stage_started(self, round_id: int, stage: str) -> None:
        if self._on_stage is not None:
            outcome = self._on_stage(round_id, stage)
            if outcome is not None:
                await outcome

    async def _await_stage(self, active: _Round) -> None:
        if not active.waiting_for():
            return
        active.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.progress.wait(), self.settings.stage_timeout)

    def _begin(self, round_id: int, cohort: tuple[int, ...], server: Server) -> _Round:
        active = _Round(round_id, cohort, server)
        self._round = active
        for c in cohort:
            self._connections[c].up = self._connections[c].down = 0
        return active

    def _bytes(self, ids: tuple[int, ...]) -> tuple[float, float]:
        conns = [self._connections[c] for c in ids if c in self._connections]
        if not conns:
            return 0.0, 0.0
        return (
            sum(c.up for c in conns) / len(conns),
            sum(c.down for c in conns) / len(conns),
        )

    def _end(self, active: _Round, completed: bool, included: tuple[int, ...], reason: str) -> None:
        for c in active.cohort:
            conn = self._connections.get(c)
            if conn is None:
                continue
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
        self._round = None

    def _deliver(self, server: Server, outgoing: Mapping[int, Message], task: pb.Task) -> None:
        """Send each client its message: the configuration travels in a Task, with the model."""
        for c, message in outgoing.items():
            conn = self._connections.get(c)
            if conn is None:
                server.drop(c, DropReason.DISCONNECTED)
            elif isinstance(message, RoundConfig):
                conn.send(lambda: pb.ServerFrame(task=task))
            else:
                conn.send(pb.ServerFrame(protocol=message.encode()))

    async def _run(self, cohort: tuple[int, ...], model: bytes, step: int) -> RoundSummary:
        round_id = self.ledger.next_round_id()
        config = self._config(round_id, cohort, model, step)
        # Active mode: the allow-list is the PKI that signed keys and survivor sets are
        # checked against.
        server = Server(
            config,
            pki=self.allow_list.keys if config.active else None,
            apply_masks=self._mask_applier,
        )
        self.ledger.start_round(
            round_id=round_id,
            session_id=config.config_id,
            task_hash=config.task_hash,
            protocol=config.protocol,
            cohort=cohort,
            degree=config.degree,
            threshold=config.threshold,
            dim=config.dim,
        )
        active = self._begin(round_id, cohort, server)
        started = time.perf_counter()
        stage_seconds: dict[str, float] = {}
        recorded: set[int] = set()
        task = pb.Task(round_id=round_id, round_config=config.encode(), model=model, step=step)
        abort: RoundAborted | None = None
        log.info(
            "round %d: cohort of %d, k=%d, t=%d (resident memory %d MiB)",
            round_id,
            len(cohort),
            config.degree,
            config.threshold,
            _resident_bytes() >> 20,
        )
        outgoing: Mapping[int, Message] = server.start()
        while not server.done:
            stage = server.stage
            t0 = time.perf_counter()
            await self._stage_started(round_id, stage.value)
            self._deliver(server, outgoing, task)
            await self._await_stage(active)
            try:
                outgoing = server.close_stage()
            except RoundAborted as exc:
                abort = exc
            seconds = time.perf_counter() - t0
            # A stage that runs again (a second commit attempt) adds to its time.
            stage_seconds[stage.value] = stage_seconds.get(stage.value, 0.0) + seconds
            log.info(
                "round %d: %s took %.2f s (resident memory %d MiB)",
                round_id,
                stage.value,
                seconds,
                _resident_bytes() >> 20,
            )
            for client, drop in server.drops.items():
                if client not in recorded:
                    recorded.add(client)
                    self.ledger.record_drop(
                        round_id, client, drop.stage.value, drop.reason.value, drop.detail
                    )
        for name, seconds in stage_seconds.items():
            self.ledger.record_stage(round_id, name, seconds)
        dropped = {c: (d.stage.value, d.reason.value) for c, d in server.drops.items()}
        seconds = time.perf_counter() - started
        if abort is not None:
            self.ledger.abort_round(round_id, str(abort))
            log.warning("round %d aborted: %s", round_id, abort)
            up, down = self._bytes(cohort)
            self._end(active, False, (), abort.detail)
            return RoundSummary(
                round_id,
                "aborted",
                cohort,
                (),
                dropped,
                stage_seconds,
                seconds,
                up,
                down,
                abort.detail,
                session_attempts=server.attempt,
            )
        result = server.result
        mean = result.weighted_mean(self.settings.params.quantizer)
        finishers = tuple(c for c in result.included if c not in dropped)
        up, down = self._bytes(finishers)
        # Durable before anyone hears the round completed.
        self.ledger.complete_round(
            round_id,
            included=result.included,
            aggregate=mean,
            total_weight=result.total_weight,
            upload_bytes_per_client=up,
            download_bytes_per_client=down,
        )
        self._end(active, True, result.included, "")
        log.info("round %d completed: %d included", round_id, len(result.included))
        return RoundSummary(
            round_id,
            "completed",
            cohort,
            result.included,
            dropped,
            stage_seconds,
            seconds,
            up,
            down,
            None,
            mean,
            session_attempts=server.attempt,
        )


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

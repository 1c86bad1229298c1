"""A client of the coordinator: connects out, proves its identity, answers rounds.

The client never listens and never writes a secret to disk: each round's keys, seeds and
shares live in the sans-I/O ``Client`` of that round only, and a new round (including after
a reconnection) starts with fresh ones. The update comes from a callback given the model the
round trains; the client checks that this model is the one its session id is bound to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from numpy.typing import NDArray

from secagg.errors import AbortReason, ClientAbort, DecodeError, SecAggError
from secagg.hazmat.randomness import SystemRandomness
from secagg.protocol.client import Client
from secagg.protocol.messages import (
    Message,
    PeerKeys,
    PeerShares,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    decode,
)
from secagg.service.credentials import ClientIdentity, sign_challenge
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import channel_options, decode_model, encode_model, task_digest

__all__ = ["ClientSettings", "ClientStats", "SecAggClient", "UpdateFn"]

log = logging.getLogger("secagg.client")

# (the model to train, the training round) -> (update, integer weight)
UpdateFn = Callable[[NDArray[np.float32], int], tuple[NDArray[np.floating], int]]


class Rejected(SecAggError):
    """The coordinator refused this client (e.g. not on its allow-list): retrying won't help."""


@dataclass(frozen=True)
class ClientSettings:
    target: str  # host:port
    identity: ClientIdentity = field(repr=False)
    ca_cert: bytes | None  # PEM root; None only for tests over an insecure channel
    max_message_bytes: int
    server_name: str = "localhost"
    retry_initial: float = 0.2
    retry_max: float = 5.0
    max_attempts: int | None = None  # connection attempts in a row before giving up
    # Active mode: every cohort member's identity public key (the allow-list; public data).
    pki: Mapping[int, bytes] | None = None


@dataclass
class ClientStats:
    rounds: int = 0
    included: int = 0
    aborted: int = 0
    reconnects: int = 0
    events: list[str] = field(default_factory=list)


class SecAggClient:
    def __init__(
        self,
        settings: ClientSettings,
        update: UpdateFn,
        *,
        rounds: int | None = None,
        on_stage: Callable[[int, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._update = update
        self._rounds = rounds
        self._on_stage = on_stage
        self.stats = ClientStats()

    @property
    def client_id(self) -> int:
        return self.settings.identity.client_id

    async def run(self) -> ClientStats:
        """Connect (retrying with backoff) and take part in rounds until told enough."""
        delay = self.settings.retry_initial
        failures = 0
        while not self._done():
            try:
                await self._session()
                delay, failures = self.settings.retry_initial, 0
            except Rejected:
                raise
            except (grpc.aio.AioRpcError, ConnectionError, OSError, EOFError) as exc:
                failures += 1
                self.stats.events.append(f"connection lost: {type(exc).__name__}")
                limit = self.settings.max_attempts
                if limit is not None and failures >= limit:
                    raise
            if self._done():
                break
            self.stats.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max)
        return self.stats

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

    async def _read(self, call: grpc.aio.StreamStreamCall) -> pb.ServerFrame | None:
        frame = await call.read()
        if frame is grpc.aio.EOF:
            return None
        assert isinstance(frame, pb.ServerFrame)
        return frame

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
            raise Rejected(answer.reject.reason)
        self.stats.events.append("welcomed")
        round_: _RoundState | None = None
        while not self._done():
            frame = await self._read(call)
            if frame is None:
                raise ConnectionError("the coordinator closed the stream")
            kind = frame.WhichOneof("body")
            if kind == "task":
                round_ = await self._start(call, frame.task)
            elif kind == "protocol" and round_ is not None and round_.client is not None:
                await self._answer(call, round_, frame.protocol)
            elif kind == "round_end":
                self._finish(frame.round_end)
                round_ = None
            elif kind == "reject":
                raise Rejected(frame.reject.reason)

    async def _start(self, call: grpc.aio.StreamStreamCall, task: pb.Task) -> _RoundState:
        dim = None
        config: RoundConfig | None = None
        if task.secure:
            try:
                config = RoundConfig.decode(task.round_config)
            except DecodeError as exc:
                await self._abort(call, task.round_id, f"invalid round config: {exc}")
                return _RoundState(task.round_id, None, None)
            dim = config.dim
            if task_digest(task.model) != config.task_hash or config.round_id != task.round_id:
                # The session is bound to another model: training this one would be unsafe.
                await self._abort(call, task.round_id, "the model does not match the session")
                return _RoundState(task.round_id, None, None)
        model = decode_model(task.model, dim)
        update, weight = await asyncio.to_thread(self._update, model, task.step)
        values = np.asarray(update, dtype=np.float32)
        if not task.secure:
            await call.write(
                pb.ClientFrame(
                    plain_update=pb.PlainUpdate(
                        round_id=task.round_id, values=encode_model(values), weight=weight
                    )
                )
            )
            return _RoundState(task.round_id, None, None)
        assert config is not None
        if config.active and self.settings.pki is None:
            await self._abort(call, task.round_id, "active mode needs the allow-list")
            return _RoundState(task.round_id, None, None)
        client = Client(
            config,
            self.client_id,
            SystemRandomness(),
            identity=self.settings.identity.signing_key if config.active else None,
            pki=self.settings.pki if config.active else None,
        )
        state = _RoundState(task.round_id, client, (values, weight))
        self._stage(task.round_id, "advertise")
        await self._send(call, client.advertise())
        return state

    async def _answer(
        self, call: grpc.aio.StreamStreamCall, state: _RoundState, data: bytes
    ) -> None:
        client = state.client
        assert client is not None
        try:
            message = decode(data)
            if isinstance(message, PeerKeys):
                self._stage(state.round_id, "share")
                reply: Message = client.share_keys(message)
            elif isinstance(message, PeerShares):
                self._stage(state.round_id, "masked-input")
                assert state.update is not None
                values, weight = state.update
                reply = client.mask_input(message, values, weight)
                state.update = None  # the plaintext update is not kept past masking
            elif isinstance(message, SurvivorList):
                self._stage(state.round_id, "consistency")
                reply = client.consistency(message)
            elif isinstance(message, UnmaskRequest):
                self._stage(state.round_id, "unmask")
                reply = client.unmask(message)
            else:
                raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, type(message).__name__)
        except DecodeError as exc:
            state.client = None
            await self._abort(call, state.round_id, f"{AbortReason.MALFORMED_MESSAGE}: {exc}")
            return
        except ClientAbort as exc:
            state.client = None
            await self._abort(call, state.round_id, str(exc))
            return
        await self._send(call, reply)

    async def _send(self, call: grpc.aio.StreamStreamCall, message: Message) -> None:
        await call.write(pb.ClientFrame(protocol=message.encode()))

    async def _abort(self, call: grpc.aio.StreamStreamCall, round_id: int, reason: str) -> None:
        log.warning("client %d leaves round %d: %s", self.client_id, round_id, reason)
        self.stats.aborted += 1
        self.stats.events.append(f"aborted round {round_id}: {reason}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(pb.ClientFrame(abort=pb.ClientAbort(round_id=round_id, reason=reason)))

    def _finish(self, end: pb.RoundEnd) -> None:
        self.stats.rounds += 1
        if end.included:
            self.stats.included += 1
        self.stats.events.append(
            f"round {end.round_id}: {'completed' if end.completed else 'aborted'}"
            f"{', included' if end.included else ''}"
        )

    def _stage(self, round_id: int, stage: str) -> None:
        if self._on_stage is not None:
            self._on_stage(round_id, stage)


@dataclass
class _RoundState:
    round_id: int
    client: Client | None
    update: tuple[NDArray[np.float32], int] | None = field(default=None, repr=False)

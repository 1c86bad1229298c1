"""A coordinator that lies, written from scratch against the real gRPC schema.

It listens over TLS with the deployment's own server certificate (it *is* the coordinator the
clients were told to trust), authenticates clients exactly as the real one does, and then
writes whatever frames its test script asks for, keeping every frame the clients send. The
clients are unmodified ``secagg join`` processes. A test drives it synchronously: the gRPC
server runs on an event loop of its own in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from secagg.errors import AuthenticationError, DecodeError
from secagg.protocol.codec import Message, decode
from secagg.schemes.masking.messages import RoundConfig
from secagg.service.credentials import AllowList, new_challenge
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import server_options

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """What one client sent back: a protocol message, or its reason for leaving."""

    client: int
    frame: pb.ClientFrame

    @property
    def message(self) -> Message | None:
        if self.frame.WhichOneof("body") != "protocol":
            return None
        try:
            return decode(self.frame.protocol)
        except DecodeError:
            return None

    @property
    def abort(self) -> str | None:
        """The abort reason code, if the client left the round."""
        return self.frame.abort.reason if self.frame.HasField("abort") else None


@dataclass(frozen=True)
class _EndStream:
    """Ends the stream with this status, as a proxy, a load balancer or a dying server may."""

    code: grpc.StatusCode
    details: str


class _Connection:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[pb.ClientFrame] = asyncio.Queue()
        self.outbox: asyncio.Queue[pb.ServerFrame | _EndStream | None] = asyncio.Queue()


class _Servicer(pb_grpc.CoordinatorServicer):
    def __init__(self, adversary: Adversary) -> None:
        self._adversary = adversary

    async def Connect(  # noqa: N802  (the gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.ClientFrame],
        context: grpc.aio.ServicerContext,
    ) -> None:
        del request_iterator
        challenge = new_challenge()
        await context.write(pb.ServerFrame(challenge=pb.Challenge(nonce=challenge)))
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            return
        hello = first.hello
        self._adversary.hellos += 1
        if self._adversary.refusals:
            await context.write(pb.ServerFrame(reject=self._adversary.refusals.pop(0)))
            return
        try:
            self._adversary.allow_list.verify(
                hello.client_id, hello.public_key, challenge, hello.signature
            )
        except AuthenticationError:
            return
        conn = _Connection()
        self._adversary.connections[hello.client_id] = conn
        await context.write(
            pb.ServerFrame(
                welcome=pb.Welcome(
                    client_id=hello.client_id, max_message_bytes=self._adversary.limit
                )
            )
        )

        async def read() -> None:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF:
                    return
                self._adversary.sent_up.append((hello.client_id, frame))
                conn.inbox.put_nowait(frame)

        reader = asyncio.create_task(read())
        try:
            while True:
                outgoing = await conn.outbox.get()
                if outgoing is None or reader.done():
                    break
                if isinstance(outgoing, _EndStream):
                    await context.abort(outgoing.code, outgoing.details)
                await context.write(outgoing)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self._adversary.connections.get(hello.client_id) is conn:
                del self._adversary.connections[hello.client_id]


class Adversary:
    """The lying coordinator, driven step by step from a synchronous test."""

    def __init__(self, allow_list: AllowList, tls: tuple[bytes, bytes], limit: int) -> None:
        self.allow_list = allow_list
        self.limit = limit
        self._tls = tls
        self.connections: dict[int, _Connection] = {}
        self.sent_up: list[tuple[int, pb.ClientFrame]] = []  # every frame any client sent
        self.refusals: list[pb.Reject] = []  # answers to the next hellos, in order
        self.hellos = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> int:
        self._thread.start()

        async def start() -> int:
            server = grpc.aio.server(options=server_options(self.limit))
            pb_grpc.add_CoordinatorServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
            key, chain = self._tls
            port = server.add_secure_port(
                "127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)])
            )
            await server.start()
            self._server = server
            return int(port)

        self.port = self._run(start())
        return self.port

    def stop(self) -> None:
        async def stop() -> None:
            for conn in self.connections.values():
                conn.outbox.put_nowait(None)
            if self._server is not None:
                await self._server.stop(0.5)

        with contextlib.suppress(Exception):
            self._run(stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def wait_for(self, clients: Iterable[int], timeout: float = 60.0) -> None:
        wanted = set(clients)

        async def wait() -> None:
            while not wanted <= set(self.connections):
                await asyncio.sleep(0.05)

        self._run(wait(), timeout)

    # ----------------------------------------------------------------- frames
    def send_frame(self, client: int, frame: pb.ServerFrame) -> None:
        async def send() -> None:
            self.connections[client].outbox.put_nowait(frame)

        self._run(send())

    def end_stream(self, client: int, code: grpc.StatusCode, details: str = "") -> None:
        """End the client's stream with status ``code`` (it is then no longer connected)."""

        async def end() -> None:
            self.connections[client].outbox.put_nowait(_EndStream(code, details))

        self._run(end())

    def send_task(
        self, client: int, config: RoundConfig, model: bytes, step: int, round_id: int | None = None
    ) -> None:
        self.send_frame(
            client,
            pb.ServerFrame(
                task=pb.Task(
                    round_id=config.round_id if round_id is None else round_id,
                    round_config=config.encode(),
                    model=model,
                    step=step,
                )
            ),
        )

    def send(self, client: int, message: Message | bytes) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        self.send_frame(client, pb.ServerFrame(protocol=data))

    def end_round(
        self, clients: Iterable[int], round_id: int, included: Iterable[int] = ()
    ) -> None:
        """Tell clients the round ended: completed (with ``included``) or not."""
        inside = set(included)
        for c in clients:
            end = pb.RoundEnd(
                round_id=round_id, completed=bool(inside), included=c in inside, reason=""
            )
            self.send_frame(c, pb.ServerFrame(round_end=end))

    def replies(self, clients: Iterable[int], timeout: float = 20.0) -> dict[int, Reply | None]:
        """The next frame from each client, or None if it sent nothing within ``timeout``."""
        ids = list(clients)

        async def one(client: int) -> Reply | None:
            try:
                frame = await asyncio.wait_for(self.connections[client].inbox.get(), timeout)
            except TimeoutError:
                return None
            return Reply(client, frame)

        async def every() -> list[Reply | None]:
            return list(await asyncio.gather(*(one(c) for c in ids)))

        return dict(zip(ids, self._run(every(), timeout + 10), strict=True))

    def reply(self, client: int, timeout: float = 20.0) -> Reply | None:
        return self.replies([client], timeout)[client]

    def drain(self, clients: Iterable[int], quiet: float = 0.3) -> list[Reply]:
        """Whatever the clients still send within ``quiet`` seconds (to start the next test
        from a clean slate)."""
        left: list[Reply] = []
        for client, reply in self.replies(clients, quiet).items():
            while reply is not None:
                left.append(reply)
                reply = self.reply(client, quiet)
        return left

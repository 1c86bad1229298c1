"""Transport: the coordinator's gRPC servicer, the challenge handshake and the connections.

Each client keeps one bidirectional stream open. On connection the coordinator sends a fresh
challenge; the client answers with its id and an Ed25519 signature over it, checked against
the allow-list. An authenticated stream becomes a ``Connection``: an outbox that one writer
drains. The bytes of every frame, up and down, go into the ``meter`` (a byte meter the round
driver hands in for each round: its counts are what the round's record says a client sent
and was sent) and into the operator metrics, by direction and message type. What the client
sends after its hello is handed to the ``Listener`` (the round driver); nothing here knows
about rounds.

A frame that may be as large as the model (the Task, any protocol message: the round driver
sends them all this way) is queued as a function that builds it, called only when its turn to
be written comes; at most ``upload_window`` such frames are built and in flight at once over
all connections, so the coordinator never holds a copy per client. A client that does not
take such a frame within ``stage_timeout`` has its stream closed (it is reported as
disconnected): a reader that stalls must not hold one of the window's places for ever.

A client that authenticates while a stream of the same id is still open supersedes it: the
new connection has just proved the identity afresh, and the old one is most likely a stream
a restarted client left behind (it would otherwise linger until keepalive found it dead).
The old stream is closed and reported to the listener as disconnected.

The server listens on a port of its own (no SO_REUSEPORT), permits the clients' keepalive
pings and pings them in turn (``secagg.service.wire``); an address it cannot bind is one
``ConfigurationError`` line that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from secagg.errors import AuthenticationError, ConfigurationError
from secagg.protocol.runner import ByteMeter
from secagg.service.identity import AllowList, new_challenge
from secagg.service.metrics import Direction, Metrics, NullMetrics, frame_message_type
from secagg.service.settings import CoordinatorSettings
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.v1 import coordinator_pb2_grpc as pb_grpc
from secagg.service.wire import server_options

__all__ = ["Connection", "Listener", "Transport", "address"]

log = logging.getLogger("secagg.coordinator")


class _QuietCancelledStreams(logging.Filter):
    """Drops grpc-aio's report of a servicer task that was cancelled, and only that.

    When the server stops (or a peer vanishes at the wrong instant) grpc-aio cancels the
    task that runs ``Connect`` and its C extension logs the ``CancelledError`` with a
    traceback, from outside any code of ours. A cancelled stream is how every stream of
    ours ends when the coordinator stops: no error, and the operator must not see a
    traceback for it. Any other exception the extension reports still gets through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_GRPC_LOG = logging.getLogger("grpc._cython.cygrpc")
_QUIET = _QuietCancelledStreams()

Frame = pb.ServerFrame | Callable[[], pb.ServerFrame]
Written = Callable[[], None]


class Connection:
    """One authenticated client stream: its outbox."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.outbox: asyncio.Queue[tuple[Frame, Written | None] | None] = asyncio.Queue()
        self.superseded = False

    def send(self, frame: Frame, *, written: Written | None = None) -> None:
        """Queue a frame, or a function that builds it when its turn comes (a frame that may
        be large: see the module docstring); ``written()`` is called once it is written."""
        self.outbox.put_nowait((frame, written))

    def close(self) -> None:
        """End the stream once what is queued has been written."""
        self.outbox.put_nowait(None)


class Listener(Protocol):
    """Who hears what authenticated clients send, and when their streams end."""

    def on_frame(self, conn: Connection, frame: pb.ClientFrame) -> None: ...
    def on_disconnect(self, conn: Connection) -> None: ...


class _Nobody:
    def on_frame(self, conn: Connection, frame: pb.ClientFrame) -> None:
        pass

    def on_disconnect(self, conn: Connection) -> None:
        pass


class Transport(pb_grpc.CoordinatorServicer):
    """The gRPC side of the coordinator: ``await start()``, ``await stop()``."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        allow_list: AllowList,
        tls: tuple[bytes, bytes] | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.allow_list = allow_list
        self.listener: Listener = _Nobody()
        # Where the bytes of each frame are counted: the round driver gives each round a
        # fresh meter (its record's), so a round counts from the moment it begins.
        self.meter = ByteMeter()
        self._tls = tls
        self._metrics: Metrics = NullMetrics() if metrics is None else metrics
        self._connections: dict[int, Connection] = {}
        self._server: grpc.aio.Server | None = None
        self._connected = asyncio.Condition()
        self._large_writes = asyncio.Semaphore(settings.upload_window)
        self.port = 0
        self.rejections: list[str] = []  # why connections were refused, for tests and reports

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        """Listen; ``ConfigurationError`` (one line saying why) if the address cannot be had."""
        if _QUIET not in _GRPC_LOG.filters:
            _GRPC_LOG.addFilter(_QUIET)
        _map_large_allocations()
        server = grpc.aio.server(options=server_options(self.settings.max_message_bytes))
        pb_grpc.add_CoordinatorServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        host, port = self.settings.host, self.settings.port
        where = address(host, port)
        try:
            if self._tls is None:
                bound = int(server.add_insecure_port(where))
            else:
                key, chain = self._tls
                bound = int(
                    server.add_secure_port(where, grpc.ssl_server_credentials([(key, chain)]))
                )
        except RuntimeError:  # how gRPC says it could not bind
            bound = 0
        if bound == 0:
            await server.stop(None)
            raise ConfigurationError(f"cannot listen on {where}: {_why_not_bindable(host, port)}")
        await server.start()
        self._server = server
        self.port = bound
        log.info("coordinator listening on %s", address(host, bound))
        return bound

    async def stop(self, grace: float = 1.0) -> None:
        """Close every stream (after what is queued on it) and stop listening."""
        for conn in list(self._connections.values()):
            conn.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
            await _settle_rpc_tasks()

    @property
    def connected(self) -> frozenset[int]:
        return frozenset(self._connections)

    def connection(self, client_id: int) -> Connection | None:
        return self._connections.get(client_id)

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
            await self._stream(context)
        except asyncio.CancelledError:
            # The server is stopping, or the connection is gone (keepalive found it dead):
            # the stream simply ends, and the client (if alive) reconnects.
            return

    async def _write(self, context: grpc.aio.ServicerContext, frame: pb.ServerFrame) -> int:
        size = frame.ByteSize()
        # The operator metrics have no message type for a Queued frame (a few bytes of flow
        # control): it is counted in the client's download, not in the metrics.
        if frame.WhichOneof("body") != "queued":
            self._metrics.message_bytes(Direction.DOWN, frame_message_type(frame), size)
        await context.write(frame)
        return size

    def _count_up(self, frame: pb.ClientFrame) -> int:
        size = frame.ByteSize()
        self._metrics.message_bytes(Direction.UP, frame_message_type(frame), size)
        return size

    async def _stream(self, context: grpc.aio.ServicerContext) -> None:
        challenge = new_challenge()
        await self._write(context, pb.ServerFrame(challenge=pb.Challenge(nonce=challenge)))
        try:
            first = await asyncio.wait_for(context.read(), self.settings.auth_timeout)
        except TimeoutError:
            await self._reject(context, "no hello before the authentication deadline")
            return
        if first is grpc.aio.EOF:
            return  # gone before saying anything: nothing to refuse
        hello_size = self._count_up(first)
        if not first.HasField("hello"):
            await self._reject(context, "the first frame must be a hello")
            return
        hello = first.hello
        try:
            self.allow_list.verify(hello.client_id, hello.public_key, challenge, hello.signature)
        except AuthenticationError as exc:
            # The peer learns only that it failed: which ids are listed is not its business.
            await self._reject(context, "authentication failed", detail=str(exc))
            return
        conn = Connection(hello.client_id)
        self.meter.received(conn.client_id, hello_size)
        self._register(conn)
        async with self._connected:
            self._connected.notify_all()
        conn.send(
            pb.ServerFrame(
                welcome=pb.Welcome(
                    client_id=conn.client_id, max_message_bytes=self.settings.max_message_bytes
                )
            )
        )
        reader = asyncio.create_task(self._read(conn, context))
        try:
            await self._drain(conn, context, reader)
        except (grpc.aio.AioRpcError, ConnectionError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._unregister(conn)

    async def _drain(
        self, conn: Connection, context: grpc.aio.ServicerContext, reader: asyncio.Task[None]
    ) -> None:
        while True:
            outgoing = await conn.outbox.get()
            if outgoing is None:
                return
            frame, written = outgoing
            # The size is counted once the write is done, into the meter of the round running
            # then: a large frame still being written when the next round begins counts in
            # that round, as the bytes arrive then.
            if callable(frame):
                async with self._large_writes:
                    try:
                        size = await asyncio.wait_for(
                            self._write(context, frame()), self.settings.stage_timeout
                        )
                    except TimeoutError:
                        log.warning(
                            "client %d took no frame for %g s (stage_timeout): its stream is "
                            "closed",
                            conn.client_id,
                            self.settings.stage_timeout,
                        )
                        return
            else:
                size = await self._write(context, frame)
            self.meter.sent(conn.client_id, size)
            if written is not None:
                written()
            if reader.done():
                return

    async def _reject(
        self, context: grpc.aio.ServicerContext, reason: str, *, detail: str = ""
    ) -> None:
        self.rejections.append(detail or reason)
        log.warning("connection refused: %s", detail or reason)
        with contextlib.suppress(Exception):
            await self._write(context, pb.ServerFrame(reject=pb.Reject(reason=reason)))

    async def _read(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF:
                    break
                self.meter.received(conn.client_id, self._count_up(frame))
                if not conn.superseded:
                    self.listener.on_frame(conn, frame)
                # Not kept while waiting for the next one: a client's last frame is often its
                # model-sized upload, and every connection would hold one (O(clients x dim)).
                del frame
        finally:
            conn.close()  # wake the writer: the stream is over

    def _register(self, conn: Connection) -> None:
        stale = self._connections.get(conn.client_id)
        self._connections[conn.client_id] = conn
        if stale is not None:
            # The new stream proved the identity just now; the old one is a leftover.
            log.warning("client %d connected again: its previous stream is closed", conn.client_id)
            stale.superseded = True
            stale.close()
            self.listener.on_disconnect(stale)
        else:
            log.info("client %d connected", conn.client_id)
        self._metrics.clients_connected(len(self._connections))

    def _unregister(self, conn: Connection) -> None:
        if self._connections.get(conn.client_id) is conn:
            del self._connections[conn.client_id]
            self._metrics.clients_connected(len(self._connections))
        if not conn.superseded:
            log.info("client %d disconnected", conn.client_id)
            self.listener.on_disconnect(conn)


# How grpc-aio names the task that runs each RPC on the server; a different name in another
# grpc release only means _settle_rpc_tasks waits for nothing.
_RPC_TASK_NAME = "rpc_task"
_SETTLE_SECONDS = 1.0


async def _settle_rpc_tasks() -> None:
    """Let grpc-aio's per-RPC tasks finish once the server has stopped.

    The server's stop returns when no call is live in the C core, a moment before the Python
    tasks that ran the calls have unwound. A program that ends right then (``asyncio.run``
    cancels what is left) would make grpc-aio print a ``CancelledError`` traceback per task.
    """
    rpc_tasks = [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == _RPC_TASK_NAME and not task.done()
    ]
    if rpc_tasks:
        await asyncio.wait(rpc_tasks, timeout=_SETTLE_SECONDS)


# glibc's mallopt parameter for the size from which an allocation gets pages of its own.
_M_MMAP_THRESHOLD = -3
_LARGE_ALLOCATION = 128 * 1024


def _map_large_allocations() -> None:
    """Give every allocation of 128 KiB or more pages of its own, returned when it is freed.

    A coordinator allocates model-sized buffers all round long (each frame built, serialised,
    received, unpacked), a few at a time, among many small long-lived objects. glibc raises
    its threshold for mapping a buffer to the size of the last one freed, so from the first
    frame on they come from the heap, where they stay after they are freed, stranded between
    small objects: measured, that left the coordinator about 25 KiB per client above what it
    holds (a quarter of a GiB at 10,000 clients). A fixed threshold keeps them mapped. Where
    the C library is not glibc this does nothing.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _LARGE_ALLOCATION)


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_BIND_ERRORS = {
    errno.EADDRINUSE: "address already in use (is another coordinator running? choose "
    "another coordinator.port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "address not available on this machine (check coordinator.host)",
}


def _why_not_bindable(host: str, port: int) -> str:
    """Why gRPC could not listen there: it does not say, so ask the operating system."""
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return "unknown host (check coordinator.host)"
    for family, kind, proto, _, where in candidates:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(where)
            except OSError as exc:
                return _BIND_ERRORS.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
    return "gRPC refused the address"

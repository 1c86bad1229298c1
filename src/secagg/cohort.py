"""Simulated clients, run in this process or spread over worker processes.

The simulator's server lives in the main process; the clients of a ``Cohort`` answer each
stage's messages, as bytes, exactly as remote clients would. With ``workers > 1`` the
cohort forks that many processes, each owning a fixed share of the clients (AES and X25519
hold the GIL, so threads would not run them in parallel). Which process runs a client
changes nothing it computes: every client draws from its own random stream.

Each group also keeps the plaintext tally (the weighted sum of the inputs it masked) that
the simulator checks the unmasked result against.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ClientAbort, ConfigurationError, SecAggError
from secagg.parallel import usable_cores
from secagg.protocol.codec import SHARED_PART_BYTES, Message, decode
from secagg.protocol.runner import RoundClient

__all__ = [
    "DELIVERY_CHUNK_BYTES",
    "Cohort",
    "Delivery",
    "Reply",
    "Tally",
    "delivery_bytes",
    "delivery_size",
    "joined",
    "take_chunk",
]

# The most delivery bytes a worker is sent at once. A stage may broadcast O(n) bytes to each
# of n clients (the contribution list: 36 bytes per participant, so 720 KB to each of 20,000
# clients, 14 GB in all); deliveries are encoded only when their chunk is sent, and a part
# that many of a chunk's deliveries share (that list) is counted, and sent, once a chunk.
DELIVERY_CHUNK_BYTES: Final = 32 << 20

# A worker sends its replies to the parent in batches of at most this many, or of about this
# many bytes (``_batched``).
REPLY_BATCH: Final = 64
REPLY_BATCH_BYTES: Final = 1 << 20

InputSource = Callable[[int], NDArray[np.floating]]
Reply = tuple[int, bytes | None, str | None]  # (client, reply bytes, abort reason)
# What a client is delivered: a message's bytes, or the same bytes in consecutive parts
# (``Message.encode_parts``), whose large parts may be one object shared by many deliveries.
# Pickled in one chunk, such a part travels once (pickle writes an object it has written
# before as a reference); the client always receives the parts joined, the message's bytes.
Delivery = bytes | tuple[bytes, ...]


def delivery_bytes(delivery: Delivery) -> bytes:
    """The message's bytes, exactly as encoded."""
    return delivery if isinstance(delivery, bytes) else b"".join(delivery)


def joined(deliveries: Iterable[tuple[int, Delivery]]) -> Iterator[tuple[int, bytes]]:
    """Each ``(client, delivery)`` with the delivery as the message's bytes, joined only as
    its client is reached (a chunk never holds every recipient's copy of a shared list)."""
    for i, delivery in deliveries:
        yield i, delivery_bytes(delivery)


def delivery_size(delivery: Delivery) -> int:
    """The message's length in bytes (what the wire carries to its recipient)."""
    return len(delivery) if isinstance(delivery, bytes) else sum(map(len, delivery))


@dataclass
class Tally:
    """What the clients really put in: the reference for the unmasked result."""

    weighted_sum: NDArray[np.float64] = field(repr=False)  # of the inputs as the scheme clips them
    weight_sum: float = 0.0
    contributed: set[int] = field(default_factory=set)
    clipped: int = 0
    client_seconds: float = 0.0  # time spent inside the clients' code, summed over clients
    # The L2 norm of each input put in: the simulator's own knowledge (it made the inputs),
    # from which a report draws only a rounded median, to suggest a DP clip.
    norms: list[float] = field(default_factory=list, repr=False)

    def merge(self, other: Tally) -> None:
        self.weighted_sum += other.weighted_sum
        self.weight_sum += other.weight_sum
        self.contributed |= other.contributed
        self.clipped += other.clipped
        self.client_seconds += other.client_seconds
        self.norms += other.norms


class ClientGroup:
    """The clients one process runs."""

    def __init__(
        self,
        clients: Mapping[int, RoundClient],
        inputs: InputSource,
        weights: Sequence[int],
        exact_weights: NDArray[np.float64],
        dim: int,
        reference: Callable[[NDArray[np.floating]], NDArray[np.float64]],
    ) -> None:
        self._clients = dict(clients)
        self._inputs = inputs
        self._weights = weights
        self._exact_weights = exact_weights
        self._dim = dim
        self._reference = reference
        self._tally = Tally(np.zeros(dim, dtype=np.float64))

    def answer(self, deliveries: Iterable[tuple[int, bytes]]) -> Iterator[Reply]:
        """Each reply as soon as it is computed: a stage never holds every masked input."""
        for i, data in deliveries:
            try:
                message = self._handle(i, self._clients[i], data)
            except ClientAbort as exc:
                yield (i, None, exc.reason.value)
                continue
            yield (i, message.encode(), None)

    def _handle(self, i: int, client: RoundClient, data: bytes) -> Message:
        message = decode(data)
        started = time.perf_counter()
        try:
            uses_input = client.needs_input(message)
            if uses_input:
                # The input is produced only now, when this client uses it: a cohort of
                # thousands never holds every vector at once.
                self._set_input(i, client)
            reply = client.receive(message)
            if uses_input:
                self._tally.clipped += client.clipped
        finally:
            self._tally.client_seconds += time.perf_counter() - started
        if reply is None:
            raise ConfigurationError("a simulated client answered nothing")
        return reply

    def _set_input(self, i: int, client: RoundClient) -> None:
        values = np.asarray(self._inputs(i))
        if values.shape != (self._dim,):
            raise ConfigurationError(
                f"client {i}'s input has shape {values.shape}; expected ({self._dim},)"
            )
        client.set_input(values, self._weights[i])
        w = float(self._exact_weights[i])
        # What the scheme promises is the mean of the inputs as it clips them: check that.
        self._tally.weighted_sum += w * self._reference(values)
        self._tally.weight_sum += w
        self._tally.contributed.add(i)
        # Squares summed by numpy itself, not np.linalg.norm: that one calls BLAS, whose
        # threads, started in every worker, spin between calls and took the cores the
        # clients' masks need (the masked-input stage of 100 clients x 100,000 went from
        # 0.35 s to 0.85 s).
        with np.errstate(over="ignore"):  # a norm beyond float64 is inf: clipped all the same
            wide = values.astype(np.float64)
            self._tally.norms.append(math.sqrt(float(np.sum(wide * wide))))

    def tally(self) -> Tally:
        return self._tally


def take_chunk(
    pending: deque[int], deliveries: Mapping[int, Delivery], limit: int, overhead: int = 0
) -> list[tuple[int, Delivery]]:
    """Take clients off the front of ``pending`` with their deliveries, read only now, until
    the chunk holds ``limit`` bytes (each delivery counted with ``overhead`` more). A part
    that deliveries of the chunk share (the same object) is counted once: pickled with the
    chunk, it is written once."""
    chunk: list[tuple[int, Delivery]] = []
    shared: set[int] = set()
    size = 0
    while pending and size < limit:
        i = pending.popleft()
        delivery = deliveries[i]
        chunk.append((i, delivery))
        size += overhead
        if isinstance(delivery, bytes):
            size += len(delivery)
            continue
        for part in delivery:
            if id(part) not in shared:
                size += len(part)
                if len(part) >= SHARED_PART_BYTES:
                    shared.add(id(part))
    return chunk


class Cohort:
    """All simulated clients of a round; use as a context manager to stop the workers."""

    def __init__(
        self, group_of: Callable[[Sequence[int]], ClientGroup], ids: Sequence[int], workers: int
    ) -> None:
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self._owner: dict[int, int] = {}
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            self._local: ClientGroup | None = group_of(list(ids))
            return
        self._local = None
        context = multiprocessing.get_context("fork")
        for w in range(workers):
            share = list(ids[w::workers])
            for i in share:
                self._owner[i] = w
            group = group_of(share)
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, group), daemon=True)
            process.start()
            theirs.close()
            self._workers.append((process, ours))

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, deliveries: Mapping[int, Delivery]) -> Iterator[Reply]:
        """Every addressed client's reply to this stage, as they come (any order).

        A delivery is read from the mapping only when it is sent, and a worker is sent its
        clients' deliveries a chunk of at most ``DELIVERY_CHUNK_BYTES`` at a time (the next
        when it has answered the last), so a mapping that encodes on access never has a whole
        stage's broadcast in memory. A part the chunk's deliveries share goes down the pipe
        once a chunk (``take_chunk``).
        """
        if self._local is not None:
            yield from self._local.answer(joined((i, deliveries[i]) for i in sorted(deliveries)))
            return
        pending: list[deque[int]] = [deque() for _ in self._workers]
        for i in sorted(deliveries):
            pending[self._owner[i]].append(i)
        busy: dict[Connection, int] = {}

        def send_chunk(w: int) -> None:
            chunk = take_chunk(pending[w], deliveries, DELIVERY_CHUNK_BYTES)
            if chunk:
                # One chunk per worker at a time: a second send could block on a full pipe
                # while the worker blocks sending replies that nobody reads.
                conn = self._workers[w][1]
                conn.send(("answer", chunk))
                busy[conn] = w

        for w in range(len(self._workers)):
            send_chunk(w)
        while busy:
            for ready in wait(list(busy)):
                assert isinstance(ready, Connection)
                replies: list[Reply] | None = _receive(ready)
                if replies is None:  # this chunk is answered
                    send_chunk(busy.pop(ready))
                else:
                    yield from replies

    def tally(self) -> Tally:
        if self._local is not None:
            return self._local.tally()
        total: Tally | None = None
        for _, conn in self._workers:
            conn.send(("tally",))
            part: Tally = _receive(conn)
            if total is None:
                total = part
            else:
                total.merge(part)
        assert total is not None
        return total

    def close(self) -> None:
        for process, conn in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close",))
            conn.close()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self._workers = []


def default_workers(n: int, dim: int) -> int:
    """Worker processes worth forking: none for small rounds, where forking costs more."""
    if n * dim < 2_000_000:
        return 1
    return min(usable_cores(), n)


def _receive(conn: Connection) -> Any:
    kind, payload = conn.recv()
    if kind == "error":
        raise payload
    return payload


def _batched(replies: Iterable[Reply]) -> Iterator[list[Reply]]:
    """Replies in batches of at most ``REPLY_BATCH`` replies or about ``REPLY_BATCH_BYTES``
    (a masked input goes alone): one pipe message, and one wake-up of the parent, per batch
    rather than per client, while a stage still never holds more than a batch of replies."""
    batch: list[Reply] = []
    size = 0
    for reply in replies:
        batch.append(reply)
        size += len(reply[1] or b"")
        if len(batch) >= REPLY_BATCH or size >= REPLY_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _serve(conn: Connection, group: ClientGroup) -> None:
    """A worker's loop: answer stages until told to close."""
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        if command[0] == "close":
            return
        try:
            if command[0] == "answer":
                for replies in _batched(group.answer(joined(command[1]))):
                    conn.send(("ok", replies))
                conn.send(("ok", None))  # this chunk is done
            else:
                conn.send(("ok", group.tally()))
        except SecAggError as exc:
            conn.send(("error", exc))
        except Exception as exc:  # never leave the parent waiting
            conn.send(("error", RuntimeError(f"simulated client failed: {exc!r}")))

"""Rounds on Ray: simulated clients in batches, and the server's unmasking by vector ranges.

Choose it with ``simulate_round(..., backend="ray")`` or ``simulate_rounds(..., backend="ray")``
(or ``secagg simulate --backend ray``, with or without ``--rounds``);
it needs the ``[ray]`` extra (``pip install 'secagg[ray]'``). The round is the one the
in-process backend runs -- the same server driven by the same round engine, every message
encoded and decoded -- and so is its result: the same seed gives the same ring total and the
same aggregate, bit for bit, whichever backend and however many batches ran it.

Where it runs
-------------
If ``RAY_ADDRESS`` is set, ``ray.init()`` joins that cluster; otherwise a local one is started,
sized to the cores this process may use. Going multi-machine is only a matter of starting a
cluster (the same Python environment, with secagg installed, on every host)::

    host-1$ ray start --head --port=6379
    host-2$ ray start --address=host-1:6379        # as many hosts as you like
    host-1$ RAY_ADDRESS=host-1:6379 secagg simulate --backend ray --clients 20000 --dim 100000

A Ray cluster that is already initialised in this process (``ray.init(...)`` by the caller)
is used as it is.

Clients: one actor per batch, never one per client
--------------------------------------------------
The clients of a round are split into batches, one per CPU of the cluster by default (a
handful, not thousands); each batch lives in one long-lived actor for the whole round, as a
:class:`secagg.cohort.ClientGroup` does in a forked worker. Ray tasks are stateless, and a
client's state between stages (its key pairs, the shares it holds, its session) is what the
protocol is about: returning it from a task at every stage would serialise all of it through
the object store seven times a round, whereas an actor keeps it where it is. An actor's memory
is its clients' protocol state -- O(batch x degree) keys and shares, plus what the messages
of the protocol make each client keep -- and never more than one input vector at a time: a
client's input is produced when it masks it, and its masked input leaves at once.

Sessions that span rounds (``secagg.simulate.rounds``, ``secagg simulate --rounds``) keep the
same actors for the whole run: the cohort is opened once, and each actor's
:class:`secagg.simulate.rounds.SessionGroup` holds its clients' session state (the keys of the
next round, the shares they hold, their chain keys) from the set-up to the session's last
round, and builds them afresh at the next set-up. Nothing of a session travels between rounds
but the rounds' own messages: this is where keeping state in actors, rather than returning it
from stateless tasks, pays most.

Each stage's deliveries go to the actors in chunks of at most ``DELIVERY_CHUNK_BYTES``, two in
flight per actor; each actor answers as a streaming generator of reply chunks of at most
``REPLY_CHUNK_BYTES``, at most ``REPLY_CHUNKS_AHEAD`` of them waiting per call. The driver
feeds every reply to the server as it arrives, and the server adds each masked input into its
one running sum, so neither side ever holds every vector of a stage.

The actors are created with ``scheduling_strategy="SPREAD"`` and ask for no CPU while they
run, so that the mask tasks below find every CPU free when the unmasking starts.

Unmasking: tasks over vector ranges
-----------------------------------
AES-CTR is seekable, so :class:`RayMaskApplier` (the server's ``apply_masks``) splits the
vector into one range per CPU of the cluster and has a task expand every mask for its range
only; the driver adds each range's sum into the accumulator as it comes back.

What travels
------------
The clients' recipe (the scheme, the round configuration, each simulated client's seed and,
in active mode, its identity key) goes to every actor, and the unmasking tasks receive the
reconstructed mask keys: the machines of the cluster run the clients and the server's
unmasking, so they hold their secrets, as the one machine does in process. Ray moves them
through its object store (over the network between hosts, protected only if the cluster is
configured for TLS). This is a simulator: a deployment's clients and coordinator are
``secagg join`` and ``secagg serve``, and never share a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, cast

import numpy as np
import ray
import ray.exceptions
from numpy.typing import NDArray

from secagg.cohort import (
    DELIVERY_CHUNK_BYTES,
    ClientGroup,
    Delivery,
    Reply,
    Tally,
    joined,
    take_chunk,
)
from secagg.errors import ConfigurationError, SecAggError, UsageError
from secagg.hazmat import prg
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.keystream import Keystream
from secagg.parallel import usable_cores

__all__ = [
    "DELIVERY_CHUNK_BYTES",
    "REPLY_CHUNKS_AHEAD",
    "REPLY_CHUNK_BYTES",
    "RayCohort",
    "RayMaskApplier",
    "connect",
]

# Deliveries are sent to an actor per call in chunks of at most DELIVERY_CHUNK_BYTES (the
# process backend's): large enough that a stage of small messages is one or two calls, small
# enough that the object store never holds a stage's broadcast whole.
# Delivery chunks queued per actor: one being answered, one already shipped.
_CALLS_IN_FLIGHT: Final = 2
# Replies per object: a masked input of 100,000 values is ~390 KiB, so ~20 of them a chunk.
REPLY_CHUNK_BYTES: Final = 8 << 20
# Reply chunks an actor may produce before the driver has taken them (Ray's backpressure).
REPLY_CHUNKS_AHEAD: Final = 4
# Below this much work (elements x masks) a task costs more than it saves.
PARALLEL_WORK: Final = 20_000_000
# The bytes of a reply's id and abort reason, roughly, when sizing a chunk.
_REPLY_OVERHEAD: Final = 64

GroupFactory = Callable[[Sequence[int]], ClientGroup]


# ----------------------------------------------------------------- the cluster
def connect() -> int:
    """Make sure this process is connected to a Ray cluster; return its number of CPUs.

    Joins ``RAY_ADDRESS`` when set, otherwise starts a local cluster sized to the usable
    cores (no dashboard); a cluster the caller already initialised is used as it is.
    """
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # Ray's notice about a future change to GPU environment variables: no GPU here.
            warnings.simplefilter("ignore", FutureWarning)
            if os.environ.get("RAY_ADDRESS"):
                ray.init(logging_level=logging.WARNING)
            else:
                ray.init(
                    num_cpus=usable_cores(),
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
    _register_serializers()
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return max(1, int(resources.get("CPU", 1)))


def _register_serializers() -> None:
    """Teach Ray's pickler (in this process only) the two objects it cannot pickle alone.

    A seeded ``DeterministicRandomness`` reads a ``Keystream``, whose AES context has no
    pickled form: it travels as its key and position and is rebuilt there, so every client
    draws exactly the stream it would have drawn here. A simulated client's identity key
    travels as its 32-byte seed. Registered for Ray's serialisation only: nothing makes these
    secrets picklable anywhere else (to a file, say).
    """
    ray.util.register_serializer(
        Keystream, serializer=_keystream_state, deserializer=_keystream_from_state
    )
    ray.util.register_serializer(
        Ed25519SigningKey, serializer=_identity_seed, deserializer=_identity_from_seed
    )


def _keystream_state(stream: Keystream) -> tuple[bytes, int]:
    # The key has no public accessor, by design; this is the one place that ships it.
    return stream._key, stream.offset


def _keystream_from_state(state: tuple[bytes, int]) -> Keystream:
    key, offset = state
    return Keystream(key, offset)


def _identity_seed(key: Ed25519SigningKey) -> bytes:
    return key._key.private_bytes_raw()


def _identity_from_seed(seed: bytes) -> Ed25519SigningKey:
    return Ed25519SigningKey.from_private_bytes(seed)


def _unwrap(call: Callable[[], Any]) -> Any:
    """``call()``, with our own errors raised in a worker re-raised here as themselves."""
    try:
        return call()
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, SecAggError):
            raise exc.cause from None
        raise RuntimeError(f"a Ray worker failed: {exc.cause!r}") from None
    except ray.exceptions.RayActorError as exc:
        raise RuntimeError(
            "a Ray worker running simulated clients died (out of memory? see `ray status` "
            f"and the Ray logs): {exc}"
        ) from None


def _fetch(ref: Any) -> Any:
    return _unwrap(lambda: ray.get(ref))


# ----------------------------------------------------------------- clients
class _ClientBatch:
    """One batch of simulated clients, alive for the whole round (for a session's clients,
    the whole run)."""

    def __init__(self) -> None:
        self._group: ClientGroup | None = None

    def build(self, group_of: GroupFactory, ids: Sequence[int]) -> int:
        self._group = group_of(ids)
        return len(ids)

    def answer(
        self, deliveries: Sequence[tuple[int, Delivery]], chunk_bytes: int
    ) -> Iterator[list[Reply]]:
        group = self._built()
        chunk: list[Reply] = []
        size = 0
        for reply in group.answer(joined(deliveries)):
            chunk.append(reply)
            size += _REPLY_OVERHEAD + len(reply[1] or b"")
            if size >= chunk_bytes:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def tally(self) -> Tally:
        return self._built().tally()

    def _built(self) -> ClientGroup:
        if self._group is None:
            raise UsageError("the batch has no clients: build() it first")
        return self._group


_ClientBatchActor: Any = ray.remote(_ClientBatch)


class RayCohort:
    """All simulated clients of a round, in ``batches`` Ray actors (default: one per CPU of
    the cluster); the same interface as :class:`secagg.cohort.Cohort`. Use it as a context
    manager, so that the actors end with the round."""

    def __init__(
        self, group_of: GroupFactory, ids: Sequence[int], batches: int | None = None
    ) -> None:
        if batches is not None and batches < 1:
            raise ConfigurationError(f"the Ray backend needs at least one batch, got {batches}")
        cpus = connect()
        count = max(1, min(len(ids), cpus if batches is None else batches))
        try:
            # Pickled once, into the object store; every actor reads the same copy.
            recipe = ray.put(group_of)
        except (TypeError, pickle.PicklingError, AttributeError) as exc:
            # Ray's own message lists every object it tried: name only the culprit's type.
            culprit = re.search(r"cannot pickle '([^']+)'", str(exc))
            what = culprit.group(1) if culprit else type(exc).__name__
            raise ConfigurationError(
                f"the ray backend cannot ship this scheme's clients to Ray workers ({what} "
                "has no pickled form; CKKS contexts do not); run it with backend 'process'"
            ) from None
        self._owner: dict[int, int] = {}
        shares: list[list[int]] = []
        for b in range(count):
            share = list(ids[b::count])
            shares.append(share)
            for i in share:
                self._owner[i] = b
        self._actors: list[Any] = [
            _ClientBatchActor.options(scheduling_strategy="SPREAD").remote() for _ in range(count)
        ]
        try:
            _unwrap(
                lambda: ray.get(
                    [
                        actor.build.remote(recipe, share)
                        for actor, share in zip(self._actors, shares, strict=True)
                    ]
                )
            )
        except BaseException:
            self.close()
            raise

    @property
    def batches(self) -> int:
        return len(self._actors)

    def __enter__(self) -> RayCohort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, deliveries: Mapping[int, Delivery]) -> Iterator[Reply]:
        """Every addressed client's reply to this stage, as they come (any order).

        A delivery is read from the mapping only when its chunk is shipped, so a mapping that
        encodes on access never has a whole stage's broadcast in memory.
        """
        if not self._actors:
            raise UsageError("the cohort is closed")
        pending: list[deque[int]] = [deque() for _ in self._actors]
        for i in sorted(deliveries):
            owner = self._owner.get(i)
            if owner is None:
                raise UsageError(f"client {i} is not in this cohort")
            pending[owner].append(i)
        running: dict[Any, int] = {}

        def submit(b: int) -> None:
            chunk = take_chunk(pending[b], deliveries, DELIVERY_CHUNK_BYTES, _REPLY_OVERHEAD)
            if chunk:
                call = self._actors[b].answer.options(
                    num_returns="streaming",
                    _generator_backpressure_num_objects=REPLY_CHUNKS_AHEAD,
                )
                running[call.remote(chunk, REPLY_CHUNK_BYTES)] = b

        for b in range(len(self._actors)):
            for _ in range(_CALLS_IN_FLIGHT):
                submit(b)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for stream in ready:
                stream = cast(Any, stream)  # a generator of chunk refs, for a streaming call
                try:
                    ref = next(stream)
                except StopIteration:
                    submit(running.pop(stream))
                    continue
                replies: list[Reply] = _fetch(ref)
                del ref  # the chunk leaves the object store once we hold it
                yield from replies

    def tally(self) -> Tally:
        parts: list[Tally] = _unwrap(lambda: ray.get([a.tally.remote() for a in self._actors]))
        # Arrays from the object store are read-only views: the total gets its own.
        total = dataclasses.replace(parts[0], weighted_sum=parts[0].weighted_sum.copy())
        for part in parts[1:]:
            total.merge(part)
        return total

    def close(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone: nothing left to end
                ray.kill(actor)
        self._actors = []


# ----------------------------------------------------------------- unmasking
@ray.remote
def _mask_range(masks: list[prg.Mask], dtype: str, lo: int, hi: int) -> NDArray[Any]:
    """The sum (with signs) of every mask's words [lo, hi), in the ring's word type."""
    part = np.zeros(hi - lo, dtype=np.dtype(dtype))
    prg.apply_masks(part, masks, start=lo)
    return part


class RayMaskApplier:
    """Applies masks as Ray tasks over vector ranges (``ranges``: default one per CPU of the
    cluster); ``secagg.parallel.MaskApplier``'s call signature, for ``MaskingScheme``'s
    ``apply_masks``. Less work than ``min_work`` (elements x masks) is done here, in
    process."""

    def __init__(self, ranges: int | None = None, *, min_work: int = PARALLEL_WORK) -> None:
        if ranges is not None and ranges < 1:
            raise ConfigurationError(f"ranges must be at least 1, got {ranges}")
        if min_work < 0:
            raise ConfigurationError(f"min_work must be non-negative, got {min_work}")
        self.ranges = ranges
        self.min_work = min_work

    def __repr__(self) -> str:
        return f"RayMaskApplier(ranges={self.ranges}, min_work={self.min_work})"

    def __call__(self, acc: NDArray[np.unsignedinteger[Any]], masks: Sequence[prg.Mask]) -> None:
        n = len(acc)
        if not masks or n == 0 or n * len(masks) < self.min_work:
            prg.apply_masks(acc, masks)
            return
        cpus = connect()
        count = min(n, self.ranges or cpus)
        bounds = np.linspace(0, n, count + 1).astype(int).tolist()
        shared = ray.put(list(masks))  # once, read by every task
        pending = {
            _mask_range.remote(shared, acc.dtype.str, lo, hi): (lo, hi)
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                lo, hi = pending.pop(ref)
                part: NDArray[Any] = _fetch(ref)
                view = acc[lo:hi]
                np.add(view, part, out=view)  # wraps in the word type, as the masks do

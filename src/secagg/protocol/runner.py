"""One round, driven to its end: the loop every transport shares, and the one record of it.

A scheme's server (masking's :class:`~secagg.schemes.masking.server.Server`, or the plaintext and
CKKS servers of :mod:`secagg.schemes`) owns its stage sequence. A transport (the in-process
simulator, the gRPC coordinator, a Ray or Flower backend) only delivers what it is given and
hands back what arrives; it never decides what comes next and never dispatches protocol
messages itself::

    run = RoundRun(server, listener=listener)
    for stage, outgoing in run.stages():
        deliver(outgoing)             # send each client its message (run.meter.sent) ...
        collect()                     # ... and feed replies to server.receive (run.meter
                                      # .received) until the stage's deadline or until
                                      # server.waiting_for() is empty
    record = run.record               # the round's one RoundRecord

Resuming the iterator closes the stage. The listener hears each stage open and close, each
drop with its typed reason (in client order, when the stage that saw it closes) and the end.
When the iterator is done, ``run.record`` is the round's :class:`RoundRecord`: its outcome,
the included clients and the aggregate, the drops, time per stage (a stage that runs again,
such as a second commit attempt, adds to its time), the attempts and the bytes each client
sent and was sent, as the transport counted them into ``run.meter``. Every report a transport
gives (the simulator's, the coordinator's summary, ledger row and metrics, Flower's) is a
view of that record: nothing else keeps time or counts bytes for a round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, DropReason, RoundAborted, UsageError
from secagg.protocol.codec import Message
from secagg.protocol.stages import Drop, Stage

__all__ = [
    "UPLOAD_STAGES",
    "Aggregate",
    "ByteMeter",
    "Drop",
    "NoiseTakenOff",
    "RoundClient",
    "RoundKind",
    "RoundListener",
    "RoundOutcome",
    "RoundRecord",
    "RoundRun",
    "RoundServer",
]

# The stages whose answers are as long as the model: masking's masked inputs, an encrypted
# (CKKS) or plain update, a key holder's decrypted mean. A transport may send the messages
# that open such a stage to a few clients at a time, releasing the next as answers arrive, so
# that only so many model-sized answers are in flight at once (the coordinator's upload
# window). That changes when a client hears from the server, never what it hears: the engine
# still says which stage runs and what each client is sent.
UPLOAD_STAGES = frozenset({Stage.UPLOAD, Stage.MASKED_INPUT, Stage.DECRYPT})


@dataclass(frozen=True)
class Aggregate:
    """What a completed round reveals: the weighted mean of exactly the ``included`` clients'
    inputs (as the scheme decodes it) and the total weight behind it."""

    included: tuple[int, ...]
    total_weight: float
    mean: NDArray[np.float64] = field(repr=False)
    # The largest absolute error the scheme's encoding may add to each coordinate.
    error_bound: float = 0.0
    # The revealed sum in the scheme's ring, before decoding (None: the scheme has no ring).
    ring_total: NDArray[np.unsignedinteger] | None = field(default=None, repr=False)
    # Noise taken off the sum before decoding (None: none could be).
    noise_taken_off: NoiseTakenOff | None = None


@dataclass(frozen=True)
class NoiseTakenOff:
    """Noise a scheme took off a revealed sum before decoding it (removable noise layers,
    docs/XNOISE.md): at the certified ``count`` c of inputs less ``corrupt`` (A), ``units``
    (w) came off each included client, which keeps a noise parameter of ``kept``; the sum
    carries ``noise_multiplier`` (its noise std over the honest inputs / the L2 clip) and
    spends ``epsilon`` (None: the count vouches for no honest input). ``layers_left``
    counts the (client, layer) pairs that were to come off but could not be rebuilt: they
    stay in the sum (more noise, not less privacy)."""

    count: int
    corrupt: int
    units: int
    kept: float
    noise_multiplier: float
    epsilon: float | None
    layers_left: int = 0

    def summary(self) -> str:
        """One line for a report."""
        spent = "no epsilon" if self.epsilon is None else f"epsilon {self.epsilon:.4g}"
        left = f", {self.layers_left} layer(s) left in" if self.layers_left else ""
        return (
            f"noise layers: c={self.count}, A={self.corrupt}, w={self.units} unit(s) off, "
            f"kept mu={self.kept:.6g} per client, noise multiplier {self.noise_multiplier:.4g}, "
            f"{spent}{left}"
        )


class RoundServer(Protocol):
    """The server side of any scheme."""

    @property
    def stage(self) -> Stage: ...

    @property
    def done(self) -> bool: ...

    @property
    def drops(self) -> Mapping[int, Drop]: ...

    def start(self) -> dict[int, Message]: ...

    def receive(self, sender: int, data: Message | bytes) -> None: ...

    def waiting_for(self) -> frozenset[int]: ...

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None: ...

    def close_stage(self) -> dict[int, Message]: ...

    def aggregate(self) -> Aggregate: ...

    @property
    def attempt(self) -> int | None:
        """The attempt at agreeing on the round's session (masking's commit-reveal; None: the
        scheme agrees on nothing)."""
        ...

    @property
    def threshold_margin(self) -> int | None:
        """Clients that answered the unmask stage, minus the threshold (None: no threshold)."""
        ...


class RoundClient(Protocol):
    """The client side of any scheme: its update, then one message in, one (or none) out."""

    def set_input(self, values: NDArray[np.floating], weight: int = 1) -> None: ...

    def needs_input(self, message: Message) -> bool:
        """Whether answering ``message`` uses the input (so a driver can produce it late)."""
        ...

    def receive(self, message: Message | bytes) -> Message | None: ...

    @property
    def clipped(self) -> int:
        """How many of its values the client clipped (known once it has encoded them)."""
        ...


class RoundOutcome(StrEnum):
    """Where a round stands: running until it completes or aborts; then final. The one
    vocabulary of every report, the ledger and the metrics (a ``StrEnum``: its values are the
    words the JSON reports and the ledger have always carried)."""

    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"


class RoundKind(StrEnum):
    """What kind of round a round was: a whole one-shot round (its own set-up included), or a
    round of a session that spans rounds (docs/SESSIONS.md): its first, which also ran the
    session's set-up, or a later one (two messages a client, three in active mode). The one
    vocabulary of every report, the ledger and the simulator."""

    ONE_SHOT = "one-shot"
    SETUP_AND_ROUND = "set-up+round"
    SESSION = "session"

    @classmethod
    def of(cls, session_round: int | None) -> RoundKind:
        """The kind of a round that is ``session_round`` of its session (None: one-shot)."""
        if session_round is None:
            return cls.ONE_SHOT
        return cls.SETUP_AND_ROUND if session_round == 1 else cls.SESSION


class ByteMeter:
    """The bytes each client sent (``up``) and was sent (``down``), as the transport counts
    them: the transport knows what a message costs on its wire (the encoded message, a
    frame, the model it carries), so it feeds the meter; the runner only keeps it. One
    counter add per message, nothing more: the meter is on every transport's hot path."""

    __slots__ = ("down", "up")

    def __init__(self) -> None:
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}

    def sent(self, client_id: int, size: int) -> None:
        """``size`` bytes went to ``client_id``."""
        self.down[client_id] = self.down.get(client_id, 0) + size

    def received(self, client_id: int, size: int) -> None:
        """``size`` bytes came from ``client_id``."""
        self.up[client_id] = self.up.get(client_id, 0) + size


@dataclass(frozen=True)
class RoundRecord:
    """What one round did, the one record every report is a view of.

    ``drops`` are in the order they happened; ``stage_seconds`` the wall time of each stage
    the round ran, from its messages' delivery to the end of its close; ``seconds`` the
    round's, from the server's start to its last close. ``attempts`` counts masking's
    commit-reveal attempts (None for a scheme that has none). ``bytes_up`` and
    ``bytes_down`` are the meter's counts per client.
    """

    outcome: RoundOutcome
    abort: RoundAborted | None
    included: tuple[int, ...]
    drops: Mapping[int, Drop]
    stage_seconds: Mapping[Stage, float]
    seconds: float
    attempts: int | None
    aggregate: Aggregate | None = field(repr=False)
    bytes_up: Mapping[int, int] = field(repr=False)
    bytes_down: Mapping[int, int] = field(repr=False)

    def __post_init__(self) -> None:
        completed = self.outcome is RoundOutcome.COMPLETED
        if self.outcome is RoundOutcome.RUNNING:
            raise UsageError("a round record is written when the round has ended")
        if completed != (self.aggregate is not None and self.abort is None):
            raise UsageError(
                "a completed round has an aggregate and no abort; an aborted one has an abort"
            )
        if not completed and self.included:
            raise UsageError("an aborted round includes nobody")

    @property
    def completed(self) -> bool:
        return self.outcome is RoundOutcome.COMPLETED

    def bytes_per_client(self, ids: Iterable[int]) -> tuple[float, float]:
        """The mean bytes up and down of ``ids`` (a client the meter never saw counts 0)."""
        ids = list(ids)
        if not ids:
            return 0.0, 0.0
        up, down = self.bytes_up, self.bytes_down
        return (
            float(sum(up.get(i, 0) for i in ids)) / len(ids),
            float(sum(down.get(i, 0) for i in ids)) / len(ids),
        )


class RoundListener:
    """What a transport hears while a round runs; every method does nothing unless a
    subclass says otherwise (the coordinator's writes the ledger and the metrics as the
    round goes, so that a round interrupted halfway is still on record)."""

    def stage_opened(self, stage: Stage) -> None:
        """``stage`` begins: its messages are about to be delivered."""

    def stage_closed(self, stage: Stage, seconds: float, closing: float) -> None:
        """``stage`` is closed after ``seconds``, ``closing`` of them in the server's close
        (for masking's unmask stage: reconstruction and unmasking)."""

    def dropped(self, drop: Drop) -> None:
        """The server stopped waiting for ``drop.client_id``, with its typed reason."""

    def ended(self, record: RoundRecord) -> None:
        """The round is over: ``record`` is what it did."""


_QUIET = RoundListener()


class RoundRun:
    """Drives one ``RoundServer`` through its stages and keeps the record of the round (see
    the module docstring)."""

    def __init__(
        self,
        server: RoundServer,
        *,
        listener: RoundListener = _QUIET,
        meter: ByteMeter | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.server = server
        self.meter = ByteMeter() if meter is None else meter
        self._listener = listener
        self._clock = clock
        self._stage_seconds: dict[Stage, float] = {}
        self._abort: RoundAborted | None = None
        self._reported: set[int] = set()
        self._record: RoundRecord | None = None

    def stages(self) -> Iterator[tuple[Stage, dict[int, Message]]]:
        """Each stage and what the server sends in it; resuming closes the stage. Once it
        is exhausted, ``record`` holds the round's record."""
        listener = self._listener
        started = self._clock()
        outgoing = self.server.start()
        while not self.server.done:
            stage = self.server.stage
            listener.stage_opened(stage)
            t0 = self._clock()
            yield stage, outgoing
            closing = self._clock()
            try:
                outgoing = self.server.close_stage()
            except RoundAborted as exc:
                self._abort = exc
            closed = self._clock()
            seconds = closed - t0
            self._stage_seconds[stage] = self._stage_seconds.get(stage, 0.0) + seconds
            listener.stage_closed(stage, seconds, closing=closed - closing)
            if listener is not _QUIET:  # nobody to tell: no pass over the drops
                self.report_drops()
        seconds = self._clock() - started
        self._record = self._end(seconds)
        listener.ended(self._record)

    def report_drops(self) -> None:
        """Tell the listener the drops it has not heard of, in client order (the run does
        this as each stage closes; a transport whose round is cut short calls it to put
        the last drops on record)."""
        for client_id, drop in sorted(self.server.drops.items()):
            if client_id not in self._reported:
                self._reported.add(client_id)
                self._listener.dropped(drop)

    @property
    def abort(self) -> RoundAborted | None:
        """Why the round aborted, once it has (None while it runs or if it completed)."""
        return self._abort

    @property
    def record(self) -> RoundRecord:
        """The round's record, once ``stages()`` is exhausted."""
        if self._record is None:
            raise UsageError("the round has not ended: run its stages first")
        return self._record

    def _end(self, seconds: float) -> RoundRecord:
        aggregate = None
        if self._abort is None:
            try:
                aggregate = self.server.aggregate()
            except ConfigurationError:
                # The encoding has no mean of a total weight of zero (every included client
                # gave weight 0): the round reveals nothing, as any other abort.
                self._abort = RoundAborted(Stage.COMPLETED.value, "every included weight was zero")
            except RoundAborted as exc:
                # A sum no honest cohort could have made (a malformed weight or count).
                self._abort = exc
        return RoundRecord(
            outcome=RoundOutcome.ABORTED if aggregate is None else RoundOutcome.COMPLETED,
            abort=self._abort,
            included=() if aggregate is None else aggregate.included,
            drops=MappingProxyType(dict(self.server.drops)),
            stage_seconds=MappingProxyType(dict(self._stage_seconds)),
            seconds=seconds,
            attempts=self.server.attempt,
            aggregate=aggregate,
            bytes_up=MappingProxyType(dict(self.meter.up)),
            bytes_down=MappingProxyType(dict(self.meter.down)),
        )

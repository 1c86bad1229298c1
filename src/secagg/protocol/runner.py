"""One round, driven to its end: the loop every transport shares.

A scheme's server (masking's :class:`~secagg.protocol.server.Server`, or the plaintext and
CKKS servers of :mod:`secagg.schemes`) owns its stage sequence. A transport (the in-process
simulator, the gRPC coordinator, a Ray or Flower backend) only delivers what it is given and
hands back what arrives; it never decides what comes next and never dispatches protocol
messages itself::

    run = RoundRun(server)
    for stage, outgoing in run.stages():
        deliver(outgoing)             # send each client its message ...
        collect()                     # ... and feed replies to server.receive until the
                                      # stage's deadline or until server.waiting_for() is empty
    run.abort or server.aggregate()   # the round's end: nothing, or the aggregate

Resuming the iterator closes the stage. ``RoundRun`` keeps what every report needs: time per
stage (a stage that runs again, such as a second commit attempt, adds to its time), the drops
in the order they happened, and the abort if any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from secagg.errors import DropReason, RoundAborted
from secagg.protocol.messages import Message
from secagg.protocol.stages import Drop, Stage

__all__ = ["UPLOAD_STAGES", "Aggregate", "Drop", "RoundClient", "RoundRun", "RoundServer"]

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


class RoundRun:
    """Drives one ``RoundServer`` through its stages (see the module docstring)."""

    def __init__(
        self, server: RoundServer, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.server = server
        self._clock = clock
        self.stage_seconds: dict[str, float] = {}
        self.abort: RoundAborted | None = None
        self.seconds = 0.0
        self._reported: set[int] = set()

    def stages(self) -> Iterator[tuple[Stage, dict[int, Message]]]:
        """Each stage and what the server sends in it; resuming closes the stage."""
        started = self._clock()
        outgoing = self.server.start()
        while not self.server.done:
            stage = self.server.stage
            t0 = self._clock()
            yield stage, outgoing
            try:
                outgoing = self.server.close_stage()
            except RoundAborted as exc:
                self.abort = exc
            self.stage_seconds[stage.value] = (
                self.stage_seconds.get(stage.value, 0.0) + self._clock() - t0
            )
        self.seconds = self._clock() - started

    def new_drops(self) -> list[Drop]:
        """Drops not returned by an earlier call, in client order (to write them as they
        happen, e.g. into a ledger)."""
        fresh = [d for c, d in sorted(self.server.drops.items()) if c not in self._reported]
        self._reported.update(d.client_id for d in fresh)
        return fresh

    @property
    def completed(self) -> bool:
        return self.server.done and self.abort is None

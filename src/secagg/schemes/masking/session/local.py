"""A whole session run in one process: every client and the server, messages passed as
encoded bytes (so every decoder is on the path), clients falling silent at any stage of the
set-up or of any round. The simulator's and the tests' driver.

A client that leaves (``ClientAbort``) is recorded in ``left`` with its reason and is never
asked anything again; a client told to fall silent at a stage simply stops answering from
that stage on, in this round and every later one (it has left the session by rule S4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.errors import AbortReason, ClientAbort
from secagg.protocol.codec import Message
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Stage
from secagg.schemes.masking.session.client import Left, SessionClient
from secagg.schemes.masking.session.server import SessionServer

__all__ = ["LocalSession", "SessionRound"]

Update = tuple[NDArray[np.floating], int]


@dataclass(frozen=True)
class SessionRound:
    """One closed round of a session: who is in the sum and what it decodes to."""

    round_number: int
    aggregate: Aggregate = field(repr=False)

    @property
    def included(self) -> tuple[int, ...]:
        return self.aggregate.included


class LocalSession:
    """A server and its clients in one process. ``make_client(id)`` builds each client."""

    def __init__(self, server: SessionServer, make_client: Callable[[int], SessionClient]) -> None:
        self.server = server
        self.clients = {u: make_client(u) for u in server.config.client_ids}
        self.left: dict[int, AbortReason] = {}
        self._silent: set[int] = set()
        self.messages_up = 0  # client messages the server received, set-up and rounds
        self.messages_down = 0

    def _deliver(
        self, outgoing: Mapping[int, Message], silent_from: Mapping[int, Stage], stage: Stage
    ) -> None:
        """Hand each client its message, and the server each answer, as bytes."""
        server = self.server
        for u, message in sorted(outgoing.items()):
            self.messages_down += 1
            if u in self._silent or u in self.left:
                continue
            if silent_from.get(u) is stage:
                self._silent.add(u)
                continue
            client = self.clients[u]
            try:
                answer = client.receive(message.encode())
            except ClientAbort as exc:
                self.left[u] = exc.reason
                continue
            if isinstance(client.state, Left):
                self.left.setdefault(u, client.state.reason)
            if answer is not None:
                self.messages_up += 1
                server.receive(u, answer.encode())

    def set_up(self, silent_from: Mapping[int, Stage] | None = None) -> None:
        """Commit, reveal, advertise and share; ``silent_from[u]`` is the stage at which
        client u stops answering (COMMIT, REVEAL, ADVERTISE or SHARE)."""
        silent = dict(silent_from or {})
        server = self.server
        outgoing: Mapping[int, Message] = server.start()
        while not server.between_rounds:
            self._deliver(outgoing, silent, server.stage)
            outgoing = server.close_stage()
        # The set-up shares are taken without an answer.
        self._deliver(outgoing, silent, Stage.MASKED_INPUT)

    def run_round(
        self,
        task: bytes,
        updates: Mapping[int, Update],
        silent_from: Mapping[int, Stage] | None = None,
    ) -> SessionRound:
        """One round: every live member trains on ``task`` and sends ``updates[u]``;
        ``silent_from[u]`` is the stage (MASKED_INPUT, CONSISTENCY or UNMASK) at which
        client u stops answering. Raises ``RoundAborted`` if the round cannot finish."""
        silent = dict(silent_from or {})
        server = self.server
        outgoing = server.open_round(task)
        for u in outgoing:
            client = self.clients[u]
            if u in updates and u not in self.left and u not in self._silent:
                values, weight = updates[u]
                client.set_input(values, weight, task)
        while True:
            stage = server.stage
            self._deliver(outgoing, silent, stage)
            outgoing = server.close_stage()
            if server.between_rounds:
                break
        return SessionRound(server.round_number, server.aggregate())

"""One round of a session, as the round engine drives any scheme's round.

``SessionRound(server, task)`` is a ``RoundServer`` (``secagg.protocol.runner``): a transport
that runs one-shot rounds with ``RoundRun`` runs a session's rounds the same way, one
``SessionRound`` per training round over the same ``SessionServer``. The first round of a
session runs the set-up's stages first (commit, reveal, advertise, share); its set-up shares
carry round 1's task, so the set-up's last message is answered with round 1's message and
the first round costs no extra exchange. Every later round is two stages (three in active
mode): the task, answered with the masked input, then the unmask request.

The record of a first round holds the set-up's drops and stage times as well as the round's
(``setup`` says which kind of round it was).
"""

from __future__ import annotations

from collections.abc import Mapping

from secagg.errors import DropReason, UsageError
from secagg.protocol.codec import Message
from secagg.protocol.runner import Aggregate, RoundServer
from secagg.protocol.stages import Drop, Stage
from secagg.schemes.masking.session.messages import PeerSetupShares, RoundTask
from secagg.schemes.masking.session.server import SessionServer

__all__ = ["SessionRound"]


class SessionRound:
    """A round of ``server``'s session on the model whose digest is ``task``."""

    def __init__(self, server: SessionServer, task: bytes) -> None:
        if server.ended is not None:
            raise UsageError(f"the session has ended: {server.ended}")
        self.server = server
        self.task = task
        # A session that has not been set up runs its set-up in this round.
        self.setup = not server.between_rounds
        self._opened = False
        self._setup_drops: dict[int, Drop] = {}

    @property
    def stage(self) -> Stage:
        if self.done and self.server.ended is None:
            return Stage.COMPLETED
        return self.server.stage

    @property
    def done(self) -> bool:
        return self.server.ended is not None or (self._opened and self.server.between_rounds)

    @property
    def drops(self) -> Mapping[int, Drop]:
        return {**self._setup_drops, **self.server.drops}

    @property
    def attempt(self) -> int | None:
        return None

    @property
    def threshold_margin(self) -> int | None:
        return self.server.threshold_margin if self.done else None

    def start(self) -> dict[int, Message]:
        if self.setup:
            return self.server.start()
        return self._open()

    def receive(self, sender: int, data: Message | bytes) -> None:
        self.server.receive(sender, data)

    def waiting_for(self) -> frozenset[int]:
        return self.server.waiting_for()

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        self.server.drop(client_id, reason, detail)

    def close_stage(self) -> dict[int, Message]:
        outgoing = self.server.close_stage()
        if self._opened or not self.server.between_rounds:
            return outgoing
        # The set-up has just closed: its shares open round 1.
        self._setup_drops = dict(self.server.drops)
        tasks = self._open()
        opening: dict[int, Message] = {}
        for u, message in outgoing.items():
            assert isinstance(message, PeerSetupShares)
            task = tasks.get(u)
            assert isinstance(task, RoundTask)
            opening[u] = PeerSetupShares(
                message.session_id, u, message.ciphertexts, first_task=task.task
            )
        return opening

    def _open(self) -> dict[int, Message]:
        self._opened = True
        return dict(self.server.open_round(self.task))

    def aggregate(self) -> Aggregate:
        return self.server.aggregate()


def _conforms(round_: SessionRound) -> RoundServer:
    """Where mypy checks that a session's round is a ``RoundServer``."""
    return round_

"""A server that lies, for the session's attack tests: the honest ``SessionServer`` makes every
message, and a test rewrites what it likes before a client sees it. Everything the server
receives is kept in a ``Transcript``, which is what the loot (``tests.sessions.loot``) gets.

The lies are applied to the decoded messages and re-encoded, so every client receives bytes
exactly as the wire would carry them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from secagg.errors import AbortReason, ClientAbort
from secagg.protocol.codec import Message
from secagg.protocol.stages import Stage
from secagg.schemes.masking.session.client import Left, SessionClient
from secagg.schemes.masking.session.local import LocalSession
from secagg.schemes.masking.session.messages import (
    RoundMessage,
    SessionUnmaskResponse,
)
from secagg.schemes.masking.session.server import Member, SessionServer

# A lie: given the recipient and the honest message, what to send instead (None: nothing).
Lie = Callable[[int, Message], Message | None]


@dataclass
class Transcript:
    """What the server saw: every round message and unmask answer, and each round's members
    (their live neighbours and announced mask keys) as the round opened."""

    members: dict[int, dict[int, Member]] = field(default_factory=dict)  # round -> members
    contexts: dict[int, bytes] = field(default_factory=dict)
    round_messages: dict[tuple[int, int], RoundMessage] = field(default_factory=dict)
    answers: list[SessionUnmaskResponse] = field(default_factory=list)


class LyingSession(LocalSession):
    """A ``LocalSession`` whose server messages pass through ``lie`` first, and whose
    server's inbox is recorded."""

    def __init__(self, server: SessionServer, make_client: Callable[[int], SessionClient]) -> None:
        super().__init__(server, make_client)
        self.lie: Lie | None = None
        self.transcript = Transcript()
        self.refusals: dict[int, AbortReason] = {}

    def open_round(self, task: bytes) -> Mapping[int, Message]:
        """Round r's tasks, recording the members the round opens with."""
        outgoing = self.server.open_round(task)
        r = self.server.round_number
        self.transcript.members[r] = dict(self.server.members)
        self.transcript.contexts[r] = self.server.context
        return outgoing

    def send(self, outgoing: Mapping[int, Message]) -> dict[int, Message]:
        """Deliver (after the lie) and return each client's answer; the server gets them."""
        answers: dict[int, Message] = {}
        for u, message in sorted(outgoing.items()):
            if self.lie is not None:
                lied = self.lie(u, message)
                if lied is None:
                    continue
                message = lied
            client = self.clients[u]
            if isinstance(client.state, Left):
                continue
            try:
                answer = client.receive(message.encode())
            except ClientAbort as exc:
                self.refusals[u] = exc.reason
                continue
            if isinstance(client.state, Left):
                self.refusals.setdefault(u, client.state.reason)
            if answer is not None:
                self.record(u, answer)
                self.server.receive(u, answer.encode())
                answers[u] = answer
        return answers

    def record(self, u: int, answer: Message) -> None:
        if isinstance(answer, RoundMessage):
            self.transcript.round_messages[(answer.round_number, u)] = answer
        elif isinstance(answer, SessionUnmaskResponse):
            self.transcript.answers.append(answer)

    def stage(self) -> Stage:
        return self.server.stage

    def round(
        self,
        task: bytes,
        updates: Mapping[int, tuple[object, int]],
        lie: Lie | None = None,
        *,
        tasks: Mapping[int, bytes] | None = None,
    ) -> None:
        """One round under ``lie``: every client not yet gone trains on ``task`` (or on
        ``tasks[u]``: the model it was actually sent) and answers what it receives."""
        self.lie = lie
        try:
            outgoing = self.open_round(task)
            for u in outgoing:
                client = self.clients[u]
                if not isinstance(client.state, Left) and u in updates:
                    values, weight = updates[u]
                    client.set_input(values, weight, (tasks or {}).get(u, task))  # type: ignore[arg-type]
            while True:
                self.send(outgoing)
                outgoing = self.server.close_stage()
                if self.server.between_rounds:
                    return
        finally:
            self.lie = None

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
    ForwardedShare,
    RoundMessage,
    SessionUnmaskRequest,
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

    def masked(
        self,
        task: bytes,
        updates: Mapping[int, tuple[object, int]],
        *,
        withhold: frozenset[int] = frozenset(),
        tasks: Mapping[int, bytes] | None = None,
    ) -> None:
        """Open a round and collect its round messages; the server is not told of those
        from ``withhold`` (it treats them as dropped; the attacker keeps their bytes). The
        test then plays the rest of the round by hand (``request``)."""
        outgoing = self.open_round(task)
        for u, message in sorted(outgoing.items()):
            client = self.clients[u]
            if isinstance(client.state, Left) or u not in updates:
                continue
            values, weight = updates[u]
            client.set_input(values, weight, (tasks or {}).get(u, task))  # type: ignore[arg-type]
            try:
                answer = client.receive(message.encode())
            except ClientAbort as exc:
                self.refusals[u] = exc.reason
                continue
            assert answer is not None
            self.record(u, answer)
            if u not in withhold:
                self.server.receive(u, answer.encode())

    def request(
        self,
        recipient: int,
        survivors: frozenset[int],
        *,
        signatures: Mapping[int, bytes] | None = None,
        round_number: int | None = None,
    ) -> SessionUnmaskRequest:
        """The unmask request an (honest-looking) server would send ``recipient`` if the
        round's survivor set were ``survivors``: its live neighbours split by it, the
        survivors' ciphertexts to it and next keys, and ``signatures`` as the certificate."""
        r = self.server.round_number if round_number is None else round_number
        member = self.transcript.members[r][recipient]
        live = sorted(member.live)
        alive = tuple(w for w in live if w in survivors)
        forwarded = []
        for w in alive:
            sent = self.transcript.round_messages[(r, w)]
            forwarded.append(
                ForwardedShare(
                    w,
                    dict(sent.ciphertexts)[recipient],
                    sent.next_mask_public,
                    sent.next_cipher_public,
                    sent.next_signature,
                )
            )
        return SessionUnmaskRequest(
            self.server.session.session_id,
            recipient,
            r,
            alive,
            tuple(w for w in live if w not in survivors),
            tuple(forwarded),
            tuple(sorted((signatures or {}).items())),
        )

    def ask(self, recipient: int, message: Message) -> Message | None:
        """Send one hand-made message; the answer is recorded (a refusal too)."""
        client = self.clients[recipient]
        try:
            answer = client.receive(message.encode())
        except ClientAbort as exc:
            self.refusals[recipient] = exc.reason
            return None
        if isinstance(client.state, Left):
            self.refusals.setdefault(recipient, client.state.reason)
        if answer is not None:
            self.record(recipient, answer)
        return answer

"""A coordinator that lies in a session that spans rounds, over the real gRPC schema, against
real ``secagg join`` processes.

An honest ``SessionServer`` computes what an honest coordinator would send; the test drives it
stage by stage and changes what it likes before a client sees it (the ``lie`` of ``deliver``,
the models of ``open``, the round messages ``open`` withholds from the server, requests made by
hand with ``request``). The frames are exactly the service's: the set-up's configuration in a
``Task``, each round's opening (round 1's ``PeerSetupShares``, then ``RoundTask``) in a
``SessionTask`` with the round's model, everything else as ``protocol`` bytes. Everything the
clients send is kept in a ``Transcript`` (``tests.sessions.adversary``), which is what the
loot (``tests.sessions.loot.recovered``) gets: the inputs a server can open from what it was
sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.protocol.codec import Message
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.session.messages import (
    ForwardedShare,
    PeerSetupShares,
    RoundMessage,
    RoundTask,
    SessionConfig,
    SessionSignature,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
)
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms
from secagg.service.tasks import random_update, random_weight
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.wire import encode_model, task_digest
from tests.service.adversary import Adversary, Reply
from tests.sessions.adversary import Transcript
from tests.sessions.loot import recovered

# A lie: given the recipient and the honest message, what to send instead (None: nothing).
Lie = Callable[[int, Message], Message | None]


@dataclass
class Fleet:
    """Real client processes connected to the lying coordinator, for a whole module."""

    params: Params
    adversary: Adversary
    pki: dict[int, bytes]
    clients: tuple[int, ...]
    max_rounds: int  # the deployment's session_rounds, every client's cap
    max_seconds: int
    dim: int
    task_seed: int
    logs: Callable[[], str]
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def active(self) -> bool:
        return self.params.active

    def update(self, client: int, step: int) -> NDArray[np.float32]:
        return random_update(client, self.dim, step, self.task_seed)


class WireSession:
    """One session the attacker runs over the fleet. ``transcript`` holds what the clients
    sent; ``aborts[c]`` every abort reason client c sent, in order."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        cohort: tuple[int, ...] | None = None,
        max_rounds: int | None = None,
        max_seconds: int | None = None,
    ) -> None:
        self.fleet = fleet
        self.cohort = fleet.clients if cohort is None else cohort
        self.round_id = next(fleet.ids)  # the set-up's, and round 1's
        config = fleet.params.round_config(
            self.cohort, nonce=self.round_id.to_bytes(16, "big"), round_id=self.round_id
        )
        self.terms = SessionTerms.carrying(
            config,
            max_rounds=fleet.max_rounds if max_rounds is None else max_rounds,
            max_seconds=fleet.max_seconds if max_seconds is None else max_seconds,
        )
        self.config = self.terms.config
        self.server: SessionServer = MaskingScheme(
            fleet.params, pki=fleet.pki if fleet.active else None
        ).session_server(self.terms)
        self.transcript = Transcript()
        self.aborts: dict[int, list[str]] = {}
        self.answers: dict[tuple[int, int], bytes] = {}  # (client, round) -> its unmask answer
        self.signatures: dict[tuple[int, int], SessionSignature] = {}
        self.steps: dict[int, int] = {}  # round -> the step trained
        self.round_ids: dict[int, int] = {}  # round -> its envelope id
        self.openings: dict[tuple[int, int], pb.ServerFrame] = {}  # (client, round) -> frame
        self.sent: dict[tuple[int, object], bytes] = {}  # (client, stage) -> the last sent
        self._setup_shares: dict[int, Message] = {}

    @property
    def adversary(self) -> Adversary:
        return self.fleet.adversary

    # ----------------------------------------------------------------- frames
    def _collect(
        self, clients: Iterable[int], *, withhold: frozenset[int] = frozenset()
    ) -> dict[int, Reply | None]:
        """The next frame of each client: a protocol answer is kept (and fed to the server
        unless withheld), an abort's reason recorded."""
        replies = self.adversary.replies(sorted(clients))
        for c, reply in replies.items():
            if reply is None:
                continue
            if reply.abort is not None:
                self.aborts.setdefault(c, []).append(reply.abort)
                continue
            message = reply.message
            if isinstance(message, RoundMessage):
                self.transcript.round_messages[(message.round_number, c)] = message
            elif isinstance(message, SessionUnmaskResponse):
                self.transcript.answers.append(message)
                self.answers[(c, message.round_number)] = reply.frame.protocol
            elif isinstance(message, SessionSignature):
                self.signatures[(c, message.round_number)] = message
            if c not in withhold:
                self.server.receive(c, reply.frame.protocol)
        return replies

    def deliver(
        self, outgoing: Mapping[int, Message], lie: Lie | None = None
    ) -> dict[int, Reply | None]:
        """Send each message (after the lie) as protocol bytes; collect the answers."""
        sent = []
        for c, message in sorted(outgoing.items()):
            told = message if lie is None else lie(c, message)
            if told is None:
                continue
            self.adversary.send(c, told)
            self.sent[(c, told.STAGE)] = told.encode()
            sent.append(c)
        return self._collect(sent)

    # ----------------------------------------------------------------- the set-up
    def set_up(self) -> None:
        """The configuration, commit, reveal, advertise and share stages, honestly; the set-up
        shares wait to open round 1."""
        self.adversary.drain(self.cohort)
        config = SessionConfig.of(self.terms).encode()
        for c in self.cohort:
            self.adversary.send_frame(
                c, pb.ServerFrame(task=pb.Task(round_id=self.round_id, round_config=config))
            )
        self.server.start()
        self._collect(self.cohort)
        while True:
            outgoing = self.server.close_stage()
            if self.server.between_rounds:
                self._setup_shares = dict(outgoing)
                return
            self.deliver(outgoing)

    # ----------------------------------------------------------------- a round
    def open(
        self,
        *,
        withhold: Iterable[int] = (),
        models: Mapping[int, bytes] | None = None,
        misnamed: Iterable[int] = (),
        to: Iterable[int] | None = None,
    ) -> dict[int, Reply | None]:
        """Open the next round on the zero model at a fresh step and collect the members'
        round messages. ``models[c]``: the model client c is sent instead (its opening names
        that model's digest, or for ``misnamed`` the round's own); the round messages of
        ``withhold`` are kept by the attacker and never reach the server (it counts them as
        dropped); only ``to`` are sent their task (default: every member)."""
        first = bool(self._setup_shares)
        round_id = self.round_id if first else next(self.fleet.ids)
        step = round_id
        model = encode_model(np.zeros(self.fleet.dim, dtype=np.float32))
        task = task_digest(model, step)
        outgoing = self.server.open_round(task)
        r = self.server.round_number
        self.steps[r], self.round_ids[r] = step, round_id
        self.transcript.members[r] = dict(self.server.members)
        self.transcript.contexts[r] = self.server.context
        targets = set(outgoing if to is None else to)
        for c, message in sorted(outgoing.items()):
            if c not in targets:
                continue
            sent_model = (models or {}).get(c, model)
            digest = task if c in set(misnamed) else task_digest(sent_model, step)
            opening: Message
            if first:
                shares = self._setup_shares[c]
                assert isinstance(shares, PeerSetupShares)
                opening = PeerSetupShares(
                    shares.session_id, c, shares.ciphertexts, first_task=digest
                )
            else:
                assert isinstance(message, RoundTask)
                opening = RoundTask(message.session_id, c, message.round_number, digest)
            frame = pb.ServerFrame(
                session_task=pb.SessionTask(
                    round_id=round_id, round_task=opening.encode(), model=sent_model, step=step
                )
            )
            self.openings[(c, r)] = frame
            self.adversary.send_frame(c, frame)
        self._setup_shares = {}
        return self._collect(targets, withhold=frozenset(withhold))

    def close(self) -> dict[int, Message]:
        """Close the stage: what an honest coordinator sends next (``RoundAborted`` if it
        cannot go on)."""
        return self.server.close_stage()

    def finish(self, lie: Lie | None = None) -> None:
        """The rest of the round, honest but for ``lie`` on every message."""
        while True:
            outgoing = self.close()
            if self.server.between_rounds:
                return
            self.deliver(outgoing, lie)

    def round(self) -> None:
        """One honest round, then its end."""
        self.open()
        self.finish()
        self.end()

    def end(self, completed: bool = True) -> None:
        """The round's end, as the coordinator says it (to every member of the round)."""
        r = self.server.round_number
        included = set(self.server.result.included) if completed else set()
        self.adversary.end_round(self.transcript.members[r], self.round_ids[r], included)

    # ----------------------------------------------------------------- made by hand
    def request(
        self,
        recipient: int,
        survivors: Iterable[int],
        *,
        round_number: int | None = None,
        signatures: Mapping[int, bytes] | None = None,
    ) -> SessionUnmaskRequest:
        """The unmask request an honest-looking coordinator would send ``recipient`` if round
        ``round_number``'s survivor set were ``survivors``: its live neighbours split by it,
        each survivor's ciphertext to it and next-round keys, ``signatures`` as the
        certificate."""
        alive = set(survivors)
        r = self.server.round_number if round_number is None else round_number
        live = sorted(self.transcript.members[r][recipient].live)
        kept = tuple(w for w in live if w in alive)
        forwarded = []
        for w in kept:
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
            kept,
            tuple(w for w in live if w not in alive),
            tuple(forwarded),
            tuple(sorted((signatures or {}).items())),
        )

    def neighbours(self, client: int, round_number: int | None = None) -> tuple[int, ...]:
        r = self.server.round_number if round_number is None else round_number
        return tuple(sorted(self.transcript.members[r][client].live))

    # ----------------------------------------------------------------- the loot
    def loot(self) -> dict[tuple[int, int], NDArray[np.uint64]]:
        """Every (client, round) whose input the attacker can open from what it was sent."""
        return recovered(self.transcript, self.config)

    def opens(self, vector: NDArray[np.uint64], client: int, round_number: int) -> bool:
        """Is ``vector`` the client's input of that round (its update, within the
        quantisation bound, and its weight)?"""
        quantizer = self.fleet.params.quantizer
        if int(vector[-1]) != random_weight(client):
            return False
        values = quantizer.decode(vector)
        update = self.fleet.update(client, self.steps[round_number])
        return bool(np.max(np.abs(values - update)) <= quantizer.error_bound())

"""Sessions that span rounds in the service (docs/SESSIONS.md): what both ends of a masking
deployment fix for a session, the coordinator's side of one session as the round engine drives
it, one ledger round at a time, and what a client checks of a session before it takes part.

A session is set up once over the connected cohort (the one-shot round's commit, reveal and
advertise stages, then the set-up shares), then runs rounds of two client messages each (three
in active mode) until it has run ``session_rounds`` rounds, lived ``session_seconds``, or the
protocol says it needs a new set-up (``SessionServer.needs_setup``: a member below ``k_min``
live neighbours, fewer members than the minimum cohort), or a round aborts. A coordinator that
starts has no session: its first round sets one up, and the clients, who find a new set-up,
leave any session they were in (rule S12).

The round engine (``secagg.protocol.runner.RoundRun``) drives one ledger round at a time
through the protocol's ``SessionRound`` (``secagg.schemes.masking.session.round``): a
session's first round runs the set-up's stages, and its set-up shares open round 1. Round 1's
row in the ledger holds the set-up's stages too (its cost is there to read); the rows of
rounds 2 onwards hold their masked-input, consistency and unmask stages only. The message
that opens a round (``RoundTask``, or round 1's ``PeerSetupShares``) travels with the round's
model, in a ``SessionTask`` frame.

Both ends read the session's caps from the same deployment file (``[coordinator]
session_rounds`` and ``session_seconds``): the coordinator runs sessions of at most that
many rounds and seconds, and a client refuses one that may run longer (S12), whose cohort's
configuration its deployment refuses (the one-shot policy, ``ClientPolicy``), or whose
``k_min`` is below the one it computes itself (S5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from secagg.errors import AbortReason, ClientAbort, DecodeError, UsageError
from secagg.hazmat import prg
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import Randomness
from secagg.protocol.codec import MAGIC, Message
from secagg.protocol.stages import Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.policy import ClientPolicy
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.messages import PeerSetupShares, RoundTask
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = ["SessionSide", "opening", "opens_training"]


def opens_training(message: Message) -> bool:
    """A message that opens a session's round (a ``RoundTask``, or round 1's
    ``PeerSetupShares``): the one a session's round sends in its masked-input stage, which the
    client answers with its masked input. The service sends it with the round's model."""
    return message.STAGE is Stage.MASKED_INPUT


def opening(data: bytes) -> tuple[Message, int, bytes]:
    """The message that opens a session's round, read from its bytes, with the round's number
    and the task digest it names; ``DecodeError`` for anything else."""
    tag = data[len(MAGIC) + 1] if len(data) > len(MAGIC) + 1 else None
    if tag == RoundTask.TAG:
        task = RoundTask.decode(data)
        return task, task.round_number, task.task
    if tag == PeerSetupShares.TAG:
        shares = PeerSetupShares.decode(data)
        if shares.first_task:
            return shares, 1, shares.first_task
    raise DecodeError("not a message that opens a session's round")


@dataclass(frozen=True)
class SessionSide:
    """A masking deployment's sessions, on one side: the parameters, the PKI, the caps both
    ends read from the deployment file and, on a client, its identity (active mode signs)."""

    params: Params
    max_rounds: int
    max_seconds: int
    pki: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    allowed: frozenset[int] | None = None
    identity: Ed25519SigningKey | None = field(default=None, repr=False)
    apply_masks: prg.ApplyMasks = field(default=prg.apply_masks, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_rounds < 1 or self.max_seconds < 1:
            raise UsageError("a session runs at least one round and lives at least a second")

    def _scheme(self, client_id: int | None = None) -> MaskingScheme:
        """Masking under this deployment: its encoding, PKI and survivor rule (from this
        side's own parameters, never from what the other side sends), with the client's
        identity on a client."""
        identities = (
            {} if client_id is None or self.identity is None else {client_id: self.identity}
        )
        return MaskingScheme(
            self.params,
            identities=identities,
            pki=dict(self.pki),
            allowed=self.allowed,
            apply_masks=self.apply_masks,
        )

    @staticmethod
    def least_live_neighbours(config: RoundConfig) -> int:
        """``k_min`` for a cohort's configuration, as both ends compute it: the threshold, and
        in active mode more than half the degree (docs/SESSIONS.md S5, A6)."""
        return SessionTerms.carrying(config).min_live_neighbours

    # ----------------------------------------------------------------- the coordinator
    def terms(self, cohort: tuple[int, ...], *, nonce: bytes, round_id: int) -> SessionTerms:
        """A new session over ``cohort``: the deployment's round configuration for it, carrying
        the deployment's caps."""
        config = self.params.round_config(cohort, nonce=nonce, round_id=round_id)
        return SessionTerms.carrying(
            config,
            max_rounds=self.max_rounds,
            max_seconds=self.max_seconds,
            min_live_neighbours=self.least_live_neighbours(config),
        )

    def server(self, terms: SessionTerms) -> SessionServer:
        return self._scheme().session_server(terms)

    # ----------------------------------------------------------------- a client
    def check(self, terms: SessionTerms, client_id: int) -> None:
        """Refuse (``ClientAbort``) a session this client must not take part in: its cohort's
        configuration as the one-shot policy judges it, caps above the deployment's, a
        ``k_min`` below the one this client computes."""
        ClientPolicy(self.params, self.allowed).check(terms.config, client_id)
        if terms.max_rounds > self.max_rounds:
            raise ClientAbort(
                AbortReason.SESSION_EXPIRED,
                f"a session of {terms.max_rounds} rounds; the deployment allows "
                f"{self.max_rounds} (session_rounds)",
            )
        if terms.max_seconds > self.max_seconds:
            raise ClientAbort(
                AbortReason.SESSION_EXPIRED,
                f"a session of {terms.max_seconds} s; the deployment allows "
                f"{self.max_seconds} s (session_seconds)",
            )
        least = self.least_live_neighbours(terms.config)
        if terms.min_live_neighbours < least:
            raise ClientAbort(
                AbortReason.WEAK_GRAPH,
                f"k_min {terms.min_live_neighbours}; this client computes {least}",
            )

    def client(
        self, terms: SessionTerms, client_id: int, rng: Randomness | None = None
    ) -> SessionClient:
        """This client's part in a session ``check`` accepted; its secrets fresh from the
        operating system (``rng`` only for tests)."""
        return self._scheme(client_id).session_client(terms, client_id, rng)

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

The round engine (``secagg.protocol.runner.RoundRun``) drives one ledger round at a time:
``SessionRound`` presents a session's round, and the set-up before its first one, as a round
server. Round 1's row in the ledger holds the set-up's stages too (its cost is there to read);
the rows of rounds 2 onwards hold their masked-input, consistency and unmask stages only.

Both ends read the session's caps from the same deployment file (``[coordinator]
session_rounds`` and ``session_seconds``): the coordinator runs sessions of at most that
many rounds and seconds, and a client refuses one that may run longer (S12), whose cohort's
configuration its deployment refuses (the one-shot policy, ``ClientPolicy``), or whose
``k_min`` is below the one it computes itself (S5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from secagg.errors import AbortReason, ClientAbort, DropReason, RoundAborted, UsageError
from secagg.hazmat import prg
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import Randomness, SystemRandomness
from secagg.protocol.codec import Message
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Drop, Stage
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.graph import SurvivorRule
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.policy import ClientPolicy
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.messages import RoundTask
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = ["SessionRound", "SessionSide", "carries_model"]


def carries_model(message: Message) -> bool:
    """A session round's task: the service sends it with the round's model (a SessionTask
    frame)."""
    return message.TAG == RoundTask.TAG


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

    @property
    def _scheme(self) -> MaskingScheme:
        return MaskingScheme(self.params, pki=dict(self.pki), allowed=self.allowed)

    def _rule(self, config: RoundConfig) -> SurvivorRule | None:
        """What an active round's survivor set must satisfy, from this side's own parameters
        (never from the configuration the other side sends)."""
        if not config.active:
            return None
        return self.params.survivor_rule(len(config.client_ids), config.degree)

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
        config = terms.config
        return SessionServer(
            terms,
            pki=dict(self.pki) if config.active else None,
            apply_masks=self.apply_masks,
            encoding=self._scheme.encoding,
            survivor_rule=self._rule(config),
        )

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
        config = terms.config
        return SessionClient(
            terms,
            client_id,
            SystemRandomness() if rng is None else rng,
            identity=self.identity,
            pki=dict(self.pki),
            encoding=self._scheme.encoding,
            survivor_rule=self._rule(config),
        )


class SessionRound:
    """One ledger round of a session, as a round server the round engine drives: the
    session's set-up first if ``set_up``, then round r on the model whose digest is ``task``.

    The round engine drops a client the transport lost (disconnected, left with a reason of
    its own) through ``drop``; the session's server learns of it as a client that did not
    answer when the stage closes, and this round's record keeps the transport's reason. The
    set-up's last messages (``PeerSetupShares``, which nothing answers) are the ``preface``
    of round 1's tasks: the driver sends them to each client just before its task.
    """

    def __init__(self, server: SessionServer, task: bytes, *, number: int, set_up: bool) -> None:
        self.session = server
        self.task = task
        self.number = number  # the round's number in the session
        self.set_up = set_up
        self._opened = not set_up  # round r's tasks are out
        self._done = False
        self._outside: dict[int, Drop] = {}  # the transport's drops
        self._earlier: dict[int, Drop] = {}  # the set-up's drops, once round 1 opens
        self._preface: dict[int, Message] = {}

    # ----------------------------------------------------------------- the engine's view
    @property
    def stage(self) -> Stage:
        return self.session.stage

    @property
    def done(self) -> bool:
        return self._done or self.session.ended is not None

    @property
    def drops(self) -> Mapping[int, Drop]:
        return {**self._earlier, **self.session.drops, **self._outside}

    @property
    def attempt(self) -> int | None:
        return None

    @property
    def threshold_margin(self) -> int | None:
        return None

    def start(self) -> dict[int, Message]:
        if self.set_up:
            return self.session.start()
        return self.session.open_round(self.task)

    def receive(self, sender: int, data: Message | bytes) -> None:
        if sender not in self._outside:
            self.session.receive(sender, data)

    def waiting_for(self) -> frozenset[int]:
        return self.session.waiting_for() - self._outside.keys()

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        if client_id not in self.drops:
            self._outside[client_id] = Drop(client_id, self.stage, reason, detail)

    def close_stage(self) -> dict[int, Message]:
        outgoing = self.session.close_stage()
        if not self.session.between_rounds:
            return outgoing
        if self._opened:
            self._done = True
            return outgoing
        # The set-up is done: its shares go out with round 1's tasks.
        self._earlier = {**self.session.drops, **self._outside}
        self._preface = dict(outgoing)
        why = self.session.needs_setup()
        if why is not None:  # (its close prunes to k_min and the minimum cohort)
            self._done = True
            raise RoundAborted(Stage.SHARE.value, f"the set-up left no session: {why}")
        self._opened = True
        return self.session.open_round(self.task)

    def aggregate(self) -> Aggregate:
        return self.session.aggregate()

    def take_preface(self) -> dict[int, Message]:
        """What each client is sent before this stage's message (the set-up's shares before
        round 1's task), once."""
        preface, self._preface = self._preface, {}
        return preface

"""Sessions that span rounds in the service (docs/SESSIONS.md, docs/SERVICE_SESSIONS.md): what
the coordinator fixes for a session of a masking deployment.

A session is set up once over the connected cohort (the one-shot round's commit, reveal and
advertise stages, then the set-up shares), then runs rounds of two client messages each (three
in active mode) until it has run ``session_rounds`` rounds, lived ``session_seconds``, or the
protocol says it needs a new set-up (``SessionServer.needs_setup``: a member below ``k_min``
live neighbours, fewer members than the minimum cohort), or a round aborts. A coordinator that
starts has no session: its first round sets one up, and the clients, who find a new set-up,
leave any session they were in (rule S12).

The round engine (``secagg.protocol.runner.RoundRun``) drives one ledger round at a time
through the protocol's ``SessionRound`` (``secagg.schemes.masking.session.round``): a
session's first round runs the set-up's stages, and its set-up shares open round 1. The
message that opens a round (``RoundTask``, or round 1's ``PeerSetupShares``: its
``opens_training``) travels with the round's model, in a ``SessionTask`` frame.

Both ends read the session's caps from the same deployment file (``[coordinator]
session_rounds`` and ``session_seconds``): the coordinator runs sessions of at most that
many rounds and seconds, and a client refuses one that may run longer (its client session's
``offer_session``, S12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from secagg.errors import UsageError
from secagg.hazmat import prg
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = ["SessionSide"]


@dataclass(frozen=True)
class SessionSide:
    """A masking deployment's sessions on the coordinator: its parameters, the allow-list's
    keys (active mode checks signatures against them), its caps and its mask applier."""

    params: Params
    max_rounds: int
    max_seconds: int
    pki: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    apply_masks: prg.ApplyMasks = field(default=prg.apply_masks, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_rounds < 1 or self.max_seconds < 1:
            raise UsageError("a session runs at least one round and lives at least a second")

    def terms(self, cohort: tuple[int, ...], *, nonce: bytes, round_id: int) -> SessionTerms:
        """A new session over ``cohort``: the deployment's round configuration for it, carrying
        the deployment's caps (k_min: the protocol's least, which a client also requires)."""
        config = self.params.round_config(cohort, nonce=nonce, round_id=round_id)
        return SessionTerms.carrying(
            config, max_rounds=self.max_rounds, max_seconds=self.max_seconds
        )

    def server(self, terms: SessionTerms) -> SessionServer:
        scheme = MaskingScheme(self.params, pki=dict(self.pki), apply_masks=self.apply_masks)
        return scheme.session_server(terms)

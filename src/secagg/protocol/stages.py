"""The stages of a round: one enum, used by every scheme's server, every driver, drop
schedules, the ledger, reports and tests; the stage a client message answers (its own
declaration); why a client that misses a stage is dropped; and the record of a client the
server stopped waiting for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from secagg.errors import DropReason, UsageError
from secagg.protocol.codec import Direction, Message

__all__ = [
    "DROP_STAGES",
    "MISSED_REASONS",
    "SESSION_AGREEMENT",
    "Drop",
    "Stage",
    "missed",
    "stage_answered_by",
]


class Stage(StrEnum):
    """Every stage of a round, and the two ends. Masking runs commit .. unmask (``commit``
    and ``reveal`` up to three times); the plaintext and CKKS schemes run ``upload`` (and
    CKKS ``decrypt``)."""

    UPLOAD = "upload"
    DECRYPT = "decrypt"
    COMMIT = "commit"
    REVEAL = "reveal"
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED_INPUT = "masked-input"
    CONSISTENCY = "consistency"  # active mode only
    UNMASK = "unmask"
    COMPLETED = "completed"
    ABORTED = "aborted"


# Where a client can fail to answer, in order; the names are ``Stage`` values. Each scheme
# runs some of them (``Scheme.stages``). Here, not in the simulator, so that the command
# line's help can name them without importing a round.
DROP_STAGES = tuple(s.value for s in Stage if s not in (Stage.COMPLETED, Stage.ABORTED))

# The stages before the session is agreed: their messages carry the config id.
SESSION_AGREEMENT = frozenset({Stage.COMMIT, Stage.REVEAL})

# Why a client that misses a stage's deadline is dropped: ``missed-<stage>`` for every stage a
# round passes through, looked up once here, so a stage without its reason fails on import.
_MISSED: dict[Stage, DropReason] = {
    stage: DropReason(f"missed-{stage.value}")
    for stage in Stage
    if stage not in (Stage.COMPLETED, Stage.ABORTED)
}


# Every reason a missed deadline gives, one per stage that runs.
MISSED_REASONS: frozenset[DropReason] = frozenset(_MISSED.values())


def missed(stage: Stage) -> DropReason:
    """The reason a server gives a client that sent nothing before ``stage`` closed."""
    return _MISSED[stage]


def stage_answered_by(message: Message) -> Stage:
    """The stage a client message belongs to (its own declaration)."""
    if message.DIRECTION is not Direction.UP:
        raise UsageError(f"{type(message).__name__} is not a client message")
    return message.STAGE


@dataclass(frozen=True)
class Drop:
    """A client the server stopped waiting for, when and why."""

    client_id: int
    stage: Stage
    reason: DropReason
    detail: str = ""

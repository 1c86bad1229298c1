"""The stages of a round: one enum, used by the server, every driver, drop schedules, the
ledger, reports and tests; and which client message answers each stage."""

from __future__ import annotations

from enum import StrEnum

from secagg.errors import UsageError
from secagg.protocol.messages import (
    AdvertiseKeys,
    Commitment,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    Message,
    Reveal,
    UnmaskResponse,
)

__all__ = ["CLIENT_MESSAGE", "SESSION_AGREEMENT", "Stage", "stage_answered_by"]


class Stage(StrEnum):
    """Every stage of a round, in order (``commit`` and ``reveal`` may run up to three
    times), and the two ends."""

    COMMIT = "commit"
    REVEAL = "reveal"
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED_INPUT = "masked-input"
    CONSISTENCY = "consistency"  # active mode only
    UNMASK = "unmask"
    COMPLETED = "completed"
    ABORTED = "aborted"


# The stages before the session is agreed: their messages carry the config id.
SESSION_AGREEMENT = frozenset({Stage.COMMIT, Stage.REVEAL})

# What a client sends in each stage.
CLIENT_MESSAGE: dict[Stage, type[Message]] = {
    Stage.COMMIT: Commitment,
    Stage.REVEAL: Reveal,
    Stage.ADVERTISE: AdvertiseKeys,
    Stage.SHARE: EncryptedShares,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.CONSISTENCY: ConsistencySignature,
    Stage.UNMASK: UnmaskResponse,
}


def stage_answered_by(message: Message) -> Stage:
    """The stage a client message belongs to."""
    for stage, kind in CLIENT_MESSAGE.items():
        if isinstance(message, kind):
            return stage
    raise UsageError(f"{type(message).__name__} is not a client message")

"""The stages of a round: one enum, used by every scheme's server, every driver, drop
schedules, the ledger, reports and tests; which masking message answers each stage; and the
record of a client the server stopped waiting for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from secagg.errors import DropReason, UsageError
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

__all__ = ["CLIENT_MESSAGE", "SESSION_AGREEMENT", "Drop", "Stage", "stage_answered_by"]


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


@dataclass(frozen=True)
class Drop:
    """A client the server stopped waiting for, when and why."""

    client_id: int
    stage: Stage
    reason: DropReason
    detail: str = ""

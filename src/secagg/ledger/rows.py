"""The ledger's rows as Python values: a round (``LedgerRound``), a dropped client
(``DropRecord``, said in one line by ``describe_drops``), and how a stored row becomes one.

CHECK constraints guard every write, but SQLite does not checksum its pages: a stored row
that is not what was written (a damaged page, a hand edit) is a ``DecodeError`` naming the
round, never a traceback or a wrong value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.dp.round_privacy import RoundPrivacy
from secagg.errors import DecodeError, UsageError
from secagg.protocol.runner import RoundKind, RoundOutcome

__all__ = [
    "HASH_BYTES",
    "PRIVACY_COLUMNS",
    "ROUND_COLUMNS",
    "SESSION_COLUMNS",
    "DropRecord",
    "LedgerRound",
    "RoundKind",
    "decode_aggregate",
    "decode_round",
    "describe_drops",
]

HASH_BYTES = 32  # a session id and a task hash are SHA-256 digests


@dataclass(frozen=True)
class DropRecord:
    """One client the server stopped waiting for: at which stage, why, and any detail."""

    client_id: int
    stage: str
    reason: str
    detail: str


# Dropped clients named in one line (a round's line, its log line, ``secagg rounds``); the
# ledger itself keeps every drop.
_NAMED_DROPS = 10


def describe_drops(drops: Sequence[DropRecord]) -> str:
    """Each dropped client, its stage, its typed reason and the detail, e.g. "dropped: client 3
    at advertise (disconnected: connection lost), client 5 at commit (client-aborted:
    update-failed: the update callback raised ValueError)": the first ten clients, then how
    many more. Empty when nobody dropped. (The round's line, its log line and ``secagg
    rounds`` all say it so.)"""
    if not drops:
        return ""
    named = [
        f"client {d.client_id} at {d.stage} ({d.reason}: {d.detail})"
        if d.detail
        else f"client {d.client_id} at {d.stage} ({d.reason})"
        for d in drops[:_NAMED_DROPS]
    ]
    if len(drops) > _NAMED_DROPS:
        named.append(f"and {len(drops) - _NAMED_DROPS} more (the ledger lists them)")
    return "dropped: " + ", ".join(named)


@dataclass(frozen=True)
class LedgerRound:
    """One round as the ledger holds it. ``cohort`` and ``included`` are in ascending order.

    ``session_round`` is the round's number in its session (None: a one-shot round); round 1
    of a session also ran the session's set-up, whose stages are among its ``stage_seconds``.
    The rounds of one session share their ``session_id``.
    """

    round_id: int
    session_id: bytes
    task_hash: bytes
    protocol: str
    cohort: tuple[int, ...]
    degree: int
    threshold: int
    dim: int
    started_at: float
    finished_at: float | None
    outcome: RoundOutcome
    abort_reason: str | None
    included: tuple[int, ...]
    # A read-only mapping, in the order the stages were recorded; left out of the hash so
    # that records stay hashable like every other frozen dataclass.
    stage_seconds: Mapping[str, float] = field(hash=False)
    drops: tuple[DropRecord, ...]
    upload_bytes_per_client: float | None
    download_bytes_per_client: float | None
    has_aggregate: bool
    total_weight: int | None = None  # the weight behind the aggregate (completed rounds only)
    privacy: RoundPrivacy | None = None  # distributed DP (completed rounds of a DP deployment)
    session_round: int | None = None  # its number in a session; None: a one-shot round

    @property
    def kind(self) -> RoundKind:
        return RoundKind.of(self.session_round)

    @property
    def set_up(self) -> bool:
        """The round also ran a set-up: every one-shot round, and a session's first."""
        return self.session_round is None or self.session_round == 1

    def describe_kind(self) -> str:
        """``one-shot``, ``session round 1 (with its set-up)``, ``session round 4``."""
        if self.session_round is None:
            return RoundKind.ONE_SHOT.value
        with_set_up = " (with its set-up)" if self.session_round == 1 else ""
        return f"session round {self.session_round}{with_set_up}"


# A round's row, in the order ``decode_round`` reads it: the store's rounds query selects
# these from ``rounds AS r`` and ``aggregates AS a``, then the privacy record's columns from
# ``dp_rounds AS d`` (or as many NULLs, from a ledger of a version before privacy records),
# then the session's from ``session_rounds AS s`` (NULL before version 3: every round of such
# a ledger was one-shot).
ROUND_COLUMNS = (
    "r.round_id", "r.session_id", "r.task_hash", "r.protocol", "r.degree", "r.threshold",
    "r.dim", "r.started_at", "r.finished_at", "r.outcome", "r.abort_reason",
    "r.upload_bytes_per_client", "r.download_bytes_per_client",
    "a.round_id IS NOT NULL", "a.total_weight",
)  # fmt: skip
PRIVACY_COLUMNS = (
    "d.series", "d.mechanism", "d.delta", "d.epsilon", "d.epsilon_spent", "d.epsilon_target",
    "d.target_rounds",
)  # fmt: skip
SESSION_COLUMNS = ("s.round_number",)


def decode_round(
    row: tuple[Any, ...],
    cohorts: Mapping[int, list[int]],
    included: Mapping[int, list[int]],
    stages: Mapping[int, dict[str, float]],
    drops: Mapping[int, list[DropRecord]],
) -> LedgerRound:
    """The round of one row (``ROUND_COLUMNS``, ``PRIVACY_COLUMNS``, ``SESSION_COLUMNS``),
    with its cohort, included clients, stage timings and drops, each by round id;
    ``DecodeError`` naming the round if what is stored is not a round."""
    try:
        return _round(row, cohorts, included, stages, drops)
    except (TypeError, ValueError, UsageError) as exc:
        raise DecodeError(f"round {row[0]!r} in the ledger is corrupt: {exc}") from None


def _round(
    row: tuple[Any, ...],
    cohorts: Mapping[int, list[int]],
    included: Mapping[int, list[int]],
    stages: Mapping[int, dict[str, float]],
    drops: Mapping[int, list[DropRecord]],
) -> LedgerRound:
    (
        rid,
        session_id,
        task_hash,
        protocol,
        degree,
        threshold,
        dim,
        started_at,
        finished_at,
        outcome,
        abort_reason,
        up,
        down,
        has_aggregate,
        total_weight,
        *rest,
    ) = row
    privacy = rest[: len(PRIVACY_COLUMNS)]
    (session_round,) = rest[len(PRIVACY_COLUMNS) :]
    if session_round is not None and (type(session_round) is not int or session_round < 1):
        raise ValueError(f"its session round is {session_round!r}")
    return LedgerRound(
        round_id=rid,
        session_id=_stored_hash(session_id, "session id"),
        task_hash=_stored_hash(task_hash, "task hash"),
        protocol=protocol,
        cohort=tuple(cohorts.get(rid, ())),
        degree=degree,
        threshold=threshold,
        dim=dim,
        started_at=started_at,
        finished_at=finished_at,
        outcome=RoundOutcome(outcome),
        abort_reason=abort_reason,
        included=tuple(included.get(rid, ())),
        stage_seconds=MappingProxyType(stages.get(rid, {})),
        drops=tuple(drops.get(rid, ())),
        upload_bytes_per_client=up,
        download_bytes_per_client=down,
        has_aggregate=bool(has_aggregate),
        total_weight=total_weight,
        privacy=None if privacy[0] is None else RoundPrivacy(*privacy),
        session_round=session_round,
    )


def _stored_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        size = len(value) if isinstance(value, bytes | str) else type(value).__name__
        raise ValueError(f"its {what} is not {HASH_BYTES} bytes ({size})")
    return value


def decode_aggregate(
    round_id: int, *, dim: int, present: bool, length: object, digest: object, data: object
) -> NDArray[np.float64]:
    """The aggregate of completed round ``round_id`` as it was committed, from its stored
    length, digest and bytes (``present``: whether its row exists at all); ``DecodeError``
    if what is stored is not the aggregate that was written."""
    if not present:
        raise DecodeError(f"round {round_id} completed but its aggregate is missing")
    if not isinstance(data, bytes) or length != dim or len(data) != 8 * dim:
        size = len(data) if isinstance(data, bytes | str) else None
        raise DecodeError(
            f"round {round_id}: stored aggregate of {size} bytes, expected {dim} float64"
        )
    if hashlib.sha256(data).digest() != digest:
        raise DecodeError(f"round {round_id}: stored aggregate does not match its digest")
    return np.frombuffer(data, dtype="<f8").astype(np.float64)

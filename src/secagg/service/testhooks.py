"""Test-only: a coordinator that holds its round at a chosen point, so that a test can stop or
kill a real ``secagg serve`` process exactly there.

Inert in production: nothing happens unless the environment variable ``SECAGG_TEST_HOLD``
is set when the coordinator starts, and no operator should ever set it (a held round never
ends by itself). Its value is a comma-separated list of points:

- ``task``: the round is in the ledger and its cohort chosen; no task has been sent yet;
- ``training``: every task of the round's first stage has been written to its client (the
  clients are training);
- a stage's name (``commit``, ``reveal``, ``advertise``, ``share``, ``masked-input``,
  ``consistency``, ``unmask``, ``upload``, ``decrypt``): every client still in the round has
  answered that stage, and the coordinator has not closed it yet.

A point may name the round it holds: ``masked-input@3`` holds round 3 (its id in the ledger)
at masked-input and no other round (a session's later round, say).

At the first of these points a round reaches, the coordinator logs one line (``HELD_LINE``,
which a test waits for in its log) and waits for ever: the test then sends the signal it is
testing (SIGINT, SIGTERM, SIGKILL), which ends the wait as it would end any other.
"""

from __future__ import annotations

import asyncio
import logging
import os

__all__ = ["HELD_LINE", "HOLD_ENV", "HOLD_POINTS", "hold", "hold_points", "holds"]

log = logging.getLogger("secagg.coordinator")

HOLD_ENV = "SECAGG_TEST_HOLD"
HELD_LINE = "held by SECAGG_TEST_HOLD"
HOLD_POINTS = frozenset(
    {
        "task",
        "training",
        "commit",
        "reveal",
        "advertise",
        "share",
        "masked-input",
        "consistency",
        "unmask",
        "upload",
        "decrypt",
    }
)


def hold_points() -> frozenset[str]:
    """The points named by ``SECAGG_TEST_HOLD`` (empty, as in production, when it is unset),
    each ``point`` or ``point@round``; an unknown name is ignored, so a typo holds nothing (the
    test waiting for it fails)."""
    value = os.environ.get(HOLD_ENV, "")
    named = (p.strip() for p in value.split(","))
    return frozenset(p for p in named if p.partition("@")[0] in HOLD_POINTS)


def holds(points: frozenset[str], point: str, round_id: int) -> bool:
    """Whether ``points`` hold round ``round_id`` at ``point``."""
    return bool(points) and (point in points or f"{point}@{round_id}" in points)


async def hold(round_id: int, point: str) -> None:
    """Log that round ``round_id`` is held at ``point`` and wait until cancelled."""
    log.warning("round %d: %s at %s", round_id, HELD_LINE, point)
    await asyncio.Event().wait()

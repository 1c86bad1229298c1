"""Waiting for an event in a test: the one module of ``tests/`` that reads a clock.

A test may wait for something to happen (a process prints a line, a round starts, a client
reconnects) and fail if it never does; it never measures how long anything took, since a
machine busy with other work makes every duration longer and a red suite that is red only
because the machine was busy teaches people to ignore red. ``tests/test_no_clocks.py``
refuses a clock anywhere else in ``tests/``, so a deadline here bounds only a hang: make it
generous (tens of seconds), never a claim about speed.

Only the standard library: the Flower tests import this from their own venv.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    predicate: Callable[[], object],
    what: str | Callable[[], str],
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
) -> None:
    """Return once ``predicate()`` is true; raise AssertionError naming ``what`` (a callable
    is asked then, so the message can show a log as it stands) if it is still false after
    ``timeout`` seconds. The predicate may itself raise (a process that exited while we
    waited for its line) to fail at once."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"waited {timeout:g} s for {what if isinstance(what, str) else what()}"
            )
        time.sleep(interval)

"""What the ledger's tests share: a round to write, a clock, SQLite itself, and a child
process where file permissions apply (as root too)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

import secagg
from secagg.dp.calibrate import DpConfig, DpPlan, calibrate
from secagg.ledger import Ledger, account_round
from tests.launcher import without_file_capabilities

SESSION = bytes(range(32))
TASK = bytes(range(100, 132))
COHORT = (3, 5, 8, 13, 21)
DIM = 6


class Clock:
    """A clock that ticks one second per reading, so timestamps are known exactly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _start(
    ledger: Ledger,
    round_id: int,
    *,
    cohort: tuple[int, ...] = COHORT,
    session_round: int | None = None,
) -> None:
    ledger.start_round(
        round_id=round_id,
        session_id=SESSION,
        task_hash=TASK,
        protocol="secagg+",
        cohort=cohort,
        degree=4,
        threshold=3,
        dim=DIM,
        session_round=session_round,
    )


def _aggregate(seed: int = 0) -> NDArray[np.float64]:
    # Thirds and sevenths: values float32 cannot hold, so exactness means float64 storage.
    return np.arange(1, DIM + 1, dtype=np.float64) / 3.0 + seed / 7.0


def _complete(
    ledger: Ledger, round_id: int, *, aggregate: NDArray[np.float64] | None = None
) -> None:
    ledger.complete_round(
        round_id,
        included=(3, 8, 13, 21),
        aggregate=_aggregate(round_id) if aggregate is None else aggregate,
        total_weight=40,
        upload_bytes_per_client=1234.5,
        download_bytes_per_client=678.0,
    )


@contextlib.contextmanager
def _raw(path: Path) -> Iterator[sqlite3.Connection]:
    """SQLite itself, in autocommit, closed on leaving (which checkpoints its log)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        yield raw


SRC = Path(secagg.__file__).resolve().parents[1]


_ATTEMPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from secagg.ledger import Ledger

    def attempt(label, action):
        try:
            result = action()
        except Exception as exc:
            print(label, type(exc).__name__, exc, sep="\\t")
        else:
            print(label, "ok", result, sep="\\t")

    """
)


def _unprivileged(script: str, *args: Path) -> subprocess.Popen[str]:
    """Start ``script`` where file permissions apply (as root too), with pipes to talk to it.

    ``attempt(label, action)`` prints one tab-separated line: label, outcome (``ok`` or the
    exception's class) and the result or message; a message of two lines would not parse.
    """
    command = [sys.executable, "-c", _ATTEMPT + textwrap.dedent(script), *map(str, args)]
    if os.geteuid() == 0:
        command = without_file_capabilities(command)
    try:
        return subprocess.Popen(
            command,
            env={"PYTHONPATH": str(SRC)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot give up root's file capabilities here: {exc}")


def _attempts(stdout: str) -> dict[str, tuple[str, str]]:
    results = {}
    for line in stdout.splitlines():
        label, outcome, detail = line.split("\t")
        results[label] = (outcome, detail)
    return results


def _as_unprivileged(script: str, *args: Path) -> dict[str, tuple[str, str]]:
    """Run ``script`` (see ``_unprivileged``) to its end and collect its attempts."""
    child = _unprivileged(script, *args)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    return _attempts(stdout)


def _one_line_naming(error: BaseException, path: Path) -> str:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    return message


def _plan(epsilon: float = 8.0) -> DpPlan:
    pytest.importorskip("dp_accounting")
    return calibrate(
        DpConfig(
            dim=DIM, l2_clip=1.0, bits=20, min_clients=3, max_clients=len(COHORT),
            delta=1e-5, target_epsilon=epsilon, rounds=4,
        )
    )  # fmt: skip


def _complete_dp(ledger: Ledger, round_id: int, plan: DpPlan, included: tuple[int, ...]) -> None:
    _start(ledger, round_id)
    ledger.complete_round(
        round_id,
        included=included,
        aggregate=_aggregate(round_id),
        total_weight=len(included),
        upload_bytes_per_client=100.0,
        download_bytes_per_client=50.0,
        privacy=account_round(ledger, plan, len(included)),
    )

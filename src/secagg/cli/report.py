"""What the ledger's and the coordinator's commands show and write: presentation, kept out
of the service (``secagg.cli.output`` says errors and lines).

- ``format_rounds_table`` and ``export_aggregate`` for ``secagg rounds``;
- ``round_line`` and ``round_json`` for ``secagg serve``'s report of each round;
- ``privacy_text``: a round's distributed-DP guarantee and the epsilon spent, in words.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table
from rich.text import Text

from secagg.dp.round_privacy import RoundPrivacy
from secagg.ledger import Ledger, LedgerRound, describe_drops
from secagg.protocol.runner import RoundOutcome
from secagg.service.files import check_writable, write_array

if TYPE_CHECKING:  # the coordinator (and gRPC) only where one runs
    from secagg.service.rounds import RoundSummary

__all__ = [
    "export_aggregate",
    "format_rounds_table",
    "privacy_json",
    "privacy_text",
    "round_json",
    "round_line",
]


_OUTCOME_STYLE = {
    RoundOutcome.RUNNING: "yellow",
    RoundOutcome.COMPLETED: "green",
    RoundOutcome.ABORTED: "red",
}


def privacy_text(privacy: RoundPrivacy) -> str:
    """``epsilon 0.84 for this sum, 2.1 spent of 8 over 10 rounds (delta 1e-05)``."""
    return (
        f"epsilon {privacy.epsilon:.3g} for this sum, {privacy.epsilon_spent:.3g} spent of "
        f"{privacy.epsilon_target:.3g} over {privacy.target_rounds} round"
        f"{'s' if privacy.target_rounds > 1 else ''} (delta {privacy.delta:g})"
    )


def privacy_json(privacy: RoundPrivacy | None) -> dict[str, Any]:
    """A round's distributed-DP figures as JSON fields (all None without DP)."""
    return {
        "epsilon": None if privacy is None else privacy.epsilon,
        "epsilon_spent": None if privacy is None else privacy.epsilon_spent,
        "epsilon_target": None if privacy is None else privacy.epsilon_target,
        "target_rounds": None if privacy is None else privacy.target_rounds,
        "delta": None if privacy is None else privacy.delta,
    }


def format_rounds_table(records: Sequence[LedgerRound]) -> Table:
    """The ledger as a table for ``secagg rounds``: one row per round. A ledger with
    distributed-DP rounds has two more columns: each round's epsilon (of the sum it revealed)
    and the epsilon spent so far, against the deployment's target."""
    dp = any(r.privacy is not None for r in records)
    # A ledger with sessions that span rounds says which kind each round was.
    sessions = any(r.session_round is not None for r in records)
    table = Table(title="secagg rounds")
    table.add_column("round", justify="right")
    if sessions:
        table.add_column("kind")
    table.add_column("outcome")
    table.add_column("cohort size", justify="right")
    table.add_column("included", justify="right")
    table.add_column("dropped")
    table.add_column("seconds", justify="right")
    table.add_column("up B/client", justify="right")
    if dp:
        table.add_column("epsilon", justify="right")
        table.add_column("spent (of target)", justify="right")
    table.add_column("reason", overflow="fold")
    for r in records:
        # Drops are recorded as they happen, so first appearance is the protocol's order.
        by_stage = Counter(d.stage for d in r.drops)
        dropped = ", ".join(f"{stage} {n}" for stage, n in by_stage.items()) or "-"
        cells: list[str | Text] = [
            str(r.round_id),
            *([r.describe_kind()] if sessions else []),
            Text(r.outcome.value, style=_OUTCOME_STYLE[r.outcome]),
            str(len(r.cohort)),
            str(len(r.included)) if r.outcome is RoundOutcome.COMPLETED else "-",
            dropped,
            f"{sum(r.stage_seconds.values()):.2f}" if r.stage_seconds else "-",
            "-" if r.upload_bytes_per_client is None else f"{r.upload_bytes_per_client:,.0f}",
        ]
        if dp:
            p = r.privacy
            cells += (
                ["-", "-"]
                if p is None
                else [
                    f"{p.epsilon:.3g}",
                    f"{p.epsilon_spent:.3g} ({p.epsilon_target:.3g} over {p.target_rounds})",
                ]
            )
        # The reason is text from the ledger: never markup. A completed round's reason is
        # who dropped, where and why.
        reason = r.abort_reason if r.outcome is RoundOutcome.ABORTED else describe_drops(r.drops)
        table.add_row(*cells, Text(reason or ""))
    if dp:
        table.caption = (
            "epsilon: the (epsilon, delta) guarantee of the sum the round revealed; spent: "
            "composed over the completed rounds of the same DP configuration"
        )
    return table


def export_aggregate(ledger: Ledger, round_id: int, path: Path) -> None:
    """Write a completed round's aggregate to ``path`` as a float32 ``.npy`` file.

    The path is checked before the ledger is read, and the file is written beside the
    target and renamed into place, so ``path`` never holds half a file and nothing is left
    behind when writing fails. ``UsageError``/``DecodeError`` as for ``Ledger.aggregate``;
    ``ConfigurationError``, one line naming the path, when the file cannot be written
    (missing directory, no permission, a directory in the way, a full disk).
    """
    check_writable(path, f"the aggregate of round {round_id}")
    write_array(path, ledger.aggregate(round_id).astype(np.float32))


def round_line(summary: RoundSummary) -> Text:
    """One line per round of ``secagg serve``."""
    text = (
        f"round {summary.round_id}{_session_note(summary)}: {summary.outcome}, "
        f"{len(summary.included)} of "
        f"{len(summary.cohort)} included, {summary.seconds:.2f} s"
    )
    if summary.abort_reason:
        text += f" ({summary.abort_reason})"
    elif summary.drops:  # a completed round: who dropped, where and why
        text += f"; {summary.drops}"
    if summary.privacy is not None:
        text += f"; {privacy_text(summary.privacy)}"
    return Text(text)


def _session_note(summary: RoundSummary) -> str:
    """`` (session round 3)``, `` (session round 1, with its set-up)``; nothing one-shot."""
    if summary.session_round is None:
        return ""
    with_set_up = ", with its set-up" if summary.session_round == 1 else ""
    return f" (session round {summary.session_round}{with_set_up})"


def round_json(summary: RoundSummary) -> dict[str, Any]:
    """One JSON object per round of ``secagg serve --json``."""
    return {
        "round_id": summary.round_id,
        "scheme": summary.scheme,
        "outcome": summary.outcome.value,
        "cohort": len(summary.cohort),
        "included": len(summary.included),
        "dropped": {str(c): [s.value, r.value] for c, (s, r) in summary.dropped.items()},
        "seconds": summary.seconds,
        "stage_seconds": {s.value: t for s, t in summary.stage_seconds.items()},
        "upload_bytes_per_client": summary.upload_bytes_per_client,
        "download_bytes_per_client": summary.download_bytes_per_client,
        "abort_reason": summary.abort_reason,
        "kind": summary.kind.value,
        "session_round": summary.session_round,
        # The largest error the scheme may add to a coordinate of the mean (completed rounds).
        "error_bound": summary.error_bound,
        # Distributed DP: the revealed sum's epsilon, the epsilon spent so far, the target.
        **privacy_json(summary.privacy),
        # Linux reports ru_maxrss in KiB: the coordinator's peak so far.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }

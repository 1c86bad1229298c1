"""``secagg rounds`` and ``secagg history``: what the coordinator's ledger and a client's
journal recorded. Both are read when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secagg.cli.output import fail, say, started, wide_console

if TYPE_CHECKING:
    from secagg.journal import Journal

__all__ = ["history", "rounds"]

_MAX_ROUND_ID = 2**63 - 1  # what the ledger (SQLite) can hold


def rounds(
    ledger: Annotated[Path, typer.Option(help="The coordinator's ledger file.")],
    export: Annotated[int | None, typer.Option(help="Round whose aggregate to export.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write it (.npy).")] = None,
) -> None:
    """List the rounds in a ledger, or export one round's aggregate."""
    from secagg.cli.report import export_aggregate, format_rounds_table
    from secagg.errors import ConfigurationError, DecodeError, LedgerError, UsageError
    from secagg.ledger import Ledger

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    if export is not None:
        if not 1 <= export <= _MAX_ROUND_ID:
            fail(f"--export must be a round id in [1, {_MAX_ROUND_ID}], got {export}")
        if out is None:
            fail("--export needs --out FILE.npy")
    try:
        with Ledger.open_readonly(ledger) as book:
            if export is None:
                wide_console().print(format_rounds_table(book.rounds()))
                return
            assert out is not None
            export_aggregate(book, export, out)
    except (LedgerError, UsageError, DecodeError, ConfigurationError) as exc:
        fail(str(exc))
    say(f"wrote the aggregate of round {export} to {out}")


def history(
    identity: Annotated[
        Path | None, typer.Option(help="A client's identity file (its journal is beside it).")
    ] = None,
    journal: Annotated[Path | None, typer.Option(help="A journal file, named directly.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="deployment.toml, to show epsilon against its budget.")
    ] = None,
) -> None:
    """Print a client's history from its own journal: each round, each attempt, what it
    revealed to whom, and the privacy it spent."""
    from secagg.client_session import audit_line
    from secagg.errors import MissingExtra, SecAggError
    from secagg.journal import Journal
    from secagg.service.run import journal_path

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    if (identity is None) == (journal is None):
        fail("name the client with --identity FILE or its journal with --journal FILE")
    path = journal if journal is not None else journal_path(identity)  # type: ignore[arg-type]
    if not path.is_file():
        fail(f"no journal at {path}")
    try:
        book = Journal.open(path)
        entries = book.rounds()
        lines = [audit_line(entry, book.events(entry.round_id)) for entry in entries]
        budget_line = None if config is None else _budget_line(book, config)
        book.close()
    except MissingExtra:
        raise  # run() says it, naming the command
    except SecAggError as exc:
        fail(str(exc))
    for line in lines:
        say(line)
    say(f"{len(entries)} round(s) in {path}")
    if budget_line is not None:
        say(budget_line)


def _budget_line(book: Journal, config: Path) -> str | None:
    """The privacy the client spent, against its deployment's budget (None without DP)."""
    from secagg.cli.service import load_config
    from secagg.dp.budget import ClientBudget

    plan = load_config(config).dp_plan
    if plan is None:
        return None
    budget = ClientBudget(plan)
    with book.transaction() as txn:
        charges = txn.dp_charges(budget.fingerprint)
    return (
        f"privacy: {len(charges)} round(s) charged, epsilon {budget.spent(charges):.3g}"
        f" spent of the deployment's {budget.limit:g}"
    )

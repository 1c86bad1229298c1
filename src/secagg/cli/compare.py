"""``secagg compare``: the same updates through every scheme, side by side. The row names
come from ``secagg.compare`` (which imports nothing to give them); the comparison itself is
imported when the command runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secagg.cli.options import NO_DP, DpFlags, Dropout, dp_options
from secagg.cli.output import fail, say, started, wide_console
from secagg.compare import ALL_SCHEMES

if TYPE_CHECKING:
    import numpy as np

    from secagg.compare.comparison import CompareReport, Row

__all__ = ["compare"]


@dp_options()
def compare(
    clients: Annotated[int, typer.Option("--clients", "-n", help="Clients per round.")] = 20,
    dim: Annotated[int, typer.Option(help="Values per update.")] = 100_000,
    dropout: Dropout = 0.0,
    seed: Annotated[int, typer.Option(help="Inputs, dropouts and keys.")] = 0,
    inputs: Annotated[
        Path | None, typer.Option(help="float32 array N x D of updates instead of random ones.")
    ] = None,
    demo_updates: Annotated[
        bool, typer.Option("--demo-updates", help="The demo's first-round digits updates.")
    ] = False,
    schemes: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated subset of {', '.join(ALL_SCHEMES)} (the last two need "
            "--dp-epsilon or --dp-noise-multiplier, and are added when they are given). "
            "Default: all but the last two, leaving out ckks where the he extra is missing.",
            show_default=False,
        ),
    ] = None,
    sweep_clients: Annotated[
        str | None, typer.Option(help="Also compare at these client counts, e.g. 10,20,50.")
    ] = None,
    sweep_dim: Annotated[
        str | None, typer.Option(help="Also compare at these dimensions, e.g. 1000,100000.")
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(help="Write PNG plots into this folder (needs the bench extra)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the raw figures as JSON on stdout.")
    ] = False,
    dp: DpFlags = NO_DP,
) -> None:
    """The same updates through plaintext, SecAgg, SecAgg+ (both threat models) and CKKS.

    With --dp-epsilon (or --dp-noise-multiplier) two more rows: secagg+-dp, SecAgg+ with
    distributed DP (an unweighted mean of the updates clipped to --dp-clip, default 1, with
    every client's noise), and central-dp, the baseline it is measured against (a trusted
    curator's Gaussian noise on the exact mean of the same clipped updates, for the same
    epsilon by the same accountant). The privacy column gives each row's epsilon, or none;
    a note under the table gives each DP row's noise multiplier as carried and as planned.
    """
    from secagg.compare import SCHEMES
    from secagg.compare.comparison import CompareOptions, run_compare, write_plots
    from secagg.errors import ConfigurationError
    from secagg.extras import require

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    if plots is not None:
        require("bench", "--plots")  # before the comparison, not after its minutes
    try:
        options = CompareOptions(
            clients=clients,
            dim=dim,
            dropout=dropout,
            seed=seed,
            # Rows named with --schemes must all run (a missing extra is the error); of the
            # default rows, one whose extra is missing is left out, and a note says so.
            schemes=SCHEMES
            if schemes is None
            else tuple(s.strip() for s in schemes.split(",") if s.strip()),
            dp=dp.settings(),
            leave_out_missing=schemes is None,
        )
        for name, reason in options.left_out:
            say(f"note: the {name} row is left out because {reason}", stderr=True)
        array, source = _updates(inputs, demo_updates, clients, seed)
        report = run_compare(
            options,
            inputs=array,
            source=source,
            sweep_clients=_int_list(sweep_clients, "--sweep-clients"),
            sweep_dim=_int_list(sweep_dim, "--sweep-dim"),
        )
    except ConfigurationError as exc:
        fail(dp.error_text(exc))
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_compare(report)
    if plots is not None:
        for path in write_plots(report, plots):
            say(f"wrote {path}", stderr=json_output)


def _updates(
    inputs: Path | None, demo_updates: bool, clients: int, seed: int
) -> tuple[np.ndarray | None, str]:
    """The updates to compare (None: random ones) and where they come from, in words."""
    from secagg.cli.arrays import load_array
    from secagg.compare.comparison import demo_updates as demo_updates_of

    if inputs is not None and demo_updates:
        fail("use either --inputs or --demo-updates, not both")
    if inputs is not None:
        array, _, _ = load_array(inputs)
        return array, str(inputs)
    if demo_updates:
        return demo_updates_of(clients, seed), "the demo's digits updates"
    return None, "random"


def _int_list(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{flag} takes integers separated by commas, e.g. 10,20,50")


def _print_compare(report: CompareReport) -> None:
    from rich.table import Table
    from rich.text import Text

    from secagg.cli.simulate_report import clip_hint
    from secagg.protocol.runner import RoundOutcome

    o = report.options
    table = Table(
        title=Text(
            f"{o.clients} clients x {o.dim:,} values, dropout {o.dropout:g}, "
            f"updates: {report.source}"  # may be a path: never markup
        ),
        title_justify="left",
    )
    names = [
        row.scheme if row.report.outcome is RoundOutcome.COMPLETED else f"{row.scheme} (aborted)"
        for row in report.rows
    ]
    # The scheme's name is never cut, however narrow the terminal: the other columns wrap
    # (and the table overflows the screen before a name loses a character).
    table.add_column("scheme", no_wrap=True, min_width=max(map(len, names), default=6))
    for column in ("included", "client s", "server s", "up B/client", "x float32"):
        table.add_column(column, justify="right")
    table.add_column("down B/client", justify="right")
    table.add_column("max error (bound)", justify="right")
    for column in ("tolerates", "server learns", "to see one update", "privacy"):
        table.add_column(column)
    for row, name in zip(report.rows, names, strict=True):
        r = row.report
        error = "-" if r.max_abs_error is None else f"{r.max_abs_error:.1e} ({r.error_bound:.0e})"
        table.add_row(
            name,
            f"{len(r.included)}/{r.clients}",
            f"{r.client_seconds:.4f}",
            f"{r.server_seconds:.4f}",
            f"{r.upload_bytes_per_client:,.0f}",
            f"{r.upload_bytes_per_client / r.plaintext_bytes_per_client:.2f}",
            f"{r.download_bytes_per_client:,.0f}",
            error,
            row.tolerates,
            row.server_learns,
            row.to_see_one_update,
            row.privacy,
        )
    wide_console().print(table)
    for row in report.rows:
        hint, dp = row.report.dp_clip_hint, row.report.facts.dp
        if hint is not None and dp is not None:
            say(f"note: {row.scheme}: {clip_hint(hint, dp.l2_clip)}")
    for row in report.rows:
        line = _noise_note(row, o.dp.rounds if o.dp is not None else 1)
        if line is not None:
            say(line)


def _noise_note(row: Row, rounds: int) -> str | None:
    """A DP row's privacy as the user got it: the noise multiplier its revealed sum carried
    (against the one planned) and the epsilon the round spent (against the target)."""
    from secagg.compare import CENTRAL_DP_SCHEME

    r, dp = row.report, row.report.facts.dp
    if dp is None or r.epsilon is None or row.noise_multiplier is None:
        return None
    spent = (
        f"the round spent epsilon {r.epsilon:.3g} at delta {dp.delta:g} (the target: "
        f"{dp.epsilon_target:.3g} over {rounds} round{'s' if rounds != 1 else ''})"
    )
    if row.scheme == CENTRAL_DP_SCHEME:
        return (
            f"note: {row.scheme}: a trusted curator's Gaussian noise on the exact mean of the "
            f"same {len(r.included)} clipped updates carried noise multiplier "
            f"{row.noise_multiplier:.3g} (z = {row.planned_noise_multiplier:.3g} from the same "
            f"accountant, widened by its noise grid); {spent}"
        )
    return (
        f"note: {row.scheme}: the sum of {len(r.included)} inputs carried noise multiplier "
        f"{row.noise_multiplier:.3g} ({row.planned_noise_multiplier:.3g} planned for the minimum "
        f"cohort of {r.facts.min_cohort}); {spent}"
    )

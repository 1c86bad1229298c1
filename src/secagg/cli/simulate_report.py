"""What ``secagg simulate`` shows and writes once its round (or its rounds) has run: the
report (a table, or JSON), the aggregate, whether the error is within the bound the round
states, and the exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from secagg.cli.arrays import save_aggregate
from secagg.cli.output import FAILED_EXIT, fail, say, wide_console
from secagg.dp.calibrate import DpPlan
from secagg.grouping import GroupedReport, GroupedResult
from secagg.protocol.runner import RoundOutcome
from secagg.simulate import RoundReport, SimulationResult
from secagg.simulate.rounds import RoundKind, RunReport, RunResult, SetupReport

__all__ = ["clip_hint", "error_verdict", "finish_grouped", "finish_round", "finish_rounds"]


def finish_round(
    result: SimulationResult, plan: DpPlan | None, aggregate_to: Path | None, json_output: bool
) -> None:
    """A single round's output and exit: 1 when it aborted, or (a bug) erred beyond its
    hard bound."""
    report = result.report
    beyond, is_bug = error_verdict(report, plan)
    save_aggregate(aggregate_to, result.aggregate)
    if json_output:
        figures = report.to_json()
        if plan is not None:
            figures |= _dp_figures(plan, within_bound=beyond is None)
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        _print_report(report, plan)
    if report.outcome is not RoundOutcome.COMPLETED:
        raise typer.Exit(FAILED_EXIT)
    if beyond is not None:
        if is_bug:
            # The simulator checks itself: an error beyond a hard bound is a bug, never a
            # result to pass on.
            fail(beyond, FAILED_EXIT)
        say(f"note: {beyond}", stderr=True)


def finish_grouped(result: GroupedResult, aggregate_to: Path | None, json_output: bool) -> None:
    """A grouped round's output and exit: as a single round's, per group."""
    report = result.report
    save_aggregate(aggregate_to, result.aggregate)
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_grouped(report)
    if report.outcome == "aborted":
        raise typer.Exit(FAILED_EXIT)
    if report.max_abs_error is not None and not report.max_abs_error <= report.error_bound:
        fail(
            f"the aggregate is off by {report.max_abs_error:.3g}, beyond the bound "
            f"{report.error_bound:.3g}",
            FAILED_EXIT,
        )


def finish_rounds(
    result: RunResult, plan: DpPlan | None, aggregate_to: Path | None, json_output: bool
) -> None:
    """A run of rounds' output and exit: 1 when any round aborted, or (a bug) erred beyond
    its hard bound; the aggregate saved is the last completed round's."""
    report = result.report
    verdicts = [(r.number, *error_verdict(r.report, plan)) for r in report.rounds]
    last = next((a for a in reversed(result.aggregates) if a is not None), None)
    save_aggregate(aggregate_to, last)
    if json_output:
        figures = report.to_json()
        if plan is not None:
            figures |= _dp_figures(plan, within_bound=all(v[1] is None for v in verdicts))
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        _print_rounds(report, plan)
    for number, beyond, is_bug in verdicts:
        if beyond is not None and is_bug:
            fail(f"round {number}: {beyond}", FAILED_EXIT)
    for number, beyond, _ in verdicts:
        if beyond is not None:
            say(f"note: round {number}: {beyond}", stderr=True)
    if report.completed < len(report.rounds):
        raise typer.Exit(FAILED_EXIT)


def _print_rounds(report: RunReport, plan: DpPlan | None) -> None:
    console = wide_console()
    title = (
        f"{report.facts.title}, {report.clients} clients x {report.dim}: {len(report.rounds)} "
        f"rounds ({report.mode}), {report.completed} completed"
    )
    if plan is not None:
        title += f", with distributed DP ({plan.mechanism.value})"
    table = Table(title=Text(title), title_justify="left")
    for column in ("round", "kind", "outcome", "in sum", "dropped", "up/client",
                   "down/client", "msgs up/down", "seconds", "max abs error"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("kind", "dropped") else "right")
    setups = iter(report.setups)
    notes: list[str] = []
    for r in report.rounds:
        if r.setup is not None:
            setup = next(setups)
            table.add_row(*_setup_cells(setup, report.clients))
            notes.append(f"set-up {setup.session} before round {r.number}: {setup.reason}")
            if setup.abort_reason:
                notes.append(f"set-up {setup.session} aborted: {setup.abort_reason}")
        rep = r.report
        if rep.abort_reason:
            notes.append(f"round {r.number} aborted: {rep.abort_reason}")
        where = "" if r.session is None else f" ({r.session}.{r.session_round or '-'})"
        table.add_row(
            str(r.number),
            r.kind.value + where,
            rep.outcome.value,
            str(len(rep.included)),
            _dropped(rep.dropped, rep.client_aborts),
            f"{rep.upload_bytes_per_client:,.0f} B",
            f"{rep.download_bytes_per_client:,.0f} B",
            f"{r.messages_up_per_client:.0f}/{r.messages_down_per_client:.0f}",
            f"{rep.seconds:.3f}",
            "-" if rep.max_abs_error is None else f"{rep.max_abs_error:.2g}",
        )
    console.print(table)
    if report.setups:
        notes.insert(
            0,
            "a set-up+round row counts its set-up too (its last message opens round 1); the "
            "set-up row above it is that part alone",
        )
    for line in [*notes, *_rounds_summary(report)]:
        console.print(Text(line))


def _setup_cells(setup: SetupReport, clients: int) -> list[str]:
    return [
        "",
        f"set-up {setup.session}",
        setup.outcome.value,
        f"{len(setup.members)}/{clients}",
        _dropped(setup.dropped, setup.client_aborts),
        f"{setup.upload_bytes_per_client:,.0f} B",
        f"{setup.download_bytes_per_client:,.0f} B",
        f"{setup.messages_up_per_client:.0f}/{setup.messages_down_per_client:.0f}",
        f"{setup.seconds:.3f}",
        "",
    ]


def _dropped(dropped: Mapping[str, tuple[int, ...]], aborts: Mapping[int, str]) -> str:
    parts = [f"{len(ids)} {stage}" for stage, ids in dropped.items() if ids]
    if aborts:
        parts.append(f"{len(aborts)} left")
    return ", ".join(parts) or "-"


def _rounds_summary(report: RunReport) -> list[str]:
    """Medians by kind, the set-ups' cost and the plaintext round beside them."""
    lines = []
    setup = report.setup_summary()
    plain = report.plaintext_seconds
    if setup is not None and setup["seconds"] is not None:
        lines.append(
            f"set-up: {setup['setups']} ({setup['completed']} completed), "
            f"{setup['total_seconds']:.3f} s in all; "
            f"median {setup['seconds']:.3f} s, {setup['upload_bytes_per_client']:,.0f} B up and "
            f"{setup['download_bytes_per_client']:,.0f} B down per member"
        )
    for kind in RoundKind:
        figures = report.kind_summary(kind)
        if figures is None:
            continue
        versus = "" if not plain else f" ({figures['seconds'] / plain:.1f}x plaintext)"
        lines.append(
            f"{kind.value} rounds: {figures['rounds']}, median {figures['seconds']:.3f} s{versus}, "
            f"{figures['upload_bytes_per_client']:,.0f} B up "
            f"({figures['upload_vs_plaintext']:.2f}x float32) and "
            f"{figures['download_bytes_per_client']:,.0f} B down per client, "
            f"{figures['stages']:.0f} stages"
        )
    if plain is not None:
        lines.append(f"plaintext round of the last completed round's clients: {plain:.3f} s")
    return lines


def _print_grouped(report: GroupedReport) -> None:
    console = Console()
    sizes = sorted(len(g.members) for g in report.groups)
    size = f"{sizes[0]:,}" if sizes[0] == sizes[-1] else f"{sizes[0]:,} to {sizes[-1]:,}"
    title = (
        f"{len(report.groups)} groups of {size} clients ({report.clients:,} in all): "
        f"{report.outcome}"
    )
    table = Table(title=Text(title), title_justify="left")
    for column in ("group", "clients", "outcome", "inputs in sum", "seconds", "upload/client"):
        table.add_column(column)
    for g in report.groups:
        table.add_row(
            str(g.index),
            str(len(g.members)),
            g.round.outcome if g.completed else f"aborted: {g.round.abort_reason}",
            str(len(g.included)),
            f"{g.round.seconds:.2f}",
            f"{g.round.upload_bytes_per_client:,.0f} B",
        )
    console.print(table)
    say(f"the top level learns {report.top_level_learns}")
    say(
        f"time: {report.seconds:.2f} s one group after another, "
        f"{report.parallel_seconds:.2f} s with one aggregator per group"
    )
    if report.max_abs_error is not None:
        say(f"max abs error {report.max_abs_error:.3g} (bound {report.error_bound:.3g})")


def error_verdict(report: RoundReport, plan: DpPlan | None) -> tuple[str | None, bool]:
    """Whether the revealed mean is within the bound the round states: (None, False) when
    it is; else what to say, and whether it is a bug.

    Without DP the bound is hard (quantisation): beyond it is a bug. With distributed DP it
    is a high-probability bound on the noise and rounding, exceeded with probability below
    1e-9, and a coordinate of the sum can wrap modulo the ring with the plan's stated
    probability: beyond it is rare, not a bug, and is reported as such.
    """
    error, bound = report.max_abs_error, report.error_bound
    if error is None or error <= bound:
        return None, False
    if plan is None:
        return (
            f"the aggregate is off by {error:.3g}, beyond the quantisation bound "
            f"{bound:.3g}: this is a bug, please report it",
            True,
        )
    per_round = min(1.0, plan.padded_dim * plan.wrap_probability_bound + 1e-9)
    return (
        f"the noisy mean is off by {error:.3g}, beyond its high-probability bound {bound:.3g}: "
        f"a rare event (a coordinate wrapped modulo the {plan.ring_bits}-bit ring, or the "
        f"noise's far tail: at most {per_round:.2g} per round); raise --dp-bits to make wraps "
        "rarer",
        False,
    )


def _dp_figures(plan: DpPlan, *, within_bound: bool) -> dict[str, object]:
    """What the JSON report adds under distributed DP: the plan's whole-run figures and
    whether the error stayed within its high-probability bound."""
    return {
        "dp_min_cohort": plan.config.min_clients,
        "dp_rounds": plan.config.rounds,
        "dp_epsilon_run": plan.epsilon_total,
        "dp_bits": plan.ring_bits,
        "error_within_bound": within_bound,
    }


def _print_report(report: RoundReport, plan: DpPlan | None = None) -> None:
    console = Console()
    title = f"{report.protocol} round: {report.outcome}"
    if plan is not None:
        title += f", with distributed DP ({plan.mechanism.value})"
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in _report_rows(report, plan):
        table.add_row(Text(key), Text(value))
    console.print(table)


def _report_rows(report: RoundReport, plan: DpPlan | None) -> list[tuple[str, str]]:
    ratio = report.upload_bytes_per_client / report.plaintext_bytes_per_client
    rows = [("clients x dim", f"{report.clients} x {report.dim}")]
    rows += [
        (key.replace("_", " "), str(value))
        for key, value in report.facts.as_dict().items()
        # DP's facts have rows of their own, below; the quantiser is not used under DP.
        if not key.startswith("dp_") and (plan is None or key not in ("value_bits", "clip"))
    ]
    rows.append(("included", str(len(report.included))))
    if plan is not None:
        rows += _dp_rows(report, plan)
    if report.threshold_margin is not None:
        rows.append(("threshold margin", f"{report.threshold_margin} (unmask answers - t)"))
    for stage, ids in report.dropped.items():
        if ids:
            rows.append((f"dropped at {stage}", _ids(ids)))
    if report.client_aborts:
        rows.append(("client aborts", str(dict(report.client_aborts))))
    if report.abort_reason:
        rows.append(("abort reason", report.abort_reason))
    clipped = "clipped clients" if plan is not None else "clipped values"
    rows.append((clipped, f"{report.clipped_values} ({report.clip_rate:.2%})"))
    if plan is not None and report.dp_clip_hint is not None:
        rows.append(("clip hint", clip_hint(report.dp_clip_hint, plan.config.l2_clip)))
    rows += [
        ("seconds", f"{report.seconds:.3f}"),
        *[(f"  {s}", f"{t:.3f}") for s, t in report.stage_seconds.items()],
        ("upload per client", f"{report.upload_bytes_per_client:,.0f} B ({ratio:.2f}x float32)"),
        ("download per client", f"{report.download_bytes_per_client:,.0f} B"),
    ]
    if report.max_abs_error is not None:
        against = "the clipped inputs' mean" if report.clipped_values else "the inputs' mean"
        bound = (
            f"bound {report.error_bound:.3g}"
            if plan is None
            else f"noise and rounding; bound {report.error_bound:.3g} w.p. 1 - 1e-9"
        )
        rows.append(("max abs error", f"{report.max_abs_error:.3g} against {against} ({bound})"))
    return rows


def clip_hint(hint: float, clip: float) -> str:
    """What to do when most updates were clipped (``RoundReport.dp_clip_hint``)."""
    return (
        f"most updates were longer than the L2 clip {clip:g}, so the mean is shrunk toward 0; "
        f"their median norm is about {hint:g}: try --dp-clip {hint:g}"
    )


def _dp_rows(report: RoundReport, plan: DpPlan) -> list[tuple[str, str]]:
    """The distributed-DP rows of the simulate table: what the revealed sum's guarantee is,
    what the plan promised, the noise, the clipping and the wrap bound."""
    c = plan.config
    rounds = f"{c.rounds} round{'s' if c.rounds > 1 else ''}"
    rows = []
    if report.epsilon is not None:
        rows.append(
            (
                "epsilon",
                f"{report.epsilon:.4g} at delta {c.delta:g}, for this sum of "
                f"{len(report.included)} inputs",
            )
        )
    removed = report.noise_taken_off
    if removed is not None:
        left = (
            f"; {removed.layers_left} layer(s) could not be rebuilt" if removed.layers_left else ""
        )
        rows.append(
            (
                "noise layers",
                f"c={removed.count} certified inputs, A={removed.corrupt}: w={removed.units} "
                f"unit(s) off, each client keeps mu={removed.kept:.6g}; the sum carries noise "
                f"multiplier {removed.noise_multiplier:.3g}{left}",
            )
        )
    rows += [
        (
            "epsilon target",
            f"{plan.epsilon_total:.4g} over {rounds} at the minimum cohort of {c.min_clients} "
            f"({plan.epsilon_per_round:.4g} per round)",
        ),
        (
            "noise multiplier",
            f"{plan.noise_multiplier:.3g} (the sum's noise std at the minimum cohort / the L2 "
            f"clip {c.l2_clip:g})",
        ),
        (
            "wrap bound",
            f"{plan.wrap_probability_bound:.2g} per coordinate ({plan.ring_bits}-bit ring, "
            f"sums of up to {c.max_clients} inputs)",
        ),
    ]
    return rows


def _ids(ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:12])
    return f"{len(ids)}: {shown}{', ...' if len(ids) > 12 else ''}"

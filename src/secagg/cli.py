"""The ``secagg`` command.

Bad arguments and infeasible configurations end with one clear line on stderr and exit
code 2; a round that aborts prints its report and exits with 1.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from secagg.compare import (
    SCHEMES,
    CompareOptions,
    CompareReport,
    build_scheme,
    run_compare,
    write_plots,
)
from secagg.compare import demo_updates as demo_updates_of
from secagg.errors import ConfigurationError, DecodeError, LedgerError, UsageError
from secagg.params import Params, Protocol
from secagg.protocol.graph import ServerModel
from secagg.schemes.base import Scheme
from secagg.service.client import UpdateFn
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import RoundSummary
from secagg.service.credentials import create_deployment
from secagg.simulate import (
    DROP_STAGES,
    SEMI_HONEST_STAGES,
    DropSchedule,
    InputSource,
    RoundReport,
    integer_weights,
    random_inputs,
    root_randomness,
    simulate_round,
)

__all__ = ["app", "main"]

app = typer.Typer(
    help="Secure aggregation for federated learning: SecAgg and SecAgg+.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_EXIT = 2
ABORT_EXIT = 1


class ProtocolChoice(StrEnum):
    secagg = "secagg"
    secagg_plus = "secagg+"


class SchemeChoice(StrEnum):
    masking = "masking"
    ckks = "ckks"
    plaintext = "plaintext"


class ThreatModel(StrEnum):
    """What the server is trusted to do: follow the protocol, or nothing at all."""

    semi_honest = "semi-honest"
    malicious = "malicious"

    @property
    def server_model(self) -> ServerModel:
        if self is ThreatModel.malicious:
            return ServerModel.SEMI_MALICIOUS  # active mode: signatures + consistency round
        return ServerModel.SEMI_HONEST


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(USAGE_EXIT)


@app.callback()
def _root() -> None:
    """Secure aggregation for federated learning: SecAgg and SecAgg+."""


@app.command()
def simulate(
    clients: Annotated[
        int | None, typer.Option("--clients", "-n", help="Cohort size (random inputs).")
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Values per update (random inputs).")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="float32 array N x D: client i's update is row i.")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Vector of N non-negative weights (weighted mean).")
    ] = None,
    protocol: Annotated[ProtocolChoice, typer.Option(help="Neighbour graph.")] = (
        ProtocolChoice.secagg_plus
    ),
    dropout: Annotated[
        float, typer.Option(help="Fraction of clients that drop, each at a random stage.")
    ] = 0.0,
    drop: Annotated[
        list[str] | None,
        typer.Option(help=f"STAGE=ID,ID,... (repeatable); stages: {', '.join(DROP_STAGES)}."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Make every random choice reproducible.")] = (
        None
    ),
    clip: Annotated[float, typer.Option(help="Clip each value to [-clip, clip].")] = 1.0,
    value_bits: Annotated[int, typer.Option(help="Quantisation bits per value.")] = 16,
    adversarial_rate: Annotated[
        float, typer.Option(help="Fraction of corrupt clients to tolerate.")
    ] = 0.05,
    max_dropout: Annotated[
        float | None,
        typer.Option(help="Dropout rate the graph must tolerate (default: max(0.33, dropout))."),
    ] = None,
    threat_model: Annotated[
        ThreatModel,
        typer.Option(help="malicious: signed keys and a consistency round (active mode)."),
    ] = ThreatModel.semi_honest,
    min_cohort: Annotated[
        int, typer.Option(help="Fewest inputs a revealed sum may contain (active mode).")
    ] = 1,
    threshold: Annotated[int | None, typer.Option(help="Override the threshold t.")] = None,
    degree: Annotated[int | None, typer.Option(help="Override the SecAgg+ degree k.")] = None,
    save_aggregate: Annotated[
        Path | None, typer.Option(help="Write the weighted mean (float32) to this .npy file.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the round report as JSON on stdout.")
    ] = False,
    scheme: Annotated[
        SchemeChoice,
        typer.Option(help="masking (SecAgg/SecAgg+), ckks (homomorphic) or plaintext."),
    ] = SchemeChoice.masking,
) -> None:
    """Run one secure-aggregation round in process and report what it cost."""
    source, n, d = _load_inputs(clients, dim, inputs, seed)
    weight_vector = _load_weights(weights, n)
    if drop and dropout:
        _fail("use either --dropout or --drop, not both")
    try:
        _, max_weight = integer_weights(weight_vector, n)
        tolerated = max(0.33, dropout) if max_dropout is None else max_dropout
        params = Params(
            dim=d,
            max_clients=n,
            protocol=Protocol(protocol.value),
            clip=clip,
            value_bits=value_bits,
            max_weight=max_weight,
            adversarial_rate=adversarial_rate,
            dropout_rate=tolerated,
            server_model=threat_model.server_model,
            min_cohort=min_cohort,
            degree=degree,
            threshold=threshold,
        )
        chosen: Scheme | Params = params
        stages = DROP_STAGES if params.active else SEMI_HONEST_STAGES
        if scheme is not SchemeChoice.masking:
            chosen = build_scheme(
                scheme.value,
                n,
                d,
                max_weight,
                CompareOptions(clients=n, dim=d, clip=clip, value_bits=value_bits),
            )
            stages = tuple(s.value for s in chosen.stages)
        if drop:
            schedule = DropSchedule.parse(drop)
        else:
            schedule = DropSchedule.random(
                n, dropout, root_randomness(seed, "dropout"), stages=stages
            )
        schedule.check_ids(n)
        result = simulate_round(chosen, n, source, weights=weight_vector, drops=schedule, seed=seed)
    except ConfigurationError as exc:
        _fail(str(exc))
    report = result.report
    if save_aggregate is not None and result.aggregate is not None:
        np.save(save_aggregate, result.aggregate.astype(np.float32))
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_report(report)
    if report.outcome != "completed":
        raise typer.Exit(ABORT_EXIT)


def _load_array(path: Path) -> tuple[np.ndarray, int, int]:
    """A float array of N x D updates (N >= 3), memory-mapped."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {path}: {exc}")
    if array.ndim != 2 or array.shape[0] < 3 or array.shape[1] < 1:
        _fail(f"{path} must be a 2-D array with at least 3 rows; got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        _fail(f"{path} must hold floats; got {array.dtype}")
    return array, int(array.shape[0]), int(array.shape[1])


def _load_inputs(
    clients: int | None, dim: int | None, inputs: Path | None, seed: int | None
) -> tuple[InputSource, int, int]:
    if inputs is not None:
        if clients is not None or dim is not None:
            _fail("--inputs fixes the cohort and dimension: drop --clients and --dim")
        array, rows, columns = _load_array(inputs)
        return (lambda i: np.asarray(array[i], dtype=np.float32)), rows, columns
    n = 100 if clients is None else clients
    d = 1000 if dim is None else dim
    if n < 3:
        _fail("--clients must be at least 3")
    if d < 1:
        _fail("--dim must be at least 1")
    return random_inputs(d, seed), n, d


def _load_weights(weights: Path | None, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    try:
        w = np.load(weights, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {weights}: {exc}")
    if w.shape != (n,):
        _fail(f"{weights} must be a vector of {n} weights; got shape {w.shape}")
    return np.asarray(w, dtype=np.float64)


def _print_report(report: RoundReport) -> None:
    console = Console()
    title = f"{report.protocol} round: {report.outcome}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    ratio = report.upload_bytes_per_client / report.plaintext_bytes_per_client
    rows = [("clients x dim", f"{report.clients} x {report.dim}")]
    rows += [(key.replace("_", " "), str(value)) for key, value in report.details.items()]
    rows.append(("included", str(len(report.included))))
    if report.threshold_margin is not None:
        rows.append(("threshold margin", f"{report.threshold_margin} (unmask answers - t)"))
    for stage, ids in report.dropped.items():
        if ids:
            rows.append((f"dropped at {stage}", _ids(ids)))
    if report.client_aborts:
        rows.append(("client aborts", str(dict(report.client_aborts))))
    if report.abort_reason:
        rows.append(("abort reason", report.abort_reason))
    rows += [
        ("clipped values", f"{report.clipped_values} ({report.clip_rate:.2%})"),
        ("seconds", f"{report.seconds:.3f}"),
        *[(f"  {s}", f"{t:.3f}") for s, t in report.stage_seconds.items()],
        ("upload per client", f"{report.upload_bytes_per_client:,.0f} B ({ratio:.2f}x float32)"),
        ("download per client", f"{report.download_bytes_per_client:,.0f} B"),
    ]
    if report.max_abs_error is not None:
        rows.append(
            ("max abs error", f"{report.max_abs_error:.3g} (bound {report.error_bound:.3g})")
        )
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _ids(ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:12])
    return f"{len(ids)}: {shown}{', ...' if len(ids) > 12 else ''}"


# --------------------------------------------------------------------------- service
def _load_config(path: Path) -> DeploymentConfig:
    try:
        return DeploymentConfig.load(path)
    except ConfigurationError as exc:
        _fail(str(exc))


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write the deployment.")],
    clients: Annotated[int, typer.Option(help="Client identities to create.")] = 10,
    dim: Annotated[int, typer.Option(help="Values per update.")] = 1000,
    port: Annotated[int, typer.Option(help="Coordinator port.")] = 50051,
    min_clients: Annotated[int, typer.Option(help="Smallest cohort.")] = 3,
) -> None:
    """Create a local deployment: CA, server certificate, client identities, allow-list.

    Also writes deployment.toml, which both `serve` and `join` read.
    """
    try:
        deployment = create_deployment(directory, clients)
        params = Params(dim=dim, max_clients=max(3, clients))
    except ConfigurationError as exc:
        _fail(str(exc))
    config = DeploymentConfig.write(
        directory,
        deployment,
        params,
        port=port,
        min_clients=min_clients,
        stage_timeout=30.0,
        cohort_wait=60.0,
    )
    Console().print(f"wrote {config} and {clients} identities under {directory / 'clients'}")


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="deployment.toml")],
    rounds: Annotated[int, typer.Option(help="Rounds to run, then exit.")] = 1,
    port: Annotated[int | None, typer.Option(help="Override the configured port.")] = None,
    stage_timeout: Annotated[float | None, typer.Option(help="Seconds per stage.")] = None,
    min_clients: Annotated[int | None, typer.Option(help="Smallest cohort.")] = None,
    cohort_wait: Annotated[float | None, typer.Option(help="Seconds to wait for it.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON line per round on stdout.")
    ] = False,
) -> None:
    """Run the coordinator: admit allow-listed clients over TLS and run rounds."""
    import asyncio
    import resource

    from secagg.service.run import serve as run_serve

    deployment = _load_config(config).with_overrides(
        port=port, stage_timeout=stage_timeout, min_clients=min_clients, cohort_wait=cohort_wait
    )
    console = Console()

    def report(summary: RoundSummary) -> None:
        if json_output:
            line = {
                "round_id": summary.round_id,
                "outcome": summary.outcome,
                "cohort": len(summary.cohort),
                "included": len(summary.included),
                "dropped": {str(c): list(d) for c, d in summary.dropped.items()},
                "seconds": summary.seconds,
                "stage_seconds": dict(summary.stage_seconds),
                "upload_bytes_per_client": summary.upload_bytes_per_client,
                "download_bytes_per_client": summary.download_bytes_per_client,
                "abort_reason": summary.abort_reason,
                # Linux reports ru_maxrss in KiB: the coordinator's peak so far.
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            return
        console.print(
            f"round {summary.round_id}: {summary.outcome}, {len(summary.included)} of "
            f"{len(summary.cohort)} included, {summary.seconds:.2f} s"
            + (f" ({summary.abort_reason})" if summary.abort_reason else "")
        )

    _setup_logging()
    try:
        asyncio.run(run_serve(deployment, rounds=rounds, report=report))
    except (ConfigurationError, LedgerError) as exc:
        _fail(str(exc))


@app.command()
def join(
    config: Annotated[Path, typer.Option(help="deployment.toml")],
    identity: Annotated[Path, typer.Option(help="This client's identity file.")],
    target: Annotated[str | None, typer.Option(help="host:port (default: from config).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Leave after this many rounds.")] = None,
    task: Annotated[str, typer.Option(help="random | digits")] = "random",
    task_seed: Annotated[int, typer.Option(help="Seed of the task's data.")] = 0,
    task_clients: Annotated[int, typer.Option(help="digits: clients in the split.")] = 10,
) -> None:
    """Join a coordinator as a client and answer its rounds."""
    from secagg.service.run import join as run_join

    deployment = _load_config(config)
    dim = deployment.params.dim

    def make_update(client_id: int) -> UpdateFn:
        if task == "random":
            from secagg.service.tasks import random_task

            return random_task(client_id, dim, task_seed)
        if task == "digits":
            from secagg.fl.tasks import digits_task

            return digits_task(client_id, task_clients, task_seed)
        _fail(f"unknown task {task!r}: use random or digits")

    _setup_logging()
    try:
        run_join(deployment, identity, make_update, target=target, rounds=rounds)
    except ConfigurationError as exc:
        _fail(str(exc))


@app.command()
def rounds(
    ledger: Annotated[Path, typer.Option(help="The coordinator's ledger file.")],
    export: Annotated[int | None, typer.Option(help="Round whose aggregate to export.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write it (.npy).")] = None,
) -> None:
    """List the rounds in a ledger, or export one round's aggregate."""
    from secagg.service.ledger import Ledger, export_aggregate, format_rounds_table

    try:
        with Ledger.open_readonly(ledger) as book:
            if export is None:
                _wide_console().print(format_rounds_table(book.rounds()))
                return
            if out is None:
                _fail("--export needs --out FILE.npy")
            export_aggregate(book, export, out)
    except (LedgerError, UsageError, DecodeError) as exc:
        _fail(str(exc))
    Console().print(f"wrote the aggregate of round {export} to {out}")


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Client processes.")] = 10,
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 10,
    seed: Annotated[int, typer.Option(help="Data split, model init and kill choices.")] = 0,
    drop_rate: Annotated[
        float, typer.Option(help="Chance per round that a client process is killed.")
    ] = 0.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = (
        None
    ),
    protocol: Annotated[ProtocolChoice, typer.Option(help="Neighbour graph.")] = (
        ProtocolChoice.secagg_plus
    ),
) -> None:
    """Federated training on digits with secure aggregation, beside plaintext FedAvg.

    A TLS coordinator and client processes on loopback; the same split and rounds twice.
    """
    from secagg.demo import DemoOptions, print_report, run_demo, write_json

    try:
        options = DemoOptions(
            clients=clients, rounds=rounds, seed=seed, drop_rate=drop_rate, protocol=protocol.value
        )
    except ConfigurationError as exc:
        _fail(str(exc))
    console = _wide_console()
    with console.status("starting", spinner="dots") as status:
        try:
            report = run_demo(options, progress=lambda text: status.update(text))
        except (ConfigurationError, LedgerError) as exc:
            _fail(str(exc))
    print_report(report, console)
    if json_path is not None:
        write_json(report, json_path)
        console.print(f"report written to {json_path}")


@app.command()
def compare(
    clients: Annotated[int, typer.Option("--clients", "-n", help="Clients per round.")] = 20,
    dim: Annotated[int, typer.Option(help="Values per update.")] = 100_000,
    dropout: Annotated[
        float, typer.Option(help="Fraction of clients that drop, each at a random stage.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Inputs, dropouts and keys.")] = 0,
    inputs: Annotated[
        Path | None, typer.Option(help="float32 array N x D of updates instead of random ones.")
    ] = None,
    demo_updates: Annotated[
        bool, typer.Option("--demo-updates", help="The demo's first-round digits updates.")
    ] = False,
    schemes: Annotated[
        str, typer.Option(help="Comma-separated subset of the schemes to compare.")
    ] = ",".join(SCHEMES),
    sweep_clients: Annotated[
        str | None, typer.Option(help="Also compare at these client counts, e.g. 10,20,50.")
    ] = None,
    sweep_dim: Annotated[
        str | None, typer.Option(help="Also compare at these dimensions, e.g. 1000,100000.")
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG plots into this folder.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the raw figures as JSON on stdout.")
    ] = False,
) -> None:
    """The same updates through plaintext, SecAgg, SecAgg+ (both threat models) and CKKS."""
    try:
        options = CompareOptions(
            clients=clients,
            dim=dim,
            dropout=dropout,
            seed=seed,
            schemes=tuple(s.strip() for s in schemes.split(",") if s.strip()),
        )
        array = None
        source = "random"
        if inputs is not None and demo_updates:
            _fail("use either --inputs or --demo-updates, not both")
        if inputs is not None:
            array, _, _ = _load_array(inputs)
            source = str(inputs)
        elif demo_updates:
            array = demo_updates_of(clients, seed)
            source = "the demo's digits updates"
        report = run_compare(
            options,
            inputs=array,
            source=source,
            sweep_clients=_int_list(sweep_clients, "--sweep-clients"),
            sweep_dim=_int_list(sweep_dim, "--sweep-dim"),
        )
    except ConfigurationError as exc:
        _fail(str(exc))
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_compare(report)
    if plots is not None:
        for path in write_plots(report, plots):
            Console(stderr=json_output).print(f"wrote {path}", highlight=False)


def _int_list(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _fail(f"{flag} takes integers separated by commas, e.g. 10,20,50")


def _print_compare(report: CompareReport) -> None:
    o = report.options
    table = Table(
        title=(
            f"{o.clients} clients x {o.dim:,} values, dropout {o.dropout:g}, "
            f"updates: {report.source}"
        ),
        title_justify="left",
    )
    for column in (
        "scheme",
        "included",
        "client s",
        "server s",
        "up B/client",
        "x float32",
        "down B/client",
        "max error (bound)",
        "tolerates",
        "server learns",
        "to see one update",
    ):
        table.add_column(column, justify="left" if column[0] in "stm" else "right")
    for row in report.rows:
        r = row.report
        error = "-" if r.max_abs_error is None else f"{r.max_abs_error:.1e} ({r.error_bound:.0e})"
        table.add_row(
            row.scheme if r.outcome == "completed" else f"{row.scheme} (aborted)",
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
        )
    _wide_console().print(table)


def _wide_console() -> Console:
    """Wide enough for the per-round tables even when the output is not a terminal."""
    return Console(width=None if sys.stdout.isatty() else 150)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def main() -> None:
    app()

"""The ``secagg`` command.

Every error is one line on stderr (``error: ...``), never a traceback. Exit codes: 0 when
the command did what it was asked; 2 for bad input (arguments, files, a deployment that
cannot start: a port in use, a ledger another coordinator holds); 1 for a run that started
and failed (a round that aborted, no cohort in time, a refused or unreachable client);
an optional extra that the command (or one of its options) needs and that is not installed
is 2 too, its one line naming the extra to install (``secagg.extras``);
130 or 143 when SIGINT or SIGTERM stopped ``serve`` or ``join`` (a running round is then
recorded as aborted first).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from secagg.backends import Backend
from secagg.cli_report import (
    export_aggregate,
    format_rounds_table,
    one_line,
    print_error,
    round_json,
    round_line,
)
from secagg.compare import (
    ALL_SCHEMES,
    SCHEMES,
    CompareOptions,
    CompareReport,
    build_scheme,
    run_compare,
    write_plots,
)
from secagg.compare import demo_updates as demo_updates_of
from secagg.dp.calibrate import DpPlan
from secagg.dp.noise import Mechanism
from secagg.dp.settings import (
    DEFAULT_DP_BITS,
    DEFAULT_DP_DELTA,
    DpSettings,
    default_dp_min_cohort,
    name_knobs,
)
from secagg.errors import (
    ConfigurationError,
    DecodeError,
    InputError,
    LedgerError,
    MissingExtra,
    SecAggError,
    UsageError,
)
from secagg.extras import missing_extra, require
from secagg.grouping import GroupedReport, simulate_grouped
from secagg.protocol.runner import RoundOutcome
from secagg.schemes.base import Scheme
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.service.config import CONFIG_FILE, DeploymentConfig
from secagg.service.files import check_writable, refuse_existing, write_array
from secagg.service.settings import CoordinatorSettings
from secagg.service.tasks import Task, TaskSpec, default_l2_clip, task_requirements
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

if TYPE_CHECKING:  # the coordinator (and gRPC) are imported by the commands that run them
    from secagg.service.rounds import RoundSummary

__all__ = ["app", "main", "run"]

app = typer.Typer(
    help="Secure aggregation for federated learning: SecAgg and SecAgg+.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OK_EXIT = 0
USAGE_EXIT = 2
FAILED_EXIT = 1
DEFAULT_MAX_ATTEMPTS = 20  # join: about a minute and a half of retries (backoff up to 5 s)
_MAX_ROUND_ID = 2**63 - 1  # what the ledger (SQLite) can hold


class ProtocolChoice(StrEnum):
    secagg = "secagg"
    secagg_plus = "secagg+"


class SchemeChoice(StrEnum):
    masking = "masking"
    ckks = "ckks"
    plaintext = "plaintext"


class ServerModelChoice(StrEnum):
    """What the server is trusted to do (the names of ``ServerModel``, as in deployment.toml)."""

    semi_honest = "semi-honest"
    semi_malicious = "semi-malicious"


class TaskChoice(StrEnum):
    random = "random"
    digits = "digits"
    digits_torch = "digits-torch"  # the digits model trained with PyTorch (the [torch] extra)


class FrameworkChoice(StrEnum):
    """What the demo's clients train with: the same model and vector layout either way."""

    numpy = "numpy"
    torch = "torch"


_NO_PLAINTEXT_SERVICE = (
    "--scheme plaintext cannot run over the service: it has no plaintext path (plaintext "
    "runs in process only: secagg simulate --scheme plaintext); use masking or ckks"
)


def _fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    """Every error of every command goes out through here: one line, then the exit code."""
    print_error(message)
    raise typer.Exit(code)


# Distributed DP: the same options wherever a user runs rounds (simulate, compare, certs, demo).
DpEpsilon = Annotated[
    float | None,
    typer.Option(
        "--dp-epsilon",
        help="Distributed DP (every client adds noise before masking): the target epsilon "
        "over --dp-rounds rounds.",
    ),
]
DpNoiseMultiplier = Annotated[
    float | None,
    typer.Option(
        "--dp-noise-multiplier",
        help="Distributed DP with this noise multiplier (central noise std at the minimum "
        "cohort / the L2 clip) instead of a target epsilon.",
    ),
]
DpDelta = Annotated[
    float | None, typer.Option("--dp-delta", help=f"DP delta (default {DEFAULT_DP_DELTA:g}).")
]
DpClip = Annotated[
    float | None,
    typer.Option("--dp-clip", help="DP: each update is scaled down to this L2 norm."),
]
DpBits = Annotated[
    int | None,
    typer.Option(
        "--dp-bits",
        help=f"DP: bits per coordinate of the noisy sum (default {DEFAULT_DP_BITS}).",
    ),
]
DpMechanism = Annotated[
    Mechanism | None,
    typer.Option("--dp-mechanism", help="DP noise: skellam (default) or discrete-gaussian."),
]
DpRounds = Annotated[
    int | None,
    typer.Option("--dp-rounds", help="DP: rounds the target epsilon covers (default 1)."),
]
DpSamplingRate = Annotated[
    float | None,
    typer.Option(
        "--dp-sampling-rate",
        help="DP: the chance each client takes part in a round, if you sample clients "
        "(Poisson; default 1).",
    ),
]
# What DpConfig, calibrate and Params call the knobs, as the options that set them.
_DP_OPTIONS = {
    "target_epsilon": "--dp-epsilon",
    "noise_multiplier": "--dp-noise-multiplier",
    "delta": "--dp-delta",
    "l2_clip": "--dp-clip",
    "bits": "--dp-bits",
    "mechanism": "--dp-mechanism",
    "rounds": "--dp-rounds",
    "sampling_rate": "--dp-sampling-rate",
    "min_clients": "--min-cohort",
    "min_cohort": "--min-cohort",
    "max_clients": "--clients",
}


def _dp_settings(
    epsilon: float | None,
    noise_multiplier: float | None,
    delta: float | None,
    clip: float | None,
    bits: int | None,
    mechanism: Mechanism | None,
    rounds: int | None,
    sampling_rate: float | None,
) -> DpSettings | None:
    """What the --dp-* options ask (None: no DP). The clip stays None when not given: each
    command has its own default. ConfigurationError names the option to change."""
    if epsilon is None and noise_multiplier is None:
        given = [
            flag
            for flag, value in (
                ("--dp-delta", delta),
                ("--dp-clip", clip),
                ("--dp-bits", bits),
                ("--dp-mechanism", mechanism),
                ("--dp-rounds", rounds),
                ("--dp-sampling-rate", sampling_rate),
            )
            if value is not None
        ]
        if given:
            raise ConfigurationError(
                f"{given[0]} needs distributed DP turned on: add --dp-epsilon or "
                "--dp-noise-multiplier"
            )
        return None
    if epsilon is not None and noise_multiplier is not None:
        raise ConfigurationError("give --dp-epsilon or --dp-noise-multiplier, not both")
    try:
        return DpSettings(
            l2_clip=clip,
            target_epsilon=epsilon,
            noise_multiplier=noise_multiplier,
            delta=DEFAULT_DP_DELTA if delta is None else delta,
            bits=DEFAULT_DP_BITS if bits is None else bits,
            mechanism=Mechanism.SKELLAM if mechanism is None else mechanism,
            rounds=1 if rounds is None else rounds,
            sampling_rate=1.0 if sampling_rate is None else sampling_rate,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(name_knobs(str(exc), _DP_OPTIONS)) from None


def _error_text(exc: Exception, dp_flags: tuple[object, ...]) -> str:
    """``exc`` as the user's one line: when any --dp-* option was given, the DP knobs the
    message names are spelled as those options."""
    if any(v is not None for v in dp_flags):
        return name_knobs(str(exc), _DP_OPTIONS)
    return str(exc)


def _say(text: str, *, stderr: bool = False) -> None:
    """A line of ordinary output: never markup (it may quote paths and sections)."""
    Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False).print(Text(text))


@app.callback()
def _root() -> None:
    """Secure aggregation for federated learning: SecAgg and SecAgg+."""


# --------------------------------------------------------------------------- simulate
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
    server_model: Annotated[
        ServerModelChoice,
        typer.Option(help="semi-malicious: active mode (signed keys and a consistency round)."),
    ] = ServerModelChoice.semi_honest,
    threat_model: Annotated[str | None, typer.Option(hidden=True)] = None,
    min_cohort: Annotated[
        int | None,
        typer.Option(
            help="Fewest inputs a revealed sum may contain (default 1; with DP, the guarantee "
            "holds from here up: default clients x (1 - max dropout))."
        ),
    ] = None,
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
    dp_epsilon: DpEpsilon = None,
    dp_noise_multiplier: DpNoiseMultiplier = None,
    dp_delta: DpDelta = None,
    dp_clip: DpClip = None,
    dp_bits: DpBits = None,
    dp_mechanism: DpMechanism = None,
    dp_rounds: DpRounds = None,
    dp_sampling_rate: DpSamplingRate = None,
    backend: Annotated[
        Backend,
        typer.Option(
            help="Where the clients and the unmasking run: process (this machine) or ray "
            "(the Ray cluster at RAY_ADDRESS, else a local one; needs secagg[ray])."
        ),
    ] = Backend.PROCESS,
    groups: Annotated[
        int,
        typer.Option(
            min=1,
            help="Split the cohort into this many random groups, each its own secure round; "
            "only the groups' sums are combined.",
        ),
    ] = 1,
) -> None:
    """Run one secure-aggregation round in simulation and report what it cost.

    With --dp-epsilon or --dp-noise-multiplier every client adds discrete noise before
    masking (distributed DP; the mean is unweighted, each update clipped to L2 norm
    --dp-clip, default 1) and the report gives the epsilon of the sum revealed.
    """
    dp_flags = (
        dp_epsilon,
        dp_noise_multiplier,
        dp_delta,
        dp_clip,
        dp_bits,
        dp_mechanism,
        dp_rounds,
        dp_sampling_rate,
    )
    if threat_model is not None:
        _fail(_renamed_threat_model(threat_model))
    if save_aggregate is not None:
        # Before the round: a round of minutes must not end in a path error.
        try:
            check_writable(save_aggregate, "the aggregate")
        except ConfigurationError as exc:
            _fail(str(exc))
    source, n, d = _load_inputs(clients, dim, inputs, seed)
    weight_vector = _load_weights(weights, n)
    if drop and dropout:
        _fail("use either --dropout or --drop, not both")
    try:
        dp = _dp_settings(*dp_flags)
        if dp is not None and scheme is not SchemeChoice.masking:
            raise ConfigurationError(
                f"distributed DP adds noise before masking: drop --scheme {scheme.value}"
            )
        if dp is not None and weight_vector is not None:
            raise ConfigurationError(
                "with distributed DP every client weighs 1 (an unweighted mean): drop --weights"
            )
        _, max_weight = integer_weights(weight_vector, n)
        tolerated = max(0.33, dropout) if max_dropout is None else max_dropout
        if min_cohort is None:
            min_cohort = 1 if dp is None else default_dp_min_cohort(n, tolerated)
        elif not 1 <= min_cohort <= n:
            raise ConfigurationError(f"--min-cohort must be in [1, {n}] (the clients)")
        params = Params(
            dim=d,
            max_clients=n,
            protocol=Protocol(protocol.value),
            clip=clip,
            value_bits=value_bits,
            max_weight=max_weight,
            adversarial_rate=adversarial_rate,
            dropout_rate=tolerated,
            server_model=ServerModel(server_model.value),
            min_cohort=min_cohort,
            degree=degree,
            threshold=threshold,
            dp=None
            if dp is None
            else dp.with_clip(1.0 if dp.l2_clip is None else dp.l2_clip).config(
                dim=d, min_clients=min_cohort, max_clients=n
            ),
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
        if groups > 1:
            grouped = simulate_grouped(
                params
                if scheme is SchemeChoice.masking
                else _scheme_factory(scheme, d, clip, value_bits, max_weight),
                n,
                source,
                groups=groups,
                weights=weight_vector,
                drops=schedule,
                seed=seed,
                backend=backend,
            )
        else:
            result = simulate_round(
                chosen, n, source, weights=weight_vector, drops=schedule, seed=seed, backend=backend
            )
    except (ConfigurationError, InputError) as exc:
        _fail(_error_text(exc, dp_flags))
    if groups > 1:
        _finish_grouped(grouped.report, grouped.aggregate, save_aggregate, json_output)
        return
    report = result.report
    plan = params.dp_plan
    beyond, is_bug = error_verdict(report, plan)
    if save_aggregate is not None and result.aggregate is not None:
        try:
            write_array(save_aggregate, result.aggregate.astype(np.float32))
        except ConfigurationError as exc:
            _fail(str(exc), FAILED_EXIT)
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
            _fail(beyond, FAILED_EXIT)
        _say(f"note: {beyond}", stderr=True)


def _scheme_factory(
    scheme: SchemeChoice, dim: int, clip: float, value_bits: int, max_weight: int
) -> Callable[[int], Scheme]:
    """The scheme for one group of a grouped round (its own keys, sized for the group)."""

    def build(size: int) -> Scheme:
        options = CompareOptions(clients=size, dim=dim, clip=clip, value_bits=value_bits)
        return build_scheme(scheme.value, size, dim, max_weight, options)

    return build


def _finish_grouped(
    report: GroupedReport,
    aggregate: np.ndarray | None,
    save_aggregate: Path | None,
    json_output: bool,
) -> None:
    """A grouped round's output and exit: as a single round's, per group."""
    if save_aggregate is not None and aggregate is not None:
        try:
            write_array(save_aggregate, aggregate.astype(np.float32))
        except ConfigurationError as exc:
            _fail(str(exc), FAILED_EXIT)
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_grouped(report)
    if report.outcome == "aborted":
        raise typer.Exit(FAILED_EXIT)
    if report.max_abs_error is not None and not report.max_abs_error <= report.error_bound:
        _fail(
            f"the aggregate is off by {report.max_abs_error:.3g}, beyond the bound "
            f"{report.error_bound:.3g}",
            FAILED_EXIT,
        )


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
    _say(f"the top level learns {report.top_level_learns}")
    _say(
        f"time: {report.seconds:.2f} s one group after another, "
        f"{report.parallel_seconds:.2f} s with one aggregator per group"
    )
    if report.max_abs_error is not None:
        _say(f"max abs error {report.max_abs_error:.3g} (bound {report.error_bound:.3g})")


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


def _renamed_threat_model(value: str) -> str:
    new = "semi-malicious" if value == "malicious" else "semi-honest"
    return (
        f"--threat-model is now --server-model (the name deployment.toml and the API use): "
        f"use --server-model {new}"
    )


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
    for i in range(array.shape[0]):  # row by row: the array may be larger than memory
        if not np.all(np.isfinite(array[i])):
            _fail(f"{path}: row {i} holds NaN or infinity")
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


def _print_report(report: RoundReport, plan: DpPlan | None = None) -> None:
    console = Console()
    title = f"{report.protocol} round: {report.outcome}"
    if plan is not None:
        title += f", with distributed DP ({plan.mechanism.value})"
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
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
        rows.append(("clip hint", _clip_hint(report.dp_clip_hint, plan.config.l2_clip)))
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
    for key, value in rows:
        table.add_row(Text(key), Text(value))
    console.print(table)


def _clip_hint(hint: float, clip: float) -> str:
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


# --------------------------------------------------------------------------- service
def _load_config(path: Path) -> DeploymentConfig:
    try:
        return DeploymentConfig.load(path)
    except ConfigurationError as exc:
        _fail(str(exc))


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write the deployment.")],
    clients: Annotated[int, typer.Option(help="Client identities to create (at least 3).")] = 10,
    task: Annotated[
        TaskChoice,
        typer.Option(help="What the clients train: sets dim, max weight and clip to fit it."),
    ] = TaskChoice.random,
    dim: Annotated[
        int | None, typer.Option(help="Values per update (random task; default 1000).")
    ] = None,
    max_weight: Annotated[
        int | None,
        typer.Option(help="Largest weight a client may give its update (default: the task's)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Coordinator port.")] = 50051,
    min_clients: Annotated[
        int, typer.Option(help="A round starts once this many clients are connected.")
    ] = 3,
    server_model: Annotated[
        ServerModelChoice | None,
        typer.Option(
            help="masking: semi-malicious is active mode (signed keys, a consistency round); "
            "default semi-honest."
        ),
    ] = None,
    stage_timeout: Annotated[float, typer.Option(help="Seconds per stage.")] = 30.0,
    cohort_wait: Annotated[
        float, typer.Option(help="Seconds serve waits for min_clients before giving up.")
    ] = 60.0,
    scheme: Annotated[
        SchemeChoice,
        typer.Option(
            help="masking (SecAgg/SecAgg+) or ckks (homomorphic encryption: also writes the "
            "CKKS keys; needs the he extra)."
        ),
    ] = SchemeChoice.masking,
    min_cohort: Annotated[
        int | None,
        typer.Option(
            help="Fewest inputs a revealed sum may contain (default 1; with DP, the guarantee "
            "holds from here up: default --min-clients)."
        ),
    ] = None,
    dp_epsilon: DpEpsilon = None,
    dp_noise_multiplier: DpNoiseMultiplier = None,
    dp_delta: DpDelta = None,
    dp_clip: DpClip = None,
    dp_bits: DpBits = None,
    dp_mechanism: DpMechanism = None,
    dp_rounds: DpRounds = None,
    dp_sampling_rate: DpSamplingRate = None,
) -> None:
    """Create a local deployment: CA, server certificate, client identities, allow-list.

    Also writes deployment.toml, which both `serve` and `join` read, and with --scheme ckks
    the CKKS keys: the coordinator's evaluation context and, beside each identity, the
    clients' context with the secret key. With --dp-epsilon (or --dp-noise-multiplier) the
    deployment adds distributed DP ([dp] in deployment.toml; the L2 clip defaults to the
    task's typical update norm). Everything is checked before the first file is written: a
    refused command leaves nothing behind.
    """
    dp_flags = (
        dp_epsilon,
        dp_noise_multiplier,
        dp_delta,
        dp_clip,
        dp_bits,
        dp_mechanism,
        dp_rounds,
        dp_sampling_rate,
    )
    from secagg.schemes.ckks import CkksSettings
    from secagg.service.ckks_deployment import SERVER_CONTEXT_FILE, client_context_path
    from secagg.service.credentials import create_deployment, deployment_files
    from secagg.service.scheme_sides import provision_keys

    try:
        if scheme is SchemeChoice.plaintext:
            raise ConfigurationError(_NO_PLAINTEXT_SERVICE)
        dp = _dp_settings(*dp_flags)
        ckks = scheme is SchemeChoice.ckks
        if ckks and dp is not None:
            raise ConfigurationError(
                "distributed DP adds each client's noise before masking: drop --scheme ckks "
                "(or the --dp-* options)"
            )
        if dp is not None and max_weight not in (None, 1):
            raise ConfigurationError(
                "with distributed DP every client weighs 1 (an unweighted mean): leave "
                "--max-weight out"
            )
        if ckks and server_model is not None:
            raise ConfigurationError(
                "--server-model applies to masking; a CKKS deployment has no server model "
                "(docs/THREAT_MODEL.md says what CKKS trusts the coordinator with)"
            )
        if clients < 3:
            raise ConfigurationError(
                f"--clients must be at least 3 (a round needs 3), got {clients}"
            )
        spec = TaskSpec(Task(task.value), clients=clients)
        needs = task_requirements(spec)
        if needs.dim is not None and dim is not None and dim != needs.dim:
            raise ConfigurationError(
                f"the {task.value} task needs --dim {needs.dim} (its model's size); leave --dim out"
            )
        if dp is None and max_weight is not None and max_weight < needs.max_weight:
            raise ConfigurationError(
                f"the {task.value} task sends weights up to {needs.max_weight}: "
                f"--max-weight {max_weight} would refuse them"
            )
        params: Params | CkksSettings
        if ckks:
            require("he", "CKKS")
            params = CkksSettings(
                dim=needs.dim or (1000 if dim is None else dim),
                max_clients=clients,
                clip=needs.clip,
                max_weight=needs.max_weight if max_weight is None else max_weight,
            )
        else:
            size = needs.dim or (1000 if dim is None else dim)
            if min_cohort is None:
                min_cohort = 1 if dp is None else min_clients
            elif not 1 <= min_cohort <= clients:
                raise ConfigurationError(f"--min-cohort must be in [1, {clients}] (--clients)")
            if dp is not None and dp.l2_clip is None:
                dp = dp.with_clip(default_l2_clip(spec, size))
            params = Params(
                dim=size,
                max_clients=clients,
                clip=needs.clip,
                max_weight=1
                if dp is not None
                else (needs.max_weight if max_weight is None else max_weight),
                server_model=ServerModel((server_model or ServerModelChoice.semi_honest).value),
                min_cohort=min_cohort,
                dp=None
                if dp is None
                else dp.config(dim=size, min_clients=min_cohort, max_clients=clients),
            )
        CoordinatorSettings(
            params,
            port=port,
            min_clients=min_clients,
            stage_timeout=stage_timeout,
            cohort_wait=cohort_wait,
        )
        files = deployment_files(directory, clients)
        tls = files.tls
        keys = (
            [directory / SERVER_CONTEXT_FILE, *map(client_context_path, files.identities.values())]
            if ckks
            else []
        )
        for path in (
            directory / CONFIG_FILE,
            tls.ca_cert,
            tls.server_cert,
            tls.server_key,
            files.allow_list,
            *files.identities.values(),
            *keys,
        ):
            refuse_existing(path)
        deployment = create_deployment(directory, clients)
        provision_keys(directory, deployment.identities, params)
        config = DeploymentConfig.write(
            directory,
            deployment,
            params,
            port=port,
            min_clients=min_clients,
            stage_timeout=stage_timeout,
            cohort_wait=cohort_wait,
            task=spec,
        )
    except ConfigurationError as exc:
        _fail(_error_text(exc, dp_flags))
    what = (
        f"{clients} identities and CKKS contexts (the secret key, mode 0600) under "
        f"{directory / 'clients'}, the coordinator's evaluation context in "
        f"{directory / SERVER_CONTEXT_FILE}"
        if ckks
        else f"{clients} identities under {directory / 'clients'}"
    )
    _say(
        f"wrote {config} and {what} (scheme {scheme.value}, task {task.value}: dim "
        f"{params.dim}, max_weight {params.max_weight}; a round starts once {min_clients} "
        "clients are connected)"
    )
    plan = params.dp_plan
    if plan is not None:
        _say(_dp_summary(plan))


def _dp_summary(plan: DpPlan) -> str:
    """One line on a deployment's distributed DP, for `certs`."""
    c = plan.config
    rounds = f"{c.rounds} round{'s' if c.rounds > 1 else ''}"
    return (
        f"distributed DP ({plan.mechanism.value}): epsilon {plan.epsilon_total:.3g} over "
        f"{rounds} at delta {c.delta:g} for every sum of at least {c.min_clients} inputs "
        f"(min_cohort); noise multiplier {plan.noise_multiplier:.3g}, L2 clip {c.l2_clip:.4g}, "
        f"{plan.ring_bits}-bit ring; every client weighs 1"
    )


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="deployment.toml")],
    rounds: Annotated[int, typer.Option(help="Rounds to run, then exit.")] = 1,
    port: Annotated[int | None, typer.Option(help="Override the configured port.")] = None,
    stage_timeout: Annotated[float | None, typer.Option(help="Seconds per stage.")] = None,
    min_clients: Annotated[int | None, typer.Option(help="Smallest cohort.")] = None,
    cohort_wait: Annotated[float | None, typer.Option(help="Seconds to wait for it.")] = None,
    upload_window: Annotated[
        int | None,
        typer.Option(help="Clients sent a model-sized message (model, upload request) at once."),
    ] = None,
    model_out: Annotated[
        Path | None,
        typer.Option(help="Write the model here (.npy, float32) after every completed round."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (0: any).")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics endpoint.")] = (
        "127.0.0.1"
    ),
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON line per round on stdout.")
    ] = False,
) -> None:
    """Run the coordinator: admit allow-listed clients over TLS and run rounds.

    Stops cleanly on Ctrl-C or SIGTERM (a running round is recorded as aborted).
    """
    import asyncio

    from secagg.service.metrics import CoordinatorMetrics, MetricsEndpoint, serve_metrics
    from secagg.service.run import RunFailed, Stopped, serve_failed
    from secagg.service.run import serve as run_serve

    if metrics_port is not None:
        require("metrics", "--metrics-port")  # before the coordinator takes its port
    try:
        deployment = _load_config(config).with_overrides(
            port=port,
            stage_timeout=stage_timeout,
            min_clients=min_clients,
            cohort_wait=cohort_wait,
            upload_window=upload_window,
        )
    except ConfigurationError as exc:
        _fail(str(exc))

    def report(summary: RoundSummary) -> None:
        if json_output:
            sys.stdout.write(json.dumps(round_json(summary)) + "\n")
            sys.stdout.flush()
        else:
            Console(soft_wrap=True, highlight=False).print(round_line(summary))

    _setup_logging()
    metrics: CoordinatorMetrics | None = None
    endpoint: MetricsEndpoint | None = None
    try:
        if metrics_port is not None:
            metrics = CoordinatorMetrics()
            endpoint = serve_metrics(metrics, metrics_host, metrics_port)
        summaries = asyncio.run(
            run_serve(
                deployment, rounds=rounds, report=report, model_out=model_out, metrics=metrics
            )
        )
    except (ConfigurationError, LedgerError) as exc:
        _fail(str(exc))
    except RunFailed as exc:
        _fail(str(exc), FAILED_EXIT)
    except Stopped as exc:
        raise typer.Exit(exc.exit_code) from None
    finally:
        if endpoint is not None:
            endpoint.close()
    failed = serve_failed(summaries, deployment.ledger)
    if failed is not None:
        _fail(failed, FAILED_EXIT)


@app.command()
def join(
    config: Annotated[Path, typer.Option(help="deployment.toml")],
    identity: Annotated[Path, typer.Option(help="This client's identity file.")],
    target: Annotated[str | None, typer.Option(help="host:port (default: from config).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Leave after this many rounds.")] = None,
    task: Annotated[
        TaskChoice | None, typer.Option(help="What to train (default: the deployment's task).")
    ] = None,
    task_seed: Annotated[
        int | None, typer.Option(help="Seed of the task's data (default: the deployment's).")
    ] = None,
    task_clients: Annotated[
        int | None, typer.Option(help="digits: shares of the data (default: the deployment's).")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option(help="Connection attempts in a row before giving up.")
    ] = DEFAULT_MAX_ATTEMPTS,
    train_seconds: Annotated[float, typer.Option(hidden=True)] = 0.0,
) -> None:
    """Join a coordinator as a client and answer its rounds.

    Logs one line per round (what this client agreed to and how the round ended for it),
    and a summary when it leaves. Ctrl-C or SIGTERM stops it at once, even mid-training.
    """
    from secagg.service.client import Rejected, UpdateFn
    from secagg.service.run import RunFailed, Stopped
    from secagg.service.run import join as run_join
    from secagg.service.tasks import update_function

    deployment = _load_config(config)
    dim = deployment.params.dim
    try:
        if not (train_seconds >= 0 and train_seconds < float("inf")):
            raise ConfigurationError("--train-seconds must be a non-negative number")
        default = deployment.task
        spec = TaskSpec(
            Task(task.value) if task is not None else default.task,
            clients=default.clients if task_clients is None else task_clients,
            seed=default.seed if task_seed is None else task_seed,
        )
    except ConfigurationError as exc:
        _fail(str(exc))

    # Distributed DP's mean is unweighted: the task's weights become 1.
    unweighted = deployment.dp_plan is not None

    def make_update(client_id: int) -> UpdateFn:
        return update_function(
            spec, client_id, dim, train_seconds=train_seconds, unweighted=unweighted
        )

    _setup_logging()
    try:
        stats = run_join(
            deployment,
            identity,
            make_update,
            target=target,
            rounds=rounds,
            max_attempts=max_attempts,
        )
    except ConfigurationError as exc:
        _fail(str(exc))
    except Rejected as exc:
        _fail(f"the coordinator refused this client: {exc}", FAILED_EXIT)
    except Stopped as exc:
        raise typer.Exit(exc.exit_code) from None
    except MissingExtra:
        raise  # run() says it, naming the command
    except (RunFailed, SecAggError) as exc:
        _fail(str(exc), FAILED_EXIT)
    _say(
        f"client {_owner(identity)} left after {stats.rounds} round(s): "
        f"{stats.included} included, {stats.aborted} left early"
    )


@app.command()
def rounds(
    ledger: Annotated[Path, typer.Option(help="The coordinator's ledger file.")],
    export: Annotated[int | None, typer.Option(help="Round whose aggregate to export.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write it (.npy).")] = None,
) -> None:
    """List the rounds in a ledger, or export one round's aggregate."""
    from secagg.ledger import Ledger

    if export is not None:
        if not 1 <= export <= _MAX_ROUND_ID:
            _fail(f"--export must be a round id in [1, {_MAX_ROUND_ID}], got {export}")
        if out is None:
            _fail("--export needs --out FILE.npy")
    try:
        with Ledger.open_readonly(ledger) as book:
            if export is None:
                _wide_console().print(format_rounds_table(book.rounds()))
                return
            assert out is not None
            export_aggregate(book, export, out)
    except (LedgerError, UsageError, DecodeError, ConfigurationError) as exc:
        _fail(str(exc))
    _say(f"wrote the aggregate of round {export} to {out}")


@app.command()
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
    from secagg.dp.budget import ClientBudget
    from secagg.journal import Journal
    from secagg.service.run import journal_path

    if (identity is None) == (journal is None):
        _fail("name the client with --identity FILE or its journal with --journal FILE")
    path = journal if journal is not None else journal_path(identity)  # type: ignore[arg-type]
    if not path.is_file():
        _fail(f"no journal at {path}")
    try:
        book = Journal.open(path)
        entries = book.rounds()
        lines = [audit_line(entry, book.events(entry.round_id)) for entry in entries]
        budget_line = None
        if config is not None:
            plan = _load_config(config).dp_plan
            if plan is not None:
                budget = ClientBudget(plan)
                with book.transaction() as txn:
                    charges = txn.dp_charges(budget.fingerprint)
                budget_line = (
                    f"privacy: {len(charges)} round(s) charged, epsilon {budget.spent(charges):.3g}"
                    f" spent of the deployment's {budget.limit:g}"
                )
        book.close()
    except MissingExtra:
        raise  # run() says it, naming the command
    except SecAggError as exc:
        _fail(str(exc))
    for line in lines:
        _say(line)
    _say(f"{len(entries)} round(s) in {path}")
    if budget_line is not None:
        _say(budget_line)


@app.command("flower-node-key")
def flower_node_key(
    node_id: Annotated[
        int, typer.Argument(help="This SuperNode's id, as `flwr supernode register` printed it.")
    ],
    out: Annotated[Path, typer.Option(help="The identity file to write (mode 0600).")],
) -> None:
    """On a SuperNode: make its Ed25519 identity for active mode. Prints NODE_ID=PUBLIC_KEY,
    the one line to hand to whoever writes nodes.toml (the key itself never leaves)."""
    from secagg.flower.nodes import write_node_identity

    try:
        identity = write_node_identity(out, node_id)
    except ConfigurationError as exc:
        _fail(str(exc))
    _say(f"wrote {out}; keep it on node {node_id} only. Its public key, for nodes.toml:")
    _say(f"{node_id}={identity.signing_key.public.hex()}")


@app.command("flower-nodes")
def flower_nodes(
    nodes: Annotated[
        list[str],
        typer.Argument(
            help="Each SuperNode's id as `flwr supernode register` printed it; in active mode "
            "ID=PUBLIC_KEY as `secagg flower-node-key` printed it on that node.",
            metavar="NODE_ID[=PUBLIC_KEY]...",
        ),
    ],
    out: Annotated[Path, typer.Option(help="The folder to write nodes.toml in.")],
) -> None:
    """Write a Flower deployment's nodes.toml: the allow-list of its SuperNodes' ids and, in
    active mode, each node's identity public key (every node and the ServerApp load it)."""
    from secagg.flower.nodes import NODES_FILE, provision_nodes

    ids, keys = _node_entries(nodes)
    try:
        written = provision_nodes(out, ids, public_keys=keys)
    except ConfigurationError as exc:
        _fail(str(exc))
    mode = "with their identity keys" if written.identities else "(semi-honest: no identities)"
    _say(f"wrote {out / NODES_FILE}: {len(written.node_ids)} node(s) {mode}")


def _node_entries(entries: Sequence[str]) -> tuple[list[int], dict[int, bytes]]:
    """``ID`` or ``ID=HEX`` arguments: the ids, and the keys (all of them or none)."""
    ids: list[int] = []
    keys: dict[int, bytes] = {}
    for entry in entries:
        node, has_key, key = entry.partition("=")
        if not node.isdigit():
            _fail(f"{entry[:40]!r} is not a node id (a decimal number, optionally =PUBLIC_KEY)")
        ids.append(int(node))
        if has_key:
            try:
                keys[int(node)] = bytes.fromhex(key)
            except ValueError:
                _fail(f"node {node}'s public key is not hex")
    if keys and len(keys) != len(ids):
        _fail("give every node its public key (ID=PUBLIC_KEY), or none (semi-honest)")
    return ids, keys


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
    protocol: Annotated[ProtocolChoice, typer.Option(help="Neighbour graph (masking).")] = (
        ProtocolChoice.secagg_plus
    ),
    scheme: Annotated[
        SchemeChoice,
        typer.Option(help="masking (SecAgg/SecAgg+) or ckks (homomorphic encryption)."),
    ] = SchemeChoice.masking,
    min_cohort: Annotated[
        int | None,
        typer.Option(
            help="Fewest inputs a revealed sum may contain (with DP, the guarantee holds from "
            "here up: default clients x 0.67, rounded up)."
        ),
    ] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            "--dp-epsilon",
            help="Train with distributed DP: the target epsilon over all --rounds rounds.",
        ),
    ] = None,
    dp_noise_multiplier: DpNoiseMultiplier = None,
    dp_delta: DpDelta = None,
    dp_clip: Annotated[
        float | None,
        typer.Option(
            "--dp-clip",
            help="DP: the L2 clip (default: the median norm of the first-round updates).",
        ),
    ] = None,
    dp_bits: DpBits = None,
    dp_mechanism: DpMechanism = None,
    framework: Annotated[
        FrameworkChoice,
        typer.Option(help="What the clients train with: numpy, or PyTorch (the [torch] extra)."),
    ] = FrameworkChoice.numpy,
) -> None:
    """Federated training on digits with secure aggregation, beside plaintext FedAvg.

    A TLS coordinator and client processes on loopback; the same split and rounds twice.
    With --dp-epsilon every client process adds discrete noise before masking (distributed
    DP over the whole run; an unweighted mean, in the baseline too).
    """
    from secagg.demo import DemoOptions, print_report, run_demo, write_json

    dp_flags = (dp_epsilon, dp_noise_multiplier, dp_delta, dp_clip, dp_bits, dp_mechanism)
    try:
        if scheme is SchemeChoice.plaintext:
            raise ConfigurationError(
                _NO_PLAINTEXT_SERVICE + " (the demo computes the plaintext baseline itself)"
            )
        options = DemoOptions(
            clients=clients,
            rounds=rounds,
            seed=seed,
            drop_rate=drop_rate,
            protocol=protocol.value,
            scheme=scheme.value,
            # The demo's target covers its whole run (DemoOptions sets its rounds).
            dp=_dp_settings(*dp_flags, None, None),
            min_cohort=min_cohort,
            framework=framework.value,
        )
        if json_path is not None:
            check_writable(json_path, "the report")
    except ConfigurationError as exc:
        _fail(str(exc))
    console = _wide_console()
    with console.status("starting", spinner="dots") as status:
        try:
            report = run_demo(options, progress=lambda text: status.update(Text(text)))
        except (ConfigurationError, LedgerError) as exc:
            _fail(_error_text(exc, dp_flags))
        except MissingExtra:
            raise  # run() says it, naming the command
        except SecAggError as exc:
            _fail(str(exc), FAILED_EXIT)
    print_report(report, console)
    if json_path is not None:
        write_json(report, json_path)
        _say(f"report written to {json_path}")


def _owner(identity: Path) -> str:
    """The id in an identity file that was just used (or "?" if it is gone since)."""
    from secagg.service.identity import ClientIdentity

    try:
        return str(ClientIdentity.load(identity).client_id)
    except ConfigurationError:
        return "?"


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
        str | None,
        typer.Option(
            help=f"Comma-separated subset of {', '.join(ALL_SCHEMES)} (the last needs "
            "--dp-epsilon or --dp-noise-multiplier, and is added when they are given). "
            "Default: all but the last, leaving out ckks where the he extra is missing.",
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
    dp_epsilon: DpEpsilon = None,
    dp_noise_multiplier: DpNoiseMultiplier = None,
    dp_delta: DpDelta = None,
    dp_clip: DpClip = None,
    dp_bits: DpBits = None,
    dp_mechanism: DpMechanism = None,
    dp_rounds: DpRounds = None,
    dp_sampling_rate: DpSamplingRate = None,
) -> None:
    """The same updates through plaintext, SecAgg, SecAgg+ (both threat models) and CKKS.

    With --dp-epsilon (or --dp-noise-multiplier) one more row, secagg+-dp: SecAgg+ with
    distributed DP (an unweighted mean of the updates clipped to --dp-clip, default 1, with
    every client's noise). The privacy column gives each row's epsilon, or none.
    """
    dp_flags = (
        dp_epsilon,
        dp_noise_multiplier,
        dp_delta,
        dp_clip,
        dp_bits,
        dp_mechanism,
        dp_rounds,
        dp_sampling_rate,
    )
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
            dp=_dp_settings(*dp_flags),
            leave_out_missing=schemes is None,
        )
        for name, reason in options.left_out:
            _say(f"note: the {name} row is left out because {reason}", stderr=True)
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
        _fail(_error_text(exc, dp_flags))
    if json_output:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _print_compare(report)
    if plots is not None:
        for path in write_plots(report, plots):
            _say(f"wrote {path}", stderr=json_output)


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
    _wide_console().print(table)
    for row in report.rows:
        hint, dp = row.report.dp_clip_hint, row.report.facts.dp
        if hint is not None and dp is not None:
            _say(f"note: {row.scheme}: {_clip_hint(hint, dp.l2_clip)}")


def _wide_console() -> Console:
    """Wide enough for the per-round tables even when the output is not a terminal."""
    return Console(width=None if sys.stdout.isatty() else 150)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _click_exception() -> type[Exception]:
    """Click's base exception, wherever this typer keeps click (vendored or not)."""
    for kind in typer.BadParameter.__mro__:
        if kind.__name__ == "ClickException":
            return kind
    raise ImportError("typer's click has no ClickException")  # pragma: no cover


def run(args: Sequence[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv[1:]``); the exit code."""
    command = typer.main.get_command(app)
    click_error = _click_exception()
    try:
        result = command.main(
            list(sys.argv[1:] if args is None else args), prog_name="secagg", standalone_mode=False
        )
    except click_error as exc:
        text: str = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":
            # No arguments at all: the help is the answer (some click versions print it
            # themselves, others hand it over as the message).
            if text.strip():
                sys.stderr.write(text + "\n")
            return USAGE_EXIT
        # Bad arguments: one line (click would draw a usage box), and where to look.
        context = getattr(exc, "ctx", None)
        where = getattr(context, "command_path", "") or "secagg"
        print_error(f"{one_line(text)} (see {where} --help)")
        return USAGE_EXIT
    except (KeyboardInterrupt, typer.Abort):
        return 130
    except Exception as exc:
        # The one place a missing extra becomes its line, whichever command, option or
        # import found it (a MissingExtra, or a bare ModuleNotFoundError of an extra's
        # module); anything else is a bug, and its traceback is the report.
        missing = missing_extra(exc)
        if missing is None:
            raise
        print_error(missing.for_command(_command_path(command, args)))
        return USAGE_EXIT
    return result if isinstance(result, int) else OK_EXIT


def _command_path(group: object, args: Sequence[str] | None) -> str:
    """``secagg demo``: the command ``args`` ran (``secagg`` if it names none)."""
    commands = getattr(group, "commands", {})
    given = list(sys.argv[1:] if args is None else args)
    name = next((a for a in given if not a.startswith("-")), None)
    return f"secagg {name}" if name in commands else "secagg"


def main() -> None:
    # gRPC's C core writes its own log lines to stderr (a failed bind, a peer's GOAWAY):
    # errors reach the operator as our one line instead. GRPC_VERBOSITY=ERROR brings them
    # back; it is read once, when grpc is first imported (by the commands that use it).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    sys.exit(run())

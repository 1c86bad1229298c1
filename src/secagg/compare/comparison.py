"""The comparison itself: its options, each row's round, the report and its plots (the
package's docstring says what ``secagg compare`` compares)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.compare import ALL_SCHEMES, CENTRAL_DP_SCHEME, DP_SCHEME, SCHEMES
from secagg.compare.central import CENTRAL_DISCLOSURE, central_round
from secagg.dp.calibrate import carried_noise_multiplier
from secagg.dp.settings import DpSettings, cohort_dp
from secagg.errors import ConfigurationError, MissingExtra
from secagg.extras import require
from secagg.schemes.base import Scheme
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.plaintext import PlaintextScheme
from secagg.simulate import (
    DropSchedule,
    InputSource,
    RoundReport,
    integer_weights,
    random_inputs,
    root_randomness,
    simulate_round,
)

__all__ = [
    "CompareOptions",
    "CompareReport",
    "run_compare",
    "write_plots",
]

# The L2 clip of the DP row when the settings name none.
DEFAULT_DP_CLIP = 1.0
# Rows that need an optional extra: (the extra, what needs it).
ROW_EXTRAS = {"ckks": ("he", "CKKS")}


COLOURS = {
    "plaintext": "#888888",
    "secagg": "#1f77b4",
    "secagg-active": "#1f4e79",
    "secagg+": "#2ca02c",
    "secagg+-active": "#1b6e1b",
    "ckks": "#d62728",
    DP_SCHEME: "#9467bd",
    CENTRAL_DP_SCHEME: "#e377c2",
}


@dataclass(frozen=True)
class CompareOptions:
    clients: int = 20
    dim: int = 100_000
    dropout: float = 0.0
    seed: int = 0
    clip: float = 1.0
    value_bits: int = 16
    schemes: tuple[str, ...] = SCHEMES
    workers: int | None = 1  # one process: the client and server times are comparable
    # Distributed DP for the secagg+-dp row and its central-dp baseline (both added to the
    # schemes when given).
    dp: DpSettings | None = None
    # True: a row whose optional extra is not installed is left out (named in left_out with
    # the reason), as the command does with its default rows; False: it is refused
    # (MissingExtra).
    leave_out_missing: bool = False
    left_out: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 3 <= self.clients <= 10_000:
            raise ConfigurationError("--clients must be between 3 and 10,000")
        if self.dim < 1:
            raise ConfigurationError("--dim must be at least 1")
        if not 0.0 <= self.dropout < 0.5:
            raise ConfigurationError("--dropout must be in [0, 0.5)")
        unknown = set(self.schemes) - set(ALL_SCHEMES)
        if unknown:
            raise ConfigurationError(
                f"unknown scheme(s) {sorted(unknown)}: choose from {', '.join(ALL_SCHEMES)}"
            )
        for name in (DP_SCHEME, CENTRAL_DP_SCHEME):
            if self.dp is None and name in self.schemes:
                raise ConfigurationError(
                    f"the {name} row needs distributed DP settings: add --dp-epsilon or "
                    "--dp-noise-multiplier"
                )
        if self.dp is not None:
            # The central baseline sits right after the distributed row it is measured against.
            schemes = [s for s in self.schemes if s != CENTRAL_DP_SCHEME]
            if DP_SCHEME not in schemes:
                schemes.append(DP_SCHEME)
            schemes.insert(schemes.index(DP_SCHEME) + 1, CENTRAL_DP_SCHEME)
            object.__setattr__(self, "schemes", tuple(schemes))
        # Every row's extra before the first row runs: a run of minutes must not end on it.
        missing: dict[str, str] = {}
        for name in self.schemes:
            if name in ROW_EXTRAS:
                try:
                    require(*ROW_EXTRAS[name])
                except MissingExtra as exc:
                    if not self.leave_out_missing:
                        raise
                    missing[name] = str(exc)
        if missing:
            kept = tuple(s for s in self.schemes if s not in missing)
            object.__setattr__(self, "schemes", kept)
            object.__setattr__(self, "left_out", (*self.left_out, *missing.items()))


@dataclass
class Row:
    """One scheme's line in the comparison."""

    scheme: str
    report: RoundReport
    server_learns: str
    to_see_one_update: str
    tolerates: str
    # DP rows: the noise multiplier the revealed sum actually carried (its noise std over the
    # clip, for the inputs it held), and the one planned (distributed: for the minimum
    # cohort; central: the curator's z before its grid).
    noise_multiplier: float | None = None
    planned_noise_multiplier: float | None = None

    @property
    def privacy(self) -> str:
        """The revealed sum's DP guarantee, or "none" (the sum is revealed exactly)."""
        epsilon = self.report.epsilon
        if epsilon is None:
            return "none"
        dp = self.report.facts.dp
        privacy = f"epsilon {epsilon:.3g} (delta {None if dp is None else dp.delta})"
        removed = self.report.noise_taken_off
        if removed is not None:
            privacy += (
                f"; noise layers c={removed.count} A={removed.corrupt} w={removed.units}, "
                f"multiplier {removed.noise_multiplier:.3g}"
            )
        return privacy

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "scheme": self.scheme,
            "outcome": r.outcome,
            "abort_reason": r.abort_reason,
            "clients": r.clients,
            "dim": r.dim,
            "included": len(r.included),
            "client_seconds": r.client_seconds,
            "server_seconds": r.server_seconds,
            "seconds": r.seconds,
            "upload_bytes_per_client": r.upload_bytes_per_client,
            "download_bytes_per_client": r.download_bytes_per_client,
            "upload_vs_float32": r.upload_bytes_per_client / r.plaintext_bytes_per_client,
            "max_abs_error": r.max_abs_error,
            "error_bound": r.error_bound,
            "clipped_values": r.clipped_values,
            "server_learns": self.server_learns,
            "to_see_one_update": self.to_see_one_update,
            "tolerates": self.tolerates,
            # The (epsilon, delta) guarantee of the revealed sum; None: no DP (an exact sum).
            "epsilon": r.epsilon,
            "privacy": self.privacy,
            "dp_noise_multiplier_carried": self.noise_multiplier,
            "dp_noise_multiplier_planned": self.planned_noise_multiplier,
            "dp_clip_hint": r.dp_clip_hint,
            "details": r.facts.as_dict(),
        }


@dataclass
class CompareReport:
    options: CompareOptions
    source: str
    rows: list[Row] = field(default_factory=list)
    sweeps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        o = self.options
        dp = o.dp
        return {
            "clients": o.clients,
            "dim": o.dim,
            "dropout": o.dropout,
            "seed": o.seed,
            "dp": None
            if dp is None
            else {
                "target_epsilon": dp.target_epsilon,
                "noise_multiplier": dp.noise_multiplier,
                "delta": dp.delta,
                "l2_clip": DEFAULT_DP_CLIP if dp.l2_clip is None else dp.l2_clip,
                "bits": dp.bits,
                "mechanism": dp.mechanism.value,
                "rounds": dp.rounds,
                "sampling_rate": dp.sampling_rate,
            },
            "source": self.source,
            "rows": [row.to_json() for row in self.rows],
            # Rows left out because their extra is missing, and why.
            "left_out": dict(o.left_out),
            "sweeps": self.sweeps,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def build_scheme(name: str, n: int, dim: int, max_weight: int, options: CompareOptions) -> Scheme:
    """The deployment a comparison row runs, for ``n`` clients of ``dim`` values."""
    if name == "plaintext":
        return PlaintextScheme(dim=dim, max_weight=max_weight)
    if name == "ckks":
        from secagg.hazmat.ckks import CkksParameters
        from secagg.schemes.ckks import CkksScheme, simulated_keys

        ckks_params = CkksParameters()
        client, server = simulated_keys(ckks_params)
        return CkksScheme(
            dim=dim,
            max_weight=max_weight,
            clip=options.clip,
            params=ckks_params,
            client_context=client,
            server_context=server,
        )
    protocol = Protocol.SECAGG_PLUS if name.startswith("secagg+") else Protocol.SECAGG
    model = ServerModel.SEMI_MALICIOUS if name.endswith("-active") else ServerModel.SEMI_HONEST
    # Tolerate the dropout the comparison injects, at least the usual third.
    dropout_rate = max(0.33, options.dropout)
    dp = None
    min_cohort = 1
    if name == DP_SCHEME:
        if options.dp is None:
            raise ConfigurationError(f"the {DP_SCHEME} row needs distributed DP settings")
        # Calibrated for the smallest sum the round is designed to survive; unweighted.
        chosen = cohort_dp(
            options.dp,
            dim=dim,
            clients=n,
            dropout_rate=dropout_rate,
            default_clip=lambda: DEFAULT_DP_CLIP,
        )
        min_cohort, dp = chosen.min_cohort, chosen.config
        max_weight = 1
    params = Params(
        dim=dim,
        max_clients=n,
        protocol=protocol,
        server_model=model,
        clip=options.clip,
        value_bits=options.value_bits,
        max_weight=max_weight,
        dropout_rate=dropout_rate,
        min_cohort=min_cohort,
        dp=dp,
    )
    return params.simulated(range(n), root_randomness(options.seed, f"scheme/{name}"))


def _drops(scheme: Scheme, n: int, options: CompareOptions) -> DropSchedule:
    """The same clients drop in every scheme (the same seed picks them), each at a random
    stage of that scheme's round."""
    return DropSchedule.random(
        n,
        options.dropout,
        root_randomness(options.seed, "compare/dropout"),
        stages=[s.value for s in scheme.stages],
    )


def compare_once(
    options: CompareOptions,
    inputs: InputSource,
    n: int,
    dim: int,
    weights: NDArray[np.floating] | None = None,
) -> list[Row]:
    _, max_weight = integer_weights(weights, n)
    rows = []
    for name in options.schemes:
        if name == CENTRAL_DP_SCHEME:
            continue  # run right after the distributed row, over the clients it included
        scheme = build_scheme(name, n, dim, max_weight, options)
        drops = _drops(scheme, n, options)
        result = simulate_round(
            scheme,
            n,
            inputs,
            # Distributed DP's mean is unweighted: every client weighs 1.
            weights=None if name == DP_SCHEME else weights,
            drops=drops,
            seed=options.seed,
            workers=options.workers,
            baseline=False,
        )
        disclosure = scheme.disclosure(n)
        learns = disclosure.server_learns
        if result.report.epsilon is not None:
            learns += ", with every client's DP noise"
        row = Row(
            name,
            result.report,
            learns,
            disclosure.to_see_one_update,
            disclosure.tolerates,
        )
        rows.append(row)
        plan = scheme.dp_plan
        if plan is None:
            continue
        row.planned_noise_multiplier = plan.noise_multiplier
        included = result.report.included
        if included:
            row.noise_multiplier = carried_noise_multiplier(plan, len(included))
        else:  # an aborted round: the curator would still have had everyone who stayed
            leaving = {c for ids in drops.at.values() for c in ids}
            included = tuple(c for c in range(n) if c not in leaving)
        if CENTRAL_DP_SCHEME in options.schemes:
            central = central_round(
                plan, inputs, n, included, seed=options.seed, workers=options.workers
            )
            rows.append(
                Row(
                    CENTRAL_DP_SCHEME,
                    central.report,
                    *CENTRAL_DISCLOSURE,
                    noise_multiplier=central.noise_multiplier,
                    planned_noise_multiplier=central.planned_noise_multiplier,
                )
            )
    return rows


def run_compare(
    options: CompareOptions,
    *,
    inputs: NDArray[np.floating] | None = None,
    source: str = "random",
    sweep_clients: Sequence[int] = (),
    sweep_dim: Sequence[int] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> CompareReport:
    """The comparison at ``options``' size (on ``inputs``, rows = clients, if given), and
    the sweeps over clients and dimension on random updates."""
    if inputs is not None:
        array = np.asarray(inputs, dtype=np.float32)
        n, dim = array.shape
        options = CompareOptions(**{**options.__dict__, "clients": n, "dim": dim})

        def source_of(i: int) -> NDArray[np.floating]:
            return np.asarray(array[i])

        report = CompareReport(options, source)
        progress(f"{n} clients x {dim} values from {source}")
        report.rows = compare_once(options, source_of, n, dim)
    else:
        report = CompareReport(options, "random")
        progress(f"{options.clients} clients x {options.dim} random values")
        report.rows = compare_once(
            options,
            random_inputs(options.dim, options.seed),
            options.clients,
            options.dim,
        )
    for axis, values in (("clients", sweep_clients), ("dim", sweep_dim)):
        points = []
        for value in values:
            n = value if axis == "clients" else options.clients
            dim = value if axis == "dim" else options.dim
            progress(f"sweep: {n} clients x {dim} values")
            sized = CompareOptions(**{**options.__dict__, "clients": n, "dim": dim})
            for row in compare_once(sized, random_inputs(dim, options.seed), n, dim):
                points.append({axis: value, **row.to_json()})
        if points:
            report.sweeps[axis] = points
    return report


def write_plots(report: CompareReport, directory: Path) -> list[Path]:
    """PNG plots of the comparison (and its sweeps) into ``directory`` (the ``bench`` extra:
    matplotlib). The comparison's costs sit above what each scheme protects (the table's
    columns: the dropout it tolerates, what the server learns, who must collude to see one
    update, the privacy of the sum), so a cheap bar is never read without its guarantee."""
    require("bench", "the plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names = [
        row.scheme
        if row.report.epsilon is None
        else f"{row.scheme}\n(eps {row.report.epsilon:.2g})"
        for row in report.rows
    ]
    colours = [COLOURS.get(row.scheme, "#444444") for row in report.rows]
    # Costs on top; below them, one table row per scheme, as tall as the rows need.
    table_height = 0.3 * (len(report.rows) + 1)
    figure = plt.figure(figsize=(18, 5.2 + table_height))
    grid = figure.add_gridspec(2, 4, height_ratios=(4.5, table_height))
    axes = [figure.add_subplot(grid[0, i]) for i in range(4)]
    panels = (
        ("upload per client (x float32)", [r.to_json()["upload_vs_float32"] for r in report.rows]),
        ("client seconds", [r.report.client_seconds for r in report.rows]),
        ("server seconds", [r.report.server_seconds for r in report.rows]),
        ("max abs error", [max(r.report.max_abs_error or 0.0, 1e-18) for r in report.rows]),
    )
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color=colours)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=45)
    _protection_table(figure.add_subplot(grid[1, :]), report.rows, colours)
    o = report.options
    figure.suptitle(
        f"{o.clients} clients x {o.dim:,} values, dropout {o.dropout:g} ({report.source})"
    )
    figure.tight_layout()
    path = directory / "compare.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    for axis, points in report.sweeps.items():
        figure, sweep_axes = plt.subplots(1, 3, figsize=(15, 4.8))
        for name in (row.scheme for row in report.rows):
            mine = [p for p in points if p["scheme"] == name]
            xs = [p[axis] for p in mine]
            for ax, key in zip(
                sweep_axes,
                ("client_seconds", "server_seconds", "upload_bytes_per_client"),
                strict=True,
            ):
                ax.plot(xs, [p[key] for p in mine], marker="o", label=name, color=COLOURS.get(name))
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel(axis)
                ax.set_title(key.replace("_", " "))
        sweep_axes[0].legend()
        # What stays fixed while the axis moves: without it the curves have no scale.
        fixed = f"{o.dim:,} values" if axis == "clients" else f"{o.clients} clients"
        figure.suptitle(
            f"Over {'the number of clients' if axis == 'clients' else 'the dimension'}, at "
            f"{fixed}, dropout {o.dropout:g} (random updates)"
        )
        figure.tight_layout()
        path = directory / f"compare_{axis}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _protection_table(ax: Any, rows: Sequence[Row], colours: Sequence[str]) -> None:
    """What each scheme protects, as a table under the cost panels (the same words as the
    command's table)."""
    ax.axis("off")
    columns = (
        "scheme",
        "dropout tolerated",
        "what the server learns",
        "who must collude to see one update",
        "privacy of the sum",
    )
    cells = [
        [row.scheme, row.tolerates, row.server_learns, row.to_see_one_update, row.privacy]
        for row in rows
    ]
    table = ax.table(
        cellText=cells,
        colLabels=columns,
        colWidths=(0.09, 0.17, 0.31, 0.31, 0.12),
        cellLoc="left",
        bbox=(0.0, 0.0, 1.0, 1.0),  # the whole panel: one line of text per row
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (line, column), cell in table.get_celld().items():
        cell.PAD = 0.02  # of the cell's width: matplotlib's 0.1 pushes long words out
        if line == 0:
            cell.set_text_props(weight="bold")
        elif column == 0:
            cell.set_text_props(color=colours[line - 1], weight="bold")
    ax.set_title("what each scheme protects", loc="left")


def demo_updates(clients: int, seed: int) -> NDArray[np.float32]:
    """The demo's first-round updates: each client's local training step on the digits from
    the same initial model (needs the ``[fl]`` extra)."""
    from secagg.fl.data import load_digits_split
    from secagg.fl.digits import demo_model, digits_task

    split = load_digits_split(clients, seed=seed)
    model = demo_model(split).init(seed)
    rows = [
        np.asarray(digits_task(c, clients, seed)(model, 0)[0], np.float32) for c in range(clients)
    ]
    if not rows or not math.isfinite(float(np.max(np.abs(rows)))):
        raise ConfigurationError("the demo task produced no usable updates")
    return np.stack(rows)

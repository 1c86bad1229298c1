"""``secagg simulate``: one round in process, or ``--rounds R`` over one cohort (a session
that spans rounds, or one-shot rounds), and what it cost.

The options are declared here with nothing heavier than typer; the round (numpy, the
schemes, the simulator) is imported when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secagg.cli.options import (
    NO_DP,
    BackendChoice,
    DpFlags,
    Dropout,
    ProtocolChoice,
    SchemeChoice,
    ServerModelChoice,
    dp_options,
)
from secagg.cli.output import fail, started
from secagg.protocol.stages import DROP_STAGES

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from secagg.backends import Backend
    from secagg.dp.settings import DpSettings
    from secagg.schemes.base import Scheme
    from secagg.schemes.masking.parameters import Params
    from secagg.simulate import DropSchedule, InputSource
    from secagg.simulate.rounds import RunResult

__all__ = ["simulate"]


@dp_options()
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
    dropout: Dropout = 0.0,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help=f"[ROUND:]STAGE=ID,ID,... (repeatable; with --rounds, without ROUND: every "
            f"round); stages: {', '.join(DROP_STAGES)}."
        ),
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
    dp: DpFlags = NO_DP,
    backend: Annotated[
        BackendChoice,
        typer.Option(
            help="Where the clients and the unmasking run: process (this machine) or ray "
            "(the Ray cluster at RAY_ADDRESS, else a local one; needs secagg[ray])."
        ),
    ] = BackendChoice.process,
    groups: Annotated[
        int,
        typer.Option(
            min=1,
            help="Split the cohort into this many random groups, each its own secure round; "
            "only the groups' sums are combined.",
        ),
    ] = 1,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run this many rounds over the cohort, fresh inputs each: as a session (set up "
            "once, then two messages a round, three with semi-malicious; a new set-up when the "
            "session cannot go on) unless --one-shot. Exits 1 if any round aborted.",
        ),
    ] = None,
    one_shot: Annotated[
        bool, typer.Option("--one-shot", help="With --rounds: separate one-shot rounds.")
    ] = False,
    session_rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="With --rounds: the most rounds a session runs (default: all of them)."
        ),
    ] = None,
    min_live_neighbours: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --rounds: a session's k_min, the fewest live neighbours a member masks "
            "with; fewer and the next round needs a new set-up (default: the threshold t).",
        ),
    ] = None,
) -> None:
    """Run one secure-aggregation round in simulation and report what it cost.

    With --dp-epsilon or --dp-noise-multiplier every client adds discrete noise before
    masking (distributed DP; the mean is unweighted, each update clipped to L2 norm
    --dp-clip, default 1) and the report gives the epsilon of the sum revealed.

    With --rounds R the report has a row per round (its kind: set-up+round, session or
    one-shot) and per set-up, each round checked against the exact mean of exactly the
    clients it included; --inputs then gives every round the same rows.
    """
    from secagg.backends import Backend
    from secagg.cli.arrays import check_target, load_inputs, load_weights
    from secagg.cli.simulate_report import finish_grouped, finish_round, finish_rounds
    from secagg.errors import ConfigurationError, InputError
    from secagg.grouping import simulate_grouped
    from secagg.simulate import integer_weights, simulate_round
    from secagg.simulate.rounds import SETUP_STAGES, round_stages

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    if threat_model is not None:
        fail(_renamed_threat_model(threat_model))
    if rounds is None and (
        one_shot or session_rounds is not None or min_live_neighbours is not None
    ):
        fail("--one-shot, --session-rounds and --min-live-neighbours need --rounds")
    if rounds is not None and groups > 1:
        fail("--groups runs one round: drop --rounds, or --groups")
    if one_shot and (session_rounds is not None or min_live_neighbours is not None):
        fail("--session-rounds and --min-live-neighbours are for sessions: drop --one-shot")
    if save_aggregate is not None:
        check_target(save_aggregate)
    source, n, d = load_inputs(clients, dim, inputs, seed)
    weight_vector = load_weights(weights, n)
    if drop and dropout:
        fail("use either --dropout or --drop, not both")
    try:
        settings = _dp_for(dp, scheme, weighted=weight_vector is not None)
        _, max_weight = integer_weights(weight_vector, n)
        tolerated = max(0.33, dropout) if max_dropout is None else max_dropout
        params = _masking_params(
            n, d, settings, protocol, server_model, tolerated, min_cohort, max_weight,
            clip=clip, value_bits=value_bits, adversarial_rate=adversarial_rate,
            degree=degree, threshold=threshold,
        )  # fmt: skip
        build = _scheme_factory(scheme, d, clip, value_bits, max_weight)
        chosen: Scheme | Params = params
        stages = tuple(s.value for s in (*SETUP_STAGES, *round_stages(params.active)))
        if scheme is not SchemeChoice.masking:
            chosen = build(n)
            stages = tuple(s.value for s in chosen.stages)
        where = Backend(backend.value)
        if rounds is not None:
            if scheme is not SchemeChoice.masking and not one_shot:
                raise ConfigurationError(
                    f"sessions that span rounds are masking's: add --one-shot for {scheme.value}"
                )
            run = _run_rounds(
                chosen, n, d, rounds, inputs is None, source, weight_vector, drop, dropout,
                seed=seed, backend=where, one_shot=one_shot, session_rounds=session_rounds,
                min_live_neighbours=min_live_neighbours,
            )  # fmt: skip
        elif groups > 1:
            schedule = _drop_schedule(drop, dropout, seed, n, stages)
            grouped = simulate_grouped(
                params if scheme is SchemeChoice.masking else build,
                n, source, groups=groups, weights=weight_vector, drops=schedule, seed=seed,
                backend=where,
            )  # fmt: skip
        else:
            schedule = _drop_schedule(drop, dropout, seed, n, stages)
            result = simulate_round(
                chosen, n, source, weights=weight_vector, drops=schedule, seed=seed, backend=where
            )
    except (ConfigurationError, InputError) as exc:
        fail(dp.error_text(exc))
    if rounds is not None:
        finish_rounds(run, params.dp_plan, save_aggregate, json_output)
    elif groups > 1:
        finish_grouped(grouped, save_aggregate, json_output)
    else:
        finish_round(result, params.dp_plan, save_aggregate, json_output)


def _dp_for(dp: DpFlags, scheme: SchemeChoice, *, weighted: bool) -> DpSettings | None:
    """The DP the options ask, refused where the round cannot add it."""
    from secagg.errors import ConfigurationError

    settings = dp.settings()
    if settings is not None and scheme is not SchemeChoice.masking:
        raise ConfigurationError(
            f"distributed DP adds noise before masking: drop --scheme {scheme.value}"
        )
    if settings is not None and weighted:
        raise ConfigurationError(
            "with distributed DP every client weighs 1 (an unweighted mean): drop --weights"
        )
    return settings


def _masking_params(
    n: int,
    d: int,
    dp: DpSettings | None,
    protocol: ProtocolChoice,
    server_model: ServerModelChoice,
    tolerated: float,
    min_cohort: int | None,
    max_weight: int,
    *,
    clip: float,
    value_bits: int,
    adversarial_rate: float,
    degree: int | None,
    threshold: int | None,
) -> Params:
    """Masking's parameters for the round (its stages and its DP plan, whatever the scheme)."""
    from secagg.dp.settings import cohort_dp
    from secagg.errors import ConfigurationError
    from secagg.schemes.masking.parameters import Params, Protocol, ServerModel

    if min_cohort is not None and not 1 <= min_cohort <= n:
        raise ConfigurationError(f"--min-cohort must be in [1, {n}] (the clients)")
    # Under DP: the smallest sum the round is designed to survive, and an L2 clip of 1.
    chosen = cohort_dp(
        dp,
        dim=d,
        clients=n,
        dropout_rate=tolerated,
        min_cohort=min_cohort,
        default_clip=lambda: 1.0,
    )
    return Params(
        dim=d,
        max_clients=n,
        protocol=Protocol(protocol.value),
        clip=clip,
        value_bits=value_bits,
        max_weight=max_weight,
        adversarial_rate=adversarial_rate,
        dropout_rate=tolerated,
        server_model=ServerModel(server_model.value),
        min_cohort=chosen.min_cohort,
        degree=degree,
        threshold=threshold,
        dp=chosen.config,
    )


def _scheme_factory(
    scheme: SchemeChoice, dim: int, clip: float, value_bits: int, max_weight: int
) -> Callable[[int], Scheme]:
    """The scheme for a cohort of ``size`` clients when it is not masking (for a grouped
    round, each group's own: its own keys, sized for the group)."""
    from secagg.compare.comparison import CompareOptions, build_scheme

    def build(size: int) -> Scheme:
        options = CompareOptions(clients=size, dim=dim, clip=clip, value_bits=value_bits)
        return build_scheme(scheme.value, size, dim, max_weight, options)

    return build


def _drop_schedule(
    drop: list[str] | None, dropout: float, seed: int | None, n: int, stages: tuple[str, ...]
) -> DropSchedule:
    """``--drop``'s schedule, else ``--dropout``'s random one over the stages the round runs."""
    from secagg.simulate import DropSchedule, root_randomness

    if drop:
        schedule = DropSchedule.parse(drop)
    else:
        schedule = DropSchedule.random(n, dropout, root_randomness(seed, "dropout"), stages=stages)
    schedule.check_ids(n)
    return schedule


def _run_rounds(
    chosen: Scheme | Params,
    n: int,
    d: int,
    rounds: int,
    random: bool,
    source: InputSource,
    weights: NDArray[np.float64] | None,
    drop: list[str] | None,
    dropout: float,
    *,
    seed: int | None,
    backend: Backend,
    one_shot: bool,
    session_rounds: int | None,
    min_live_neighbours: int | None,
) -> RunResult:
    """``--rounds``: the run, its inputs fresh each round (random) or the file's every round."""
    from secagg.simulate.rounds import DropPlan, random_round_inputs, simulate_rounds

    if random:
        inputs = random_round_inputs(d, seed)
    else:

        def inputs(round_index: int, client_id: int) -> NDArray[np.floating]:
            return source(client_id)

    plan = DropPlan.parse(drop) if drop else DropPlan(rate=dropout, seed=seed)
    return simulate_rounds(
        chosen,
        n,
        inputs,
        rounds,
        session=not one_shot,
        session_rounds=session_rounds,
        min_live_neighbours=min_live_neighbours,
        weights=weights,
        drops=plan,
        seed=seed,
        backend=backend,
    )


def _renamed_threat_model(value: str) -> str:
    new = "semi-malicious" if value == "malicious" else "semi-honest"
    return (
        f"--threat-model is now --server-model (the name deployment.toml and the API use): "
        f"use --server-model {new}"
    )

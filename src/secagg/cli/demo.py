"""``secagg demo``: federated training on digits with secure aggregation, beside plaintext
FedAvg (``secagg.demo``, imported when the command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secagg.cli.options import (
    NO_DP,
    NO_PLAINTEXT_SERVICE,
    DpFlags,
    FrameworkChoice,
    ProtocolChoice,
    SchemeChoice,
    dp_options,
)
from secagg.cli.output import FAILED_EXIT, fail, say, started, wide_console

__all__ = ["demo"]


# The demo's target covers its whole run (it has no --dp-rounds, nor sampling), and its clip
# defaults to the first round's updates: two of the options in its own words.
@dp_options(
    leave_out=("rounds", "sampling_rate"),
    helps={
        "target_epsilon": "Train with distributed DP: the target epsilon over all --rounds rounds.",
        "l2_clip": "DP: the L2 clip (default: the median norm of the first-round updates).",
    },
)
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
    dp: DpFlags = NO_DP,
    framework: Annotated[
        FrameworkChoice,
        typer.Option(help="What the clients train with: numpy, or PyTorch (the [torch] extra)."),
    ] = FrameworkChoice.numpy,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="Train in this process over the simulator, no deployment: the fixed cohort "
            "runs as one session (set up once, then two messages a round; masking).",
        ),
    ] = False,
) -> None:
    """Federated training on digits with secure aggregation, beside plaintext FedAvg.

    A TLS coordinator and client processes on loopback (one-shot rounds, each with its own
    set-up), or with --in-process the simulator's clients in this process (a session over the
    fixed cohort, set up once); the same split and rounds twice.
    With --dp-epsilon every client process adds discrete noise before masking (distributed
    DP over the whole run; an unweighted mean, in the baseline too).
    """
    from rich.text import Text

    from secagg.demo import DemoOptions, print_report, run_demo, write_json
    from secagg.errors import ConfigurationError, LedgerError, MissingExtra, SecAggError
    from secagg.service.files import check_writable

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    try:
        if scheme is SchemeChoice.plaintext:
            raise ConfigurationError(
                NO_PLAINTEXT_SERVICE + " (the demo computes the plaintext baseline itself)"
            )
        options = DemoOptions(
            clients=clients,
            rounds=rounds,
            seed=seed,
            drop_rate=drop_rate,
            protocol=protocol.value,
            scheme=scheme.value,
            # The demo's target covers its whole run (DemoOptions sets its rounds).
            dp=dp.settings(),
            min_cohort=min_cohort,
            framework=framework.value,
            in_process=in_process,
        )
        if json_path is not None:
            check_writable(json_path, "the report")
    except ConfigurationError as exc:
        fail(str(exc))
    console = wide_console()
    with console.status("starting", spinner="dots") as status:
        try:
            report = run_demo(options, progress=lambda text: status.update(Text(text)))
        except (ConfigurationError, LedgerError) as exc:
            fail(dp.error_text(exc))
        except MissingExtra:
            raise  # run() says it, naming the command
        except SecAggError as exc:
            fail(str(exc), FAILED_EXIT)
    print_report(report, console)
    if json_path is not None:
        write_json(report, json_path)
        say(f"report written to {json_path}")

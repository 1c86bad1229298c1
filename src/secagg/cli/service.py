"""``secagg serve`` and ``secagg join``: the coordinator and a client of a deployment.
gRPC, the service and the tasks are imported when the command runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secagg.cli.options import DeploymentFile, TaskChoice
from secagg.cli.output import FAILED_EXIT, fail, say, setup_logging, started

if TYPE_CHECKING:
    from secagg.service.client import UpdateFn
    from secagg.service.config import DeploymentConfig
    from secagg.service.rounds import RoundSummary
    from secagg.service.tasks import TaskSpec

__all__ = ["join", "load_config", "serve"]

DEFAULT_MAX_ATTEMPTS = 20  # join: about a minute and a half of retries (backoff up to 5 s)


def load_config(path: Path) -> DeploymentConfig:
    """deployment.toml, or the one line that says why not."""
    from secagg.errors import ConfigurationError
    from secagg.service.config import DeploymentConfig

    try:
        return DeploymentConfig.load(path)
    except ConfigurationError as exc:
        fail(str(exc))


def serve(
    config: DeploymentFile,
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

    from secagg.errors import ConfigurationError, LedgerError
    from secagg.extras import require
    from secagg.service.metrics import CoordinatorMetrics, MetricsEndpoint, serve_metrics
    from secagg.service.run import RunFailed, Stopped, serve_failed
    from secagg.service.run import serve as run_serve

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    if metrics_port is not None:
        require("metrics", "--metrics-port")  # before the coordinator takes its port
    try:
        deployment = load_config(config).with_overrides(
            port=port,
            stage_timeout=stage_timeout,
            min_clients=min_clients,
            cohort_wait=cohort_wait,
            upload_window=upload_window,
        )
    except ConfigurationError as exc:
        fail(str(exc))
    report = _round_reporter(json_output)
    setup_logging()
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
        fail(str(exc))
    except RunFailed as exc:
        fail(str(exc), FAILED_EXIT)
    except Stopped as exc:
        raise typer.Exit(exc.exit_code) from None
    finally:
        if endpoint is not None:
            endpoint.close()
    failed = serve_failed(summaries, deployment.ledger)
    if failed is not None:
        fail(failed, FAILED_EXIT)


def _round_reporter(json_output: bool) -> Callable[[RoundSummary], None]:
    """What `serve` prints as each round ends: a line, or a JSON object (flushed at once)."""
    import json
    import sys

    from rich.console import Console

    from secagg.cli.report import round_json, round_line

    def report(summary: RoundSummary) -> None:
        if json_output:
            sys.stdout.write(json.dumps(round_json(summary)) + "\n")
            sys.stdout.flush()
        else:
            Console(soft_wrap=True, highlight=False).print(round_line(summary))

    return report


def join(
    config: DeploymentFile,
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
    from secagg.errors import ConfigurationError, MissingExtra, SecAggError
    from secagg.service.client import Rejected
    from secagg.service.run import RunFailed, Stopped
    from secagg.service.run import join as run_join

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    deployment = load_config(config)
    try:
        if not (train_seconds >= 0 and train_seconds < float("inf")):
            raise ConfigurationError("--train-seconds must be a non-negative number")
        spec = _task_of(deployment, task, task_seed, task_clients)
    except ConfigurationError as exc:
        fail(str(exc))
    make_update = _updates(deployment, spec, train_seconds)
    setup_logging()
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
        fail(str(exc))
    except Rejected as exc:
        fail(f"the coordinator refused this client: {exc}", FAILED_EXIT)
    except Stopped as exc:
        raise typer.Exit(exc.exit_code) from None
    except MissingExtra:
        raise  # run() says it, naming the command
    except (RunFailed, SecAggError) as exc:
        fail(str(exc), FAILED_EXIT)
    say(
        f"client {_owner(identity)} left after {stats.rounds} round(s): "
        f"{stats.included} included, {stats.aborted} left early"
    )


def _task_of(
    deployment: DeploymentConfig,
    task: TaskChoice | None,
    task_seed: int | None,
    task_clients: int | None,
) -> TaskSpec:
    """The deployment's task, with what the options override."""
    from secagg.service.tasks import Task, TaskSpec

    default = deployment.task
    return TaskSpec(
        Task(task.value) if task is not None else default.task,
        clients=default.clients if task_clients is None else task_clients,
        seed=default.seed if task_seed is None else task_seed,
    )


def _updates(
    deployment: DeploymentConfig, spec: TaskSpec, train_seconds: float
) -> Callable[[int], UpdateFn]:
    """Each client's update function for the task."""
    from secagg.service.tasks import update_function

    dim = deployment.params.dim
    # Distributed DP's mean is unweighted: the task's weights become 1.
    unweighted = deployment.dp_plan is not None

    def make_update(client_id: int) -> UpdateFn:
        return update_function(
            spec, client_id, dim, train_seconds=train_seconds, unweighted=unweighted
        )

    return make_update


def _owner(identity: Path) -> str:
    """The id in an identity file that was just used (or "?" if it is gone since)."""
    from secagg.errors import ConfigurationError
    from secagg.service.identity import ClientIdentity

    try:
        return str(ClientIdentity.load(identity).client_id)
    except ConfigurationError:
        return "?"

"""``secagg certs``: a local deployment (CA, certificates, identities, allow-list, the
deployment file and, for CKKS, its keys), everything checked before the first file is
written. The service is imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secagg.cli.options import (
    NO_DP,
    NO_PLAINTEXT_SERVICE,
    DpFlags,
    SchemeChoice,
    ServerModelChoice,
    TaskChoice,
    dp_options,
)
from secagg.cli.output import fail, say, started

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpPlan
    from secagg.dp.settings import DpSettings
    from secagg.schemes.ckks import CkksSettings
    from secagg.schemes.masking.parameters import Params
    from secagg.service.tasks import TaskRequirements, TaskSpec

__all__ = ["certs"]


@dp_options()
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
    dp: DpFlags = NO_DP,
) -> None:
    """Create a local deployment: CA, server certificate, client identities, allow-list.

    Also writes deployment.toml, which both `serve` and `join` read, and with --scheme ckks
    the CKKS keys: the coordinator's evaluation context and, beside each identity, the
    clients' context with the secret key. With --dp-epsilon (or --dp-noise-multiplier) the
    deployment adds distributed DP ([dp] in deployment.toml; the L2 clip defaults to the
    task's typical update norm). Everything is checked before the first file is written: a
    refused command leaves nothing behind.
    """
    from secagg.errors import ConfigurationError
    from secagg.service.config import DeploymentConfig
    from secagg.service.credentials import create_deployment
    from secagg.service.scheme_sides import provision_keys
    from secagg.service.settings import CoordinatorSettings
    from secagg.service.tasks import Task, TaskSpec

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    try:
        settings = _dp_for(dp, scheme, max_weight, server_model, clients)
        spec = TaskSpec(Task(task.value), clients=clients)
        needs = _task_needs(spec, dim, max_weight, settings)
        params = _round_params(
            spec, needs, scheme, dim, max_weight, server_model, min_clients, min_cohort, settings
        )
        CoordinatorSettings(
            params,
            port=port,
            min_clients=min_clients,
            stage_timeout=stage_timeout,
            cohort_wait=cohort_wait,
        )
        _refuse_existing(directory, clients, ckks=scheme is SchemeChoice.ckks)
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
        fail(dp.error_text(exc))
    say(_written(config, directory, clients, scheme, task, params, min_clients))
    plan = params.dp_plan
    if plan is not None:
        say(_dp_summary(plan))


def _dp_for(
    dp: DpFlags,
    scheme: SchemeChoice,
    max_weight: int | None,
    server_model: ServerModelChoice | None,
    clients: int,
) -> DpSettings | None:
    """The DP the options ask, and every combination of options a deployment refuses."""
    from secagg.errors import ConfigurationError

    if scheme is SchemeChoice.plaintext:
        raise ConfigurationError(NO_PLAINTEXT_SERVICE)
    settings = dp.settings()
    ckks = scheme is SchemeChoice.ckks
    if ckks and settings is not None:
        raise ConfigurationError(
            "distributed DP adds each client's noise before masking: drop --scheme ckks "
            "(or the --dp-* options)"
        )
    if settings is not None and max_weight not in (None, 1):
        raise ConfigurationError(
            "with distributed DP every client weighs 1 (an unweighted mean): leave --max-weight out"
        )
    if ckks and server_model is not None:
        raise ConfigurationError(
            "--server-model applies to masking; a CKKS deployment has no server model "
            "(docs/THREAT_MODEL.md says what CKKS trusts the coordinator with)"
        )
    if clients < 3:
        raise ConfigurationError(f"--clients must be at least 3 (a round needs 3), got {clients}")
    return settings


def _task_needs(
    spec: TaskSpec, dim: int | None, max_weight: int | None, dp: DpSettings | None
) -> TaskRequirements:
    """What the task fixes (its model's size, its weights), checked against the options."""
    from secagg.errors import ConfigurationError
    from secagg.service.tasks import task_requirements

    needs = task_requirements(spec)
    task = spec.task.value
    if needs.dim is not None and dim is not None and dim != needs.dim:
        raise ConfigurationError(
            f"the {task} task needs --dim {needs.dim} (its model's size); leave --dim out"
        )
    if dp is None and max_weight is not None and max_weight < needs.max_weight:
        raise ConfigurationError(
            f"the {task} task sends weights up to {needs.max_weight}: "
            f"--max-weight {max_weight} would refuse them"
        )
    return needs


def _round_params(
    spec: TaskSpec,
    needs: TaskRequirements,
    scheme: SchemeChoice,
    dim: int | None,
    max_weight: int | None,
    server_model: ServerModelChoice | None,
    min_clients: int,
    min_cohort: int | None,
    dp: DpSettings | None,
) -> Params | CkksSettings:
    """The deployment's round parameters: CKKS's settings, or masking's (with its DP plan)."""
    from secagg.dp.settings import cohort_dp
    from secagg.errors import ConfigurationError
    from secagg.extras import require
    from secagg.schemes.ckks import CkksSettings
    from secagg.schemes.masking.parameters import Params, ServerModel
    from secagg.service.tasks import default_l2_clip

    clients = spec.clients
    size = needs.dim or (1000 if dim is None else dim)
    if scheme is SchemeChoice.ckks:
        require("he", "CKKS")
        return CkksSettings(
            dim=size,
            max_clients=clients,
            clip=needs.clip,
            max_weight=needs.max_weight if max_weight is None else max_weight,
        )
    if min_cohort is not None and not 1 <= min_cohort <= clients:
        raise ConfigurationError(f"--min-cohort must be in [1, {clients}] (--clients)")
    if min_cohort is None and dp is not None:
        # A deployment's rounds start at min_clients: its DP holds for a sum of that many.
        min_cohort = min_clients
    chosen = cohort_dp(
        dp,
        dim=size,
        clients=clients,
        dropout_rate=0.0,  # unused: the minimum cohort is chosen above
        min_cohort=min_cohort,
        default_clip=lambda: default_l2_clip(spec, size),
    )
    return Params(
        dim=size,
        max_clients=clients,
        clip=needs.clip,
        max_weight=1
        if dp is not None
        else (needs.max_weight if max_weight is None else max_weight),
        server_model=ServerModel((server_model or ServerModelChoice.semi_honest).value),
        min_cohort=chosen.min_cohort,
        dp=chosen.config,
    )


def _refuse_existing(directory: Path, clients: int, *, ckks: bool) -> None:
    """Every file the deployment would write must not exist yet: refused, nothing written."""
    from secagg.service.ckks_deployment import SERVER_CONTEXT_FILE, client_context_path
    from secagg.service.config import CONFIG_FILE
    from secagg.service.credentials import deployment_files
    from secagg.service.files import refuse_existing

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


def _written(
    config: Path,
    directory: Path,
    clients: int,
    scheme: SchemeChoice,
    task: TaskChoice,
    params: Params | CkksSettings,
    min_clients: int,
) -> str:
    """What `certs` wrote, in one line."""
    from secagg.service.ckks_deployment import SERVER_CONTEXT_FILE

    what = (
        f"{clients} identities and CKKS contexts (the secret key, mode 0600) under "
        f"{directory / 'clients'}, the coordinator's evaluation context in "
        f"{directory / SERVER_CONTEXT_FILE}"
        if scheme is SchemeChoice.ckks
        else f"{clients} identities under {directory / 'clients'}"
    )
    return (
        f"wrote {config} and {what} (scheme {scheme.value}, task {task.value}: dim "
        f"{params.dim}, max_weight {params.max_weight}; a round starts once {min_clients} "
        "clients are connected)"
    )


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

"""Entry points behind ``secagg serve`` and ``secagg join``: wiring config files to objects,
signals to clean stops, and failures to the three ways a run can end.

- It could not start (a bad deployment file, a port in use, a ledger another coordinator
  holds): ``ConfigurationError`` or ``LedgerError``, raised before any round began.
- It started and could not go on (no cohort formed in time, the ledger failed under a
  round, the coordinator refused this client or could not be reached): ``RunFailed``.
- It was stopped by SIGINT or SIGTERM: ``Stopped``, once a running round has been recorded
  as aborted and every stream closed (within a second).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import numpy as np

from secagg.errors import ConfigurationError, LedgerError, SecAggError
from secagg.params import Params
from secagg.protocol.stages import Stage
from secagg.schemes.base import Scheme
from secagg.schemes.masking import MaskingScheme
from secagg.service.ckks_deployment import (
    client_context_path,
    load_client_context,
    load_server_context,
)
from secagg.service.client import ClientSettings, ClientStats, SecAggClient, UpdateFn
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import Coordinator, NoCohort, RoundSummary, masking_scheme
from secagg.service.files import check_writable, write_array
from secagg.service.identity import AllowList, ClientIdentity
from secagg.service.ledger import Ledger, RoundOutcome
from secagg.service.metrics import Metrics
from secagg.service.tasks import initial_model
from secagg.service.tls import load_ca, load_tls_server_credentials

__all__ = [
    "STOP_GRACE_SECONDS",
    "RunFailed",
    "Stopped",
    "client_policy",
    "client_settings",
    "coordinator_scheme",
    "join",
    "make_coordinator",
    "serve",
    "serve_failed",
    "start_client_process",
]

log = logging.getLogger("secagg.serve")

STOP_GRACE_SECONDS = 0.3
"""How long a stopping coordinator lets streams flush what is queued (a round's end)."""


class RunFailed(SecAggError):
    """A run that had started could not go on; the message says why, in one line."""


class Stopped(SecAggError):
    """SIGINT or SIGTERM stopped the run (cleanly: nothing was left half-done)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _StopOnSignal:
    """SIGINT and SIGTERM cancel the task that entered this context (once: a second signal
    while it stops changes nothing)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._installed: list[signal.Signals] = []

    def __enter__(self) -> _StopOnSignal:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._stop, sig, task)
            except (RuntimeError, ValueError):  # not the main thread: leave signals alone
                continue
            self._installed.append(sig)
        return self

    def _stop(self, sig: signal.Signals, task: asyncio.Task[object]) -> None:
        if self.received is None:
            self.received = int(sig)
            task.cancel()

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)

    def stopped(self) -> Stopped:
        assert self.received is not None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return Stopped(self.received)


def make_coordinator(
    config: DeploymentConfig,
    *,
    ledger: Ledger,
    on_stage: Callable[[int, Stage], None] | None = None,
    insecure: bool = False,
    metrics: Metrics | None = None,
) -> Coordinator:
    if config.allow_list is None:
        raise ConfigurationError("the deployment names no allow-list ([clients] allow_list)")
    if config.tls is None and not insecure:
        raise ConfigurationError("the deployment has no [tls] section; TLS is required")
    tls = None if config.tls is None else load_tls_server_credentials(config.tls)
    allow_list = AllowList.load(config.allow_list)
    return Coordinator(
        config.coordinator,
        ledger=ledger,
        allow_list=allow_list,
        tls=tls,
        scheme=coordinator_scheme(config, allow_list),
        on_stage=on_stage,
        metrics=metrics,
    )


def coordinator_scheme(config: DeploymentConfig, allow_list: AllowList) -> Scheme:
    """The coordinator's side of the deployment's scheme: masking with the allow-list as
    PKI, or CKKS with the evaluation context (checked to hold no secret key)."""
    if isinstance(config.params, Params):
        return masking_scheme(config.params, allow_list)
    if config.server_context is None:
        raise ConfigurationError("a CKKS deployment needs [ckks] server_context")
    context = load_server_context(config.server_context, config.params.params)
    return config.params.scheme(server_context=context)


async def serve(
    config: DeploymentConfig,
    *,
    rounds: int,
    report: Callable[[RoundSummary], None] | None = None,
    model_out: Path | None = None,
    metrics: Metrics | None = None,
) -> list[RoundSummary]:
    """Run ``rounds`` rounds of federated averaging, from the task's initial model.

    After each completed round the model moves by the revealed mean update, and with
    ``model_out`` it is written there (atomically), so the file always holds the newest
    model, even after a stop. See the module docstring for how a run ends.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigurationError(f"--rounds must be a positive integer, got {rounds!r}")
    if model_out is not None:
        check_writable(model_out, "the model")
    model = initial_model(config.task, config.params.dim)
    summaries: list[RoundSummary] = []
    with Ledger(config.ledger) as ledger:
        coordinator = make_coordinator(config, ledger=ledger, metrics=metrics)
        with _StopOnSignal() as stop:
            try:
                await coordinator.start()
                try:
                    for step in range(rounds):
                        summary = await coordinator.run_round(model, step=step)
                        summaries.append(summary)
                        if summary.aggregate is not None:
                            model = (model + summary.aggregate).astype(np.float32)
                            if model_out is not None:
                                write_array(model_out, model)
                        if report is not None:
                            report(summary)
                except (NoCohort, LedgerError) as exc:
                    raise RunFailed(str(exc)) from None
                finally:
                    await coordinator.stop(STOP_GRACE_SECONDS)
            except asyncio.CancelledError:
                if stop.received is None:
                    raise
                log.warning("%s", Stopped(stop.received))
                raise stop.stopped() from None
    return summaries


def serve_failed(summaries: list[RoundSummary]) -> str | None:
    """Why a finished ``serve`` counts as a failed run (a round aborted), or None."""
    aborted = [s.round_id for s in summaries if s.outcome is RoundOutcome.ABORTED]
    if not aborted:
        return None
    ids = ", ".join(str(i) for i in aborted)
    return (
        f"{len(aborted)} of {len(summaries)} rounds aborted (round {ids}); "
        "`secagg rounds --ledger LEDGER` says why"
    )


def join(
    config: DeploymentConfig,
    identity_path: Path,
    update: Callable[[int], UpdateFn],
    *,
    target: str | None = None,
    rounds: int | None = None,
    insecure: bool = False,
    max_attempts: int | None = None,
) -> ClientStats:
    """Connect to the coordinator and answer rounds until ``rounds`` have ended.

    ``max_attempts`` connection attempts in a row (None: forever) before ``RunFailed``.
    """
    for name, value in (("--rounds", rounds), ("--max-attempts", max_attempts)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    settings = client_settings(
        config, identity_path, target=target, insecure=insecure, max_attempts=max_attempts
    )
    client = SecAggClient(settings, update(settings.identity.client_id), rounds=rounds)
    return asyncio.run(_join(client, settings.target))


def client_settings(
    config: DeploymentConfig,
    identity_path: Path,
    *,
    target: str | None = None,
    insecure: bool = False,
    max_attempts: int | None = None,
) -> ClientSettings:
    """Everything a ``SecAggClient`` needs, from the deployment file and the client's
    identity file: the coordinator's address (``target`` overrides the file's), the CA to
    trust, the message size cap, the client's policy and PKI, its own stage deadline."""
    identity = ClientIdentity.load(identity_path)
    if config.tls is None and not insecure:
        raise ConfigurationError("the deployment has no [tls] section; TLS is required")
    ca = None if config.tls is None else load_ca(config.tls.ca_cert)
    policy, pki = client_policy(config, identity_path)
    return ClientSettings(
        target=target or f"{config.coordinator.host}:{config.coordinator.port}",
        identity=identity,
        ca_cert=ca,
        max_message_bytes=config.coordinator.max_message_bytes,
        policy=policy,
        pki=pki,
        stage_timeout=config.client_stage_timeout,
        max_attempts=max_attempts,
    )


async def _join(client: SecAggClient, target: str) -> ClientStats:
    with _StopOnSignal() as stop:
        try:
            return await client.run()
        except asyncio.CancelledError:
            if stop.received is None:
                raise
            raise stop.stopped() from None
        except grpc.aio.AioRpcError as exc:
            raise RunFailed(
                f"cannot reach the coordinator at {target}: {_rpc_reason(exc)}"
            ) from None
        except (ConnectionError, OSError, EOFError) as exc:
            raise RunFailed(
                f"lost the coordinator at {target}: {_one_line(str(exc)) or type(exc).__name__}"
            ) from None


def _rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code()
    name = code.name.lower().replace("_", " ") if code is not None else "error"
    details = _one_line(exc.details() or "")
    return f"{name} ({details})" if details else name


def _one_line(text: str) -> str:
    return " ".join(text.split())


def client_policy(
    config: DeploymentConfig, identity_path: Path | None = None
) -> tuple[Scheme, Mapping[int, bytes]]:
    """The client's side of the deployment's scheme (its ``check`` is the client's policy)
    and the PKI. The allow-list is required, since the cohort of every round must lie within
    it. A CKKS client's context, with the secret key, is the one beside its identity file
    (checked against the deployment's parameters)."""
    if config.allow_list is None:
        raise ConfigurationError("the deployment names no allow-list ([clients] allow_list)")
    keys = AllowList.load(config.allow_list).keys
    allowed = frozenset(keys)
    if isinstance(config.params, Params):
        return MaskingScheme(config.params, pki=keys, allowed=allowed), keys
    if identity_path is None:
        raise ConfigurationError(
            "a CKKS client needs its identity file: its CKKS context sits beside it"
        )
    context = load_client_context(client_context_path(identity_path), config.params.params)
    return config.params.scheme(client_context=context, allowed=allowed), keys


def start_client_process(
    config: Path,
    identity: Path,
    target: str,
    log: Path,
    *,
    task: str | None = "random",
    task_seed: int | None = 0,
    task_clients: int | None = None,
    rounds: int | None = None,
    max_attempts: int | None = None,
    train_seconds: float | None = None,
) -> subprocess.Popen[bytes]:
    """``secagg join`` in a process of its own, its output appended to ``log``."""
    command = [
        sys.executable, "-m", "secagg", "join",
        "--config", str(config),
        "--identity", str(identity),
        "--target", target,
    ]  # fmt: skip
    for flag, value in (
        ("--task", task),
        ("--task-seed", task_seed),
        ("--task-clients", task_clients),
        ("--rounds", rounds),
        ("--max-attempts", max_attempts),
        ("--train-seconds", train_seconds),
    ):
        if value is not None:
            command += [flag, str(value)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

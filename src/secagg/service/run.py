"""Entry points behind ``secagg serve`` and ``secagg join``: wiring config files to objects,
signals to clean stops, and failures to the three ways a run can end.

- It could not start (a bad deployment file, a port in use, a ledger another coordinator
  holds): ``ConfigurationError`` or ``LedgerError``, raised before any round began.
- It started and could not go on (no cohort formed in time, the ledger failed under a
  round, the coordinator refused this client or could not be reached): ``RunFailed``.
- It was stopped by SIGINT or SIGTERM: ``Stopped``, once a running round has been recorded
  as aborted and every stream closed (within a second). A client stops whatever it is doing
  (waiting to retry, connecting, in a round, in the user's training callback), and its
  process ends within ``STOP_SECONDS`` even if something would hold it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from secagg.dp.budget import ClientBudget
from secagg.errors import ConfigurationError, DecodeError, LedgerError, SecAggError, one_line
from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.protocol.stages import Stage
from secagg.service.client import ClientSettings, ClientStats, SecAggClient, UpdateFn
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import Coordinator, NoCohort, RoundSummary
from secagg.service.files import check_writable, write_array
from secagg.service.identity import AllowList, ClientIdentity
from secagg.service.metrics import Metrics
from secagg.service.scheme_sides import client_policy, coordinator_scheme
from secagg.service.tasks import initial_model
from secagg.service.tls import load_ca, load_tls_server_credentials

__all__ = [
    "STOP_GRACE_SECONDS",
    "STOP_SECONDS",
    "RunFailed",
    "Stopped",
    "client_settings",
    "join",
    "make_coordinator",
    "serve",
    "serve_failed",
    "start_client_process",
]

log = logging.getLogger("secagg.serve")
join_log = logging.getLogger("secagg.join")

STOP_GRACE_SECONDS = 0.3
"""How long a stopping coordinator lets streams flush what is queued (a round's end)."""

STOP_SECONDS = 1.0
"""The longest a ``secagg join`` process lives on after SIGINT or SIGTERM, whatever it does."""

_INSIST_SECONDS = 0.05
"""How often a stopping ``join`` cancels its task again, until the task has ended."""

_SAY_SECONDS = 0.1
"""How long a ``join`` past ``STOP_SECONDS`` waits for its stop line to be written."""

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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
    while it stops changes nothing), and ``on_signal(signum)`` is called, in the loop.

    With ``insist``, the task is cancelled again every ``_INSIST_SECONDS`` until it ends: code
    that swallows one cancellation cannot keep it running (Python 3.11's ``asyncio.wait_for``
    returns its future's result when both come at once; grpc-aio's tasks that a call awaits
    catch their own cancellation, and so return to the caller as if nothing happened)."""

    def __init__(
        self, *, insist: bool = False, on_signal: Callable[[int], None] | None = None
    ) -> None:
        self.received: int | None = None
        self._insist = insist
        self._on_signal = on_signal
        self._installed: dict[signal.Signals, _Handler] = {}  # each signal's previous handler
        self._again: asyncio.TimerHandle | None = None

    def __enter__(self) -> _StopOnSignal:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._stop, sig, task)
            except (RuntimeError, ValueError):  # not the main thread: leave signals alone
                continue
            self._installed[sig] = previous
        return self

    def _stop(self, sig: signal.Signals, task: asyncio.Task[object]) -> None:
        if self.received is None:
            self.received = int(sig)
            if self._on_signal is not None:
                self._on_signal(int(sig))
            self._cancel(task)

    def _cancel(self, task: asyncio.Task[object]) -> None:
        if task.done():
            return
        task.cancel()
        if self._insist:
            self._again = asyncio.get_running_loop().call_later(_INSIST_SECONDS, self._cancel, task)

    def __exit__(self, *exc: object) -> None:
        if self._again is not None:
            self._again.cancel()
        loop = asyncio.get_running_loop()
        for sig, previous in self._installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # (None: not set from Python; leave the default)
                signal.signal(sig, previous)

    def stopped(self) -> Stopped:
        assert self.received is not None
        task = asyncio.current_task()
        while task is not None and task.cancelling():
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


async def serve(
    config: DeploymentConfig,
    *,
    rounds: int,
    report: Callable[[RoundSummary], None] | None = None,
    model_out: Path | None = None,
    metrics: Metrics | None = None,
) -> list[RoundSummary]:
    """Run ``rounds`` rounds of federated averaging, from the task's initial model moved by
    every completed round of the ledger: a restarted coordinator carries on where the last
    one stopped. A round's training step is its place in the ledger (its id minus one), so no
    two rounds of a ledger send the same (model, step), which clients would refuse.

    After each completed round the model moves by the revealed mean update, and with
    ``model_out`` it is written there (atomically), so the file always holds the newest
    model, even after a stop. See the module docstring for how a run ends.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigurationError(f"--rounds must be a positive integer, got {rounds!r}")
    if model_out is not None:
        check_writable(model_out, "the model")
    summaries: list[RoundSummary] = []
    with Ledger(config.ledger) as ledger:
        coordinator = make_coordinator(config, ledger=ledger, metrics=metrics)
        _warn_no_room(config, coordinator)
        model = _resumed_model(ledger, initial_model(config.task, config.params.dim))
        with _StopOnSignal() as stop:
            try:
                await coordinator.start()
                try:
                    for _ in range(rounds):
                        # The training step is the round's place in the ledger, so that a
                        # restarted coordinator never sends a (model, step) its clients have
                        # already put into a sum: they would refuse it (replayed-task).
                        step = ledger.next_round_id() - 1
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


def _warn_no_room(config: DeploymentConfig, coordinator: Coordinator) -> None:
    """One line when ``min_clients`` leaves no room for a single lost client: a round then
    needs every client there is, and one lost for good stops every later round."""
    settings = config.coordinator
    clients = min(len(coordinator.allow_list.keys), settings.params.max_clients)
    if settings.min_clients < clients:
        return
    # The smallest min_clients the settings accept: a round needs 3, and min_cohort.
    floor = max(3, settings.params.min_cohort)
    remedy = (
        f"--min-clients {clients - 1} would carry on without it"
        if clients - 1 >= floor
        else f"no round may be smaller (at least {floor}): more clients would leave room"
    )
    log.warning(
        "min_clients is %d, every client this deployment has (%d): a client lost for good "
        "stops the next round (serve waits cohort_wait, %g s, for it, then exits); %s",
        settings.min_clients,
        clients,
        settings.cohort_wait,
        remedy,
    )


def _resumed_model(ledger: Ledger, model: NDArray[np.float32]) -> NDArray[np.float32]:
    """The model after the ledger's completed rounds (what ``--model-out`` was last given):
    a restarted coordinator carries on training where its predecessor stopped."""
    completed = [
        r.round_id
        for r in ledger.rounds()
        if r.outcome is RoundOutcome.COMPLETED and r.dim == model.size
    ]
    try:
        for round_id in completed:
            model = (model + ledger.aggregate(round_id)).astype(np.float32)
    except DecodeError as exc:
        raise LedgerError(f"cannot resume from the ledger {ledger.path}: {exc}") from None
    if completed:
        log.info(
            "resuming from the ledger: the model after its %d completed round(s)", len(completed)
        )
    return model


def serve_failed(summaries: list[RoundSummary], ledger: Path) -> str | None:
    """Why a finished ``serve`` counts as a failed run (a round aborted), or None; it names
    the command that says why, with the deployment's own ledger path."""
    aborted = [s.round_id for s in summaries if s.outcome is RoundOutcome.ABORTED]
    if not aborted:
        return None
    ids = ", ".join(str(i) for i in aborted)
    return (
        f"{len(aborted)} of {len(summaries)} rounds aborted (round {ids}); "
        f"`secagg rounds --ledger {ledger}` says why"
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

    This is a process's whole life (``secagg join``): SIGINT or SIGTERM, whenever it comes,
    ends it with ``Stopped`` and one log line, and within ``STOP_SECONDS`` even if something
    holds it up (the update callback is abandoned where it is: it runs in a daemon thread).
    """
    for name, value in (("--rounds", rounds), ("--max-attempts", max_attempts)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    with _ProcessStop() as stop:
        settings = client_settings(
            config, identity_path, target=target, insecure=insecure, max_attempts=max_attempts
        )
        stop.client_id = settings.identity.client_id
        client = SecAggClient(settings, update(settings.identity.client_id), rounds=rounds)
        stop.check()
        return asyncio.run(_join(client, settings.target, stop.received))


class _ProcessStop:
    """How a ``secagg join`` process ends on SIGINT or SIGTERM: soon, whatever it is doing,
    saying so in one line (the caller turns ``Stopped`` into the exit code).

    While the event loop runs, ``_StopOnSignal`` cancels the client's task; before and after,
    the first signal raises ``Stopped`` wherever the process is. From that first signal the
    process has ``STOP_SECONDS``; a daemon thread then ends it (with the same line and exit
    code) if anything still holds it up: a thread not ours the interpreter would wait for, a
    hang in a library's exit. Later signals change nothing.
    """

    def __init__(self) -> None:
        self.client_id: int | None = None
        self._signum: int | None = None
        self._previous: dict[signal.Signals, _Handler] = {}
        self._deadline: threading.Thread | None = None
        self._lock = threading.Lock()
        self._said = False

    def __enter__(self) -> _ProcessStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._raise)
            except ValueError:  # not the main thread: leave signals alone
                continue
        return self

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler: it may run between any two bytecodes, so it takes no lock.
        if self._signum is None:
            self._signum = signum
            raise Stopped(signum)

    def received(self, signum: int) -> None:
        """The first signal has come: from now on the process has ``STOP_SECONDS``."""
        if self._signum is None:
            self._signum = signum
        if self._deadline is None:
            self._deadline = threading.Thread(target=self._end, name="secagg-stop", daemon=True)
            self._deadline.start()

    def _end(self) -> None:
        time.sleep(STOP_SECONDS)
        assert self._signum is not None
        # The last words are written from a thread of their own: a stderr nobody reads (a
        # full pipe) must not keep the process alive.
        saying = threading.Thread(target=self._last_words, daemon=True)
        saying.start()
        saying.join(_SAY_SECONDS)
        os._exit(128 + self._signum)

    def _last_words(self) -> None:
        self._say()
        for stream in (sys.stdout, sys.stderr):  # os._exit skips the interpreter's flush
            with contextlib.suppress(Exception):
                stream.flush()

    def _say(self) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
        assert self._signum is not None
        who = "" if self.client_id is None else f"client {self.client_id} "
        join_log.warning("%s%s", who, Stopped(self._signum))

    def check(self) -> None:
        """``Stopped`` if a signal has come (though some code caught what it raised)."""
        if self._signum is not None:
            raise Stopped(self._signum)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signum = exc.signum if isinstance(exc, Stopped) else self._signum
        for sig, previous in self._previous.items():
            # Once stopped, the process is ending: nothing more may change how.
            signal.signal(sig, previous if signum is None else signal.SIG_IGN)
        if signum is None:
            return
        self.received(signum)
        self._say()
        if not isinstance(exc, Stopped):  # whatever the signal cut short, it was a stop
            raise Stopped(signum) from None


def client_settings(
    config: DeploymentConfig,
    identity_path: Path,
    *,
    target: str | None = None,
    insecure: bool = False,
    max_attempts: int | None = None,
    journal: Path | None = None,
) -> ClientSettings:
    """Everything a ``SecAggClient`` needs, from the deployment file and the client's
    identity file: the coordinator's address (``target`` overrides the file's), the CA to
    trust, the message size cap, the client's policy and PKI, its own stage deadline, its
    journal (by default beside the identity file: ``<identity>.journal``) and, under DP, its
    privacy budget."""
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
        journal=journal_path(identity_path) if journal is None else journal,
        budget=None if config.dp_plan is None else ClientBudget(config.dp_plan),
        session_rounds=config.coordinator.session_rounds,
        session_seconds=config.coordinator.session_seconds,
    )


def journal_path(identity_path: Path) -> Path:
    """Where ``secagg join`` keeps a client's journal: beside its identity file."""
    return identity_path.with_name(identity_path.name + ".journal")


async def _join(client: SecAggClient, target: str, on_signal: Callable[[int], None]) -> ClientStats:
    with _StopOnSignal(insist=True, on_signal=on_signal) as stop:
        try:
            stats = await client.run()
        except (asyncio.CancelledError, Exception) as exc:
            if stop.received is not None:  # whatever the stop cut short, the run was stopped
                raise stop.stopped() from None
            if isinstance(exc, grpc.aio.AioRpcError):
                raise RunFailed(
                    f"cannot reach the coordinator at {target}: {_rpc_reason(exc)}"
                ) from None
            if isinstance(exc, ConnectionError | OSError | EOFError):
                raise RunFailed(
                    f"lost the coordinator at {target}: {one_line(str(exc)) or type(exc).__name__}"
                ) from None
            raise
        if stop.received is not None:  # the signal came as the run ended
            raise stop.stopped()
        return stats


def _rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code()
    name = code.name.lower().replace("_", " ") if code is not None else "error"
    details = one_line(exc.details() or "")
    return f"{name} ({details})" if details else name


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

"""``secagg demo``: federated training with secure aggregation over a real local deployment.

One command starts a coordinator with TLS on loopback and N client processes, each holding
a non-IID share of scikit-learn's handwritten digits, and trains a small network with
FedAvg, aggregated with the scheme asked for: masking (SecAgg/SecAgg+, the default) or CKKS
homomorphic encryption (``--scheme ckks``: the demo provisions the CKKS keys as ``secagg
certs --scheme ckks`` does). Beside the secure training run, the demo trains a plaintext
FedAvg baseline over exactly the clients each secure round included, computing those
clients' updates itself (the same deterministic local training the client processes run),
so the report shows what secure aggregation changes in accuracy (only quantisation, or
CKKS's approximation) and in bytes. The baseline never travels through the service: the
production client and wire schema have no plaintext path. ``--drop-rate`` SIGKILLs random
client processes at random stages of the secure rounds; killed clients restart and rejoin
with fresh keys (a CKKS client keeps its provisioned context, as a device would). The
coordinator runs one-shot rounds, each with its own set-up (commit to share): the report
says so, and what that set-up took of each round.

``--in-process`` (``DemoOptions.in_process``, masking) trains the same clients in this
process over the simulator instead (``secagg.simulate.training``): the cohort is the same
every round, so the rounds run as one session that spans them, set up once and then two
messages a round per client; ``--drop-rate`` then silences that fraction of the clients each
round at random stages (a silenced client is out of the session until its next set-up), and
the report gives each round's kind and the set-up's cost.

With distributed differential privacy (``DemoOptions.dp``, ``secagg demo --dp-epsilon E``)
the deployment gets a ``[dp]`` section: every client process adds discrete noise to its
update before masking, calibrated so that the whole run (``--rounds`` rounds) is
(epsilon, delta)-DP for every sum of at least the minimum cohort. The mean is then
unweighted (every client weighs 1, in the baseline too, so that the two differ only by DP's
clipping and noise), and each update is scaled down to the L2 clip: ``--dp-clip``, or by
default the median norm of the clients' first-round updates (as
``benchmarks/dp_sweep.py`` does: computed from every client's data, which only a demo holds
in one place). The report gives each round's epsilon (of the sum it revealed) and the epsilon
spent so far, from the ledger, and the noise multiplier each revealed sum carried (more
inputs than the minimum cohort carry more noise than planned). Beside it the demo trains a
central-DP baseline (``secagg.dp.central``): over the same clients each round, a trusted
curator's Gaussian noise on the exact mean of the same clipped updates, its noise multiplier
spending the same target epsilon by the same accountant. With the demo's ten clients the noise
a guarantee needs is large against the mean of so few updates: the report says so, and
BENCHMARKS.md's privacy-utility sweep shows DP at 100 clients per round.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from secagg.dp.calibrate import DpPlan, carried_noise_multiplier
from secagg.dp.central import CentralPlan, central_plan
from secagg.dp.central_noise import central_grid, clip_to_l2, noisy_mean
from secagg.dp.round_privacy import round_privacy
from secagg.dp.settings import DpSettings, cohort_dp, minimum_cohort
from secagg.errors import ConfigurationError
from secagg.extras import require
from secagg.fl.data import FederatedSplit, load_digits_split
from secagg.fl.digits import DEMO_CLIP, demo_model, digits_median_update_norm
from secagg.fl.fedavg import apply_update
from secagg.fl.model import ModelSpec
from secagg.hazmat.randomness import DeterministicRandomness, Randomness
from secagg.ledger import Ledger
from secagg.protocol.stages import Stage
from secagg.schemes.base import Scheme, SchemeFacts, SchemeSettings
from secagg.schemes.ckks import CkksSettings
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.masking.parameters import Params
from secagg.schemes.registry import SchemeKind, scheme_entry, served_schemes
from secagg.service.client import UpdateFn
from secagg.service.config import DeploymentConfig
from secagg.service.coordinator import RoundSummary
from secagg.service.credentials import create_deployment
from secagg.service.run import RunFailed, make_coordinator, start_client_process
from secagg.service.scheme_sides import provision_keys
from secagg.service.tasks import Task, TaskSpec, update_function

if TYPE_CHECKING:
    from secagg.simulate.rounds import RunRound
    from secagg.simulate.training import SecureRound

__all__ = ["DemoOptions", "run_demo"]

# Where --drop-rate kills a client process, per scheme.
# The dropout the demo's deployments tolerate: a third of the clients (Params' default).
DEMO_DROPOUT_RATE = 0.33
KILL_STAGES = {
    SchemeKind.MASKING: tuple(
        s.value
        for s in (Stage.COMMIT, Stage.ADVERTISE, Stage.SHARE, Stage.MASKED_INPUT, Stage.UNMASK)
    ),
    SchemeKind.CKKS: (Stage.UPLOAD.value, Stage.DECRYPT.value),
}


@dataclass(frozen=True)
class DemoOptions:
    clients: int = 10
    rounds: int = 10
    seed: int = 0
    drop_rate: float = 0.0
    stage_timeout: float = 20.0
    workdir: Path | None = None
    protocol: str = "secagg+"  # masking's neighbour graph
    scheme: str = SchemeKind.MASKING.value
    # Distributed DP (masking): its target covers the whole run (its rounds become
    # ``rounds``); no L2 clip: the median first-round update norm.
    dp: DpSettings | None = None
    # The fewest inputs a revealed sum may hold (under DP the guarantee holds from here up);
    # None: 1 without DP, with DP all but the third of the clients the graph tolerates.
    min_cohort: int | None = None
    framework: str = "numpy"  # what the clients train with: numpy or torch (same model)
    # Train in this process over the simulator (no deployment): the fixed cohort runs as one
    # session, set up once (masking only).
    in_process: bool = False

    def __post_init__(self) -> None:
        entry = scheme_entry(self.scheme)
        if not entry.served:
            served = " or ".join(e.kind.value for e in served_schemes())
            raise ConfigurationError(
                f"--scheme must be {served}: the service has no {self.scheme} path (the "
                "demo computes the plaintext baseline itself)"
            )
        if self.dp is not None and not entry.dp:
            raise ConfigurationError(
                "distributed DP adds each client's noise before masking: drop --scheme "
                f"{self.scheme} (or the --dp-* options)"
            )
        if self.in_process and entry.kind is not SchemeKind.MASKING:
            raise ConfigurationError(
                "--in-process runs masking's sessions that span rounds: drop --scheme "
                f"{self.scheme}"
            )
        if self.framework not in ("numpy", "torch"):
            raise ConfigurationError("--framework must be numpy or torch")
        # The extras the run needs, before it starts anything (MissingExtra names each).
        require("fl", "the digits data")
        if self.framework == "torch":
            require("torch", "--framework torch")
        if entry.extra is not None:
            require(entry.extra, entry.title)
        if not 3 <= self.clients <= 200:
            raise ConfigurationError("--clients must be between 3 and 200")
        if not 1 <= self.rounds <= 1000:
            raise ConfigurationError("--rounds must be between 1 and 1000")
        if not 0.0 <= self.drop_rate < 0.5:
            raise ConfigurationError("--drop-rate must be in [0, 0.5)")
        if self.min_cohort is not None and not 3 <= self.min_cohort <= self.clients:
            raise ConfigurationError(f"--min-cohort must be in [3, {self.clients}] (--clients)")

    @property
    def cohort_minimum(self) -> int:
        """The minimum cohort the deployment fixes (see ``min_cohort``)."""
        return minimum_cohort(
            self.dp is not None,
            clients=self.clients,
            dropout_rate=DEMO_DROPOUT_RATE,
            given=self.min_cohort,
        )


@dataclass
class RoundRow:
    round: int
    accuracy: float | None
    outcome: str
    included: list[int]
    dropped: dict[int, dict[str, str]]
    seconds: float
    stage_seconds: dict[str, float]
    upload_bytes_per_client: float
    download_bytes_per_client: float
    # Distributed DP: the revealed sum's epsilon and the epsilon spent so far (the ledger's).
    epsilon: float | None = None
    epsilon_spent: float | None = None
    # DP: the noise multiplier the revealed sum carried (its noise std over the clip, for
    # the inputs it held).
    noise_multiplier: float | None = None
    # What kind of round ran (one-shot, set-up+round or session) and, for a session's first
    # round, its set-up's cost (seconds, bytes and messages per member).
    kind: str = "one-shot"
    setup: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "kind": self.kind,
            "accuracy": self.accuracy,
            "outcome": self.outcome,
            "included": self.included,
            "dropped": {str(c): d for c, d in sorted(self.dropped.items())},
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "download_bytes_per_client": self.download_bytes_per_client,
            "epsilon": self.epsilon,
            "epsilon_spent": self.epsilon_spent,
            "noise_multiplier": self.noise_multiplier,
            "setup": self.setup,
        }


@dataclass
class DemoReport:
    options: DemoOptions
    dim: int
    # What the scheme that ran fixes (masking's protocol, k, t and ring width; CKKS's
    # parameters and key holders), and the error it may add to the mean.
    facts: SchemeFacts
    error_bound: float
    secure: list[RoundRow] = field(default_factory=list)
    plaintext: list[RoundRow] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    workdir: str = ""
    seconds: float = 0.0
    # Distributed DP: the calibrated plan, and where its L2 clip came from.
    dp_plan: DpPlan | None = field(default=None, repr=False)
    dp_clip_source: str = ""
    # The central-DP baseline beside distributed DP: its plan and its rounds.
    central_plan: CentralPlan | None = field(default=None, repr=False)
    central: list[RoundRow] = field(default_factory=list)

    @property
    def rounds_kind(self) -> str:
        """ "session" when the secure rounds ran as sessions that span rounds, else
        "one-shot" (every round its own set-up)."""
        return "one-shot" if all(r.kind == "one-shot" for r in self.secure) else "session"

    def final(self, rows: list[RoundRow]) -> float | None:
        accuracies = [r.accuracy for r in rows if r.accuracy is not None]
        return accuracies[-1] if accuracies else None

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "config": {
                "clients": o.clients,
                "rounds": o.rounds,
                "seed": o.seed,
                "drop_rate": o.drop_rate,
                "scheme": o.scheme,
                "framework": o.framework,
                "transport": "in-process" if o.in_process else "deployment",
                "rounds_kind": self.rounds_kind,
                "dim": self.dim,
                "min_cohort": o.cohort_minimum,
                **self.facts.as_dict(),
                "error_bound": self.error_bound,
                **self._dp_json(),
            },
            "secure": {
                "rounds": [r.to_json() for r in self.secure],
                "final_accuracy": self.final(self.secure),
            },
            "plaintext": {
                "rounds": [r.to_json() for r in self.plaintext],
                "final_accuracy": self.final(self.plaintext),
            },
            **self._central_json(),
            "kills": self.kills,
            "workdir": self.workdir,
            "seconds": self.seconds,
        }

    def _central_json(self) -> dict[str, Any]:
        central = self.central_plan
        if central is None:
            return {}
        return {
            "central": {
                "noise_multiplier": central.noise_multiplier,
                "noise_multiplier_carried": central_grid(central, self.dim).noise_multiplier,
                "epsilon_target": central.epsilon_total,
                "rounds": [r.to_json() for r in self.central],
                "final_accuracy": self.final(self.central),
            }
        }

    def _dp_json(self) -> dict[str, Any]:
        plan = self.dp_plan
        if plan is None:
            return {"dp": False}
        return {
            "dp": True,
            "dp_l2_clip_source": self.dp_clip_source,
            "dp_rounds": plan.config.rounds,
            "dp_epsilon_run": plan.epsilon_total,
            "dp_min_cohort": plan.config.min_clients,
            "dp_bits": plan.ring_bits,
        }


def _row(step: int, summary: RoundSummary, accuracy: float | None, plan: DpPlan | None) -> RoundRow:
    privacy = summary.privacy
    carried = None
    if plan is not None and summary.included:
        carried = carried_noise_multiplier(plan, len(summary.included))
    return RoundRow(
        round=step + 1,
        accuracy=accuracy,
        outcome=summary.outcome.value,
        included=list(summary.included),
        dropped={c: {"stage": s.value, "reason": r.value} for c, (s, r) in summary.dropped.items()},
        seconds=summary.seconds,
        stage_seconds={s.value: t for s, t in summary.stage_seconds.items()},
        upload_bytes_per_client=summary.upload_bytes_per_client,
        download_bytes_per_client=summary.download_bytes_per_client,
        epsilon=None if privacy is None else privacy.epsilon,
        epsilon_spent=None if privacy is None else privacy.epsilon_spent,
        noise_multiplier=carried,
        kind=summary.kind.value,
    )


class _Fleet:
    """The client processes: started, killed and restarted by the demo."""

    def __init__(
        self,
        workdir: Path,
        config_path: Path,
        identities: dict[int, Path],
        target: str,
        task: TaskSpec,
    ) -> None:
        self._workdir = workdir
        self._config = config_path
        self._identities = identities
        self._target = target
        self._task = task
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, client_id: int) -> None:
        self.processes[client_id] = start_client_process(
            self._config,
            self._identities[client_id],
            self._target,
            self._workdir / f"client-{client_id}.log",
            task=self._task.task.value,
            task_seed=self._task.seed,
            task_clients=self._task.clients,
        )

    def kill(self, client_id: int) -> None:
        process = self.processes.get(client_id)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


def run_demo(
    options: DemoOptions,
    *,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    return asyncio.run(_run(options, progress or (lambda _: None)))


async def _run(options: DemoOptions, say: Callable[[str], None]) -> DemoReport:
    started = time.perf_counter()
    owned = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="secagg-demo-")) if owned else options.workdir
    assert workdir is not None
    workdir.mkdir(parents=True, exist_ok=True)
    split = load_digits_split(options.clients, seed=options.seed)
    spec = demo_model(split)
    kind = SchemeKind(options.scheme)
    max_weight = max(len(c.y) for c in split.clients)
    params: SchemeSettings
    scheme: Scheme
    clip_source = ""  # distributed DP: where the L2 clip came from
    if kind is SchemeKind.CKKS:
        params = CkksSettings(
            dim=spec.dim,
            max_clients=options.clients,
            clip=DEMO_CLIP,
            max_weight=max_weight,
            min_cohort=options.cohort_minimum,
        )
        scheme = params.scheme()  # no keys: only to describe the round
    else:
        dp = None
        if options.dp is not None:
            dp = replace(options.dp, rounds=options.rounds)  # the target covers the whole run
            max_weight = 1  # an unweighted mean
            clip_source = "--dp-clip"

        def median_norm() -> float:
            nonlocal clip_source
            say("choosing the L2 clip: the median norm of the clients' first-round updates")
            clip_source = "the median norm of the clients' first-round updates"
            return digits_median_update_norm(options.clients, options.seed)

        chosen = cohort_dp(
            dp,
            dim=spec.dim,
            clients=options.clients,
            dropout_rate=DEMO_DROPOUT_RATE,
            min_cohort=options.cohort_minimum,
            default_clip=median_norm,
        )
        min_cohort, dp_config = chosen.min_cohort, chosen.config
        params = Params(
            dim=spec.dim,
            max_clients=options.clients,
            clip=DEMO_CLIP,
            value_bits=16,
            max_weight=max_weight,
            protocol=options.protocol,  # type: ignore[arg-type]
            min_cohort=min_cohort,
            dp=dp_config,
        )
        scheme = MaskingScheme(params)
    report = DemoReport(
        options,
        spec.dim,
        scheme.facts(options.clients),
        scheme.error_bound(options.clients),
        workdir=str(workdir),
    )
    if params.dp_plan is not None:
        report.dp_plan = params.dp_plan
        report.dp_clip_source = clip_source
        say("finding the central-DP baseline's noise multiplier for the same epsilon")
        report.central_plan = central_plan(params.dp_plan)
    if options.in_process:
        _train_in_process(
            options, Params.of(params, "the in-process demo"), split, spec, report, say
        )
        report.seconds = time.perf_counter() - started
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
        report.workdir = ""
        return report
    say(f"setting up TLS and {options.clients} client identities in {workdir}")
    deployment = create_deployment(workdir, options.clients)
    keys = provision_keys(workdir, deployment.identities, params)
    if keys:
        say(f"provisioned the {kind.value} keys ({len(keys)} files beside the identities)")
    kill_stages = KILL_STAGES[kind]
    config_path = DeploymentConfig.write(
        workdir,
        deployment,
        params,
        # A round of fewer than the minimum cohort could never reveal its sum.
        min_clients=max(3, params.min_cohort),
        stage_timeout=options.stage_timeout,
        cohort_wait=60.0,
        # The demo's cohort is fixed: masking's rounds run as sessions that span them.
        session_rounds=options.rounds if kind is SchemeKind.MASKING else 0,
    )
    config = DeploymentConfig.load(config_path)
    rng = np.random.default_rng(options.seed)  # chooses which processes to kill: not secret
    # What each client process trains (``secagg join`` on the deployment's task; under DP
    # every update weighs 1), computed here for the plaintext baseline.
    task = TaskSpec(
        Task.DIGITS_TORCH if options.framework == "torch" else Task.DIGITS,
        clients=options.clients,
        seed=options.seed,
    )
    unweighted = report.dp_plan is not None
    updates = {
        c: update_function(task, c, spec.dim, unweighted=unweighted) for c in range(options.clients)
    }
    planned: dict[int, str] = {}
    fleet: _Fleet | None = None

    def on_stage(round_id: int, stage: str) -> None:
        say(f"round {round_id}: {stage}")
        for client, at in list(planned.items()):
            if at == stage and fleet is not None:
                fleet.kill(client)
                report.kills.append({"round_id": round_id, "client": client, "stage": stage})

    with Ledger(config.ledger) as ledger:
        coordinator = make_coordinator(config, ledger=ledger, on_stage=on_stage)
        port = await coordinator.start()
        fleet = _Fleet(
            workdir,
            config_path,
            dict(deployment.identities),
            f"127.0.0.1:{port}",
            task,
        )
        try:
            for c in range(options.clients):
                fleet.start(c)
            say(f"coordinator on 127.0.0.1:{port}; waiting for {options.clients} clients")
            if not await coordinator.wait_for_clients(options.clients, 120.0):
                raise RunFailed(
                    f"only {len(coordinator.connected)} of {options.clients} clients connected "
                    f"within 120 s; see the logs in {workdir}"
                )
            secure_model = spec.init(options.seed)
            plain_model = secure_model.copy()
            central = _CentralBaseline.of(report, secure_model, options.seed)
            for step in range(options.rounds):
                planned = {
                    int(c): kill_stages[int(rng.integers(len(kill_stages)))]
                    for c in range(options.clients)
                    if rng.random() < options.drop_rate
                }
                secure = await coordinator.run_round(secure_model, step=step)
                planned = {}
                killed = [c for c, p in fleet.processes.items() if p.poll() is not None]
                for c in killed:
                    fleet.start(c)
                if killed:
                    await coordinator.wait_for_clients(options.clients, 60.0)
                if secure.aggregate is not None:
                    secure_model = apply_update(secure_model, secure.aggregate)
                accuracy = spec.accuracy(secure_model, split.test)
                report.secure.append(_row(step, secure, accuracy, report.dp_plan))
                # The baseline averages exactly the clients the secure round included (none
                # when it aborted), trained here exactly as those clients train.
                plain_model, plain_row = _plaintext_round(
                    step, plain_model, secure.included, updates, spec.dim
                )
                plain_row.accuracy = spec.accuracy(plain_model, split.test)
                plain_accuracy = plain_row.accuracy
                report.plaintext.append(plain_row)
                if central is not None:
                    report.central.append(
                        central.round(step, secure.included, updates, spec, split)
                    )
                spent = report.secure[-1].epsilon_spent
                say(
                    f"round {step + 1}/{options.rounds}: secure accuracy "
                    f"{_pct(accuracy)}, plaintext {_pct(plain_accuracy)}"
                    + ("" if spent is None else f", epsilon spent {spent:.3g}")
                )
        finally:
            fleet.stop_all()
            await coordinator.stop()
    report.seconds = time.perf_counter() - started
    if owned and os.environ.get("SECAGG_KEEP_DEMO") is None:
        shutil.rmtree(workdir, ignore_errors=True)
        report.workdir = ""
    return report


def _plaintext_round(
    step: int,
    model: NDArray[np.float32],
    included: tuple[int, ...],
    updates: dict[int, UpdateFn],
    dim: int,
) -> tuple[NDArray[np.float32], RoundRow]:
    """Plaintext FedAvg over ``included``: each update as that client computes it."""
    started = time.perf_counter()
    if not included:
        return model, RoundRow(step + 1, None, "skipped", [], {}, 0.0, {}, 0.0, 0.0)
    total = np.zeros(dim, dtype=np.float64)
    weight = 0
    for c in included:
        values, w = updates[c](model, step)
        total += w * np.asarray(values, dtype=np.float64)
        weight += w
    mean = total / weight
    row = RoundRow(
        round=step + 1,
        accuracy=None,
        outcome="completed",
        included=list(included),
        dropped={},
        seconds=time.perf_counter() - started,
        stage_seconds={},
        # What plaintext FedAvg sends per client: the update as float32.
        upload_bytes_per_client=float(4 * dim),
        download_bytes_per_client=float(4 * dim),
    )
    return apply_update(model, mean), row


class _CentralBaseline:
    """The central-DP baseline's training: each round, over the clients the secure round
    included, a trusted curator clips their updates (computed from its own model, as the
    plaintext baseline's are) to the distributed plan's clip, releases their noisy mean
    (``secagg.dp.central_noise``) and steps its model by it."""

    def __init__(self, plan: CentralPlan, model: NDArray[np.float32], rng: Randomness) -> None:
        self.plan = plan
        self.model = model.copy()
        self.rng = rng
        self.released = 0  # rounds whose noisy mean was released: what the accountant counts

    @classmethod
    def of(
        cls, report: DemoReport, model: NDArray[np.float32], seed: int
    ) -> _CentralBaseline | None:
        """The baseline of a DP demo (None without DP). Its noise is drawn from a seeded
        CSPRNG so that a demo's run can be repeated; a real curator's would come from the
        operating system (``SystemRandomness``), or whoever knows the seed subtracts it."""
        if report.central_plan is None:
            return None
        label = f"secagg/demo/central-dp/{seed}".encode()
        return cls(
            report.central_plan, model, DeterministicRandomness(hashlib.sha256(label).digest())
        )

    def round(
        self,
        step: int,
        included: tuple[int, ...],
        updates: dict[int, UpdateFn],
        spec: ModelSpec,
        split: FederatedSplit,
    ) -> RoundRow:
        started = time.perf_counter()
        if not included:
            return RoundRow(step + 1, None, "skipped", [], {}, 0.0, {}, 0.0, 0.0)
        total = np.zeros(spec.dim, dtype=np.float64)
        for c in included:
            values, _weight = updates[c](self.model, step)
            total += clip_to_l2(np.asarray(values), self.plan.l2_clip)
        self.model = apply_update(self.model, noisy_mean(self.plan, total, len(included), self.rng))
        self.released += 1
        return RoundRow(
            round=step + 1,
            accuracy=spec.accuracy(self.model, split.test),
            outcome="completed",
            included=list(included),
            dropped={},
            seconds=time.perf_counter() - started,
            stage_seconds={},
            # The curator receives each update as it is (float32).
            upload_bytes_per_client=float(4 * spec.dim),
            download_bytes_per_client=float(4 * spec.dim),
            epsilon=self.plan.epsilon_per_round,
            epsilon_spent=self.plan.epsilon_spent(self.released),
            noise_multiplier=central_grid(self.plan, spec.dim).noise_multiplier,
            kind="curator",
        )


def _train_in_process(
    options: DemoOptions,
    params: Params,
    split: FederatedSplit,
    spec: ModelSpec,
    report: DemoReport,
    say: Callable[[str], None],
) -> None:
    """The same training in this process over the simulator: every client trains as its
    process would, the fixed cohort's rounds run as one session (set up once, then two
    messages a round; set up again when it cannot go on), and ``--drop-rate`` silences that
    fraction of the clients each round, each at a random stage."""
    # Here, not at the top: the deployment's path never loads the simulator.
    from secagg.simulate.rounds import DropPlan
    from secagg.simulate.training import secure_fedavg

    task = TaskSpec(
        Task.DIGITS_TORCH if options.framework == "torch" else Task.DIGITS,
        clients=options.clients,
        seed=options.seed,
    )
    plan = report.dp_plan
    unweighted = plan is not None
    updates = {
        c: update_function(task, c, spec.dim, unweighted=unweighted) for c in range(options.clients)
    }
    weights = {c: 1 if unweighted else len(split.clients[c].y) for c in range(options.clients)}
    drops = None if not options.drop_rate else DropPlan(rate=options.drop_rate, seed=options.seed)
    plain_model = spec.init(options.seed)
    central = _CentralBaseline.of(report, plain_model, options.seed)
    revealed: list[int] = []  # the inputs of every sum revealed so far (DP accounting)

    def on_round(secure: SecureRound) -> None:
        nonlocal plain_model
        r = secure.round
        rep = r.report
        step = r.number - 1
        privacy = None
        if plan is not None and r.completed:
            privacy = round_privacy(plan, len(rep.included), earlier=revealed)
            revealed.append(len(rep.included))
        accuracy = spec.accuracy(secure.model, split.test)
        report.secure.append(
            RoundRow(
                round=r.number,
                accuracy=accuracy,
                outcome=rep.outcome.value,
                included=list(rep.included),
                dropped=_dropped(r),
                seconds=rep.seconds,
                stage_seconds=dict(rep.stage_seconds),
                upload_bytes_per_client=rep.upload_bytes_per_client,
                download_bytes_per_client=rep.download_bytes_per_client,
                epsilon=None if privacy is None else privacy.epsilon,
                epsilon_spent=None if privacy is None else privacy.epsilon_spent,
                noise_multiplier=None
                if plan is None or not r.completed
                else carried_noise_multiplier(plan, len(rep.included)),
                kind=r.kind.value,
                setup=None if r.setup is None else r.setup.to_json(),
            )
        )
        plain_model, plain_row = _plaintext_round(
            step, plain_model, rep.included, updates, spec.dim
        )
        plain_row.accuracy = spec.accuracy(plain_model, split.test)
        report.plaintext.append(plain_row)
        if central is not None:
            report.central.append(central.round(step, rep.included, updates, spec, split))
        say(
            f"round {r.number}/{options.rounds} ({r.kind.value}): secure accuracy "
            f"{_pct(accuracy)}, plaintext {_pct(plain_row.accuracy)}"
        )

    say(f"training {options.clients} clients in this process, the cohort as one session")
    secure_fedavg(
        updates,
        weights,
        spec.init(options.seed),
        params,
        rounds=options.rounds,
        drops=drops,
        seed=options.seed,
        on_round=on_round,
    )


def _dropped(r: RunRound) -> dict[int, dict[str, str]]:
    """Who a round (and the set-up before it) dropped: stage and reason."""
    out: dict[int, dict[str, str]] = {}
    sources = [(r.report.dropped, r.report.drop_reasons)]
    if r.setup is not None:
        sources.insert(0, (r.setup.dropped, r.setup.drop_reasons))
    for dropped, reasons in sources:
        for stage, ids in dropped.items():
            for c in ids:
                out[c] = {"stage": stage, "reason": reasons.get(c, "")}
    return out


def _setup_lines(report: DemoReport) -> list[str]:
    """Which kind of round ran, and what setting the cohort up cost."""
    rows = [r for r in report.secure if r.outcome == "completed"]
    if report.rounds_kind == "session":
        where = "in process" if report.options.in_process else "over the service"
        setups = [r for r in report.secure if r.kind == "set-up+round"]
        line = f"rounds: sessions over the fixed cohort ({where}), set up " + (
            "once" if len(setups) == 1 else f"{len(setups)} times"
        )
        if report.options.in_process:
            done = [s for r in setups if (s := r.setup) is not None and s["outcome"] == "completed"]
            if done:
                line += (
                    f"; a set-up cost {float(np.median([s['seconds'] for s in done])):.2f} s, "
                    f"{float(np.median([s['upload_bytes_per_client'] for s in done])):,.0f} B up "
                    f"and {float(np.median([s['download_bytes_per_client'] for s in done])):,.0f} "
                    "B down per member"
                )
        else:
            spent = [
                sum(t for s, t in r.stage_seconds.items() if s in _SETUP_STAGES)
                for r in setups
                if r.outcome == "completed"
            ]
            if spent:
                line += f"; a set-up's stages took a median {float(np.median(spent)):.2f} s"
        later = [r.seconds for r in rows if r.kind == "session"]
        if later:
            line += (
                f"; then two messages a round per client, median {float(np.median(later)):.2f} s "
                "a round"
            )
        return [line]
    setup = [sum(t for s, t in r.stage_seconds.items() if s in _SETUP_STAGES) for r in rows]
    where = (
        "over the service"
        if not report.options.in_process
        else "(the cohort changed between rounds)"
    )
    line = f"rounds: one-shot {where}, each with its own set-up"
    if setup:
        line += (
            f": commit to share took a median {float(np.median(setup)):.2f} s of the "
            f"{float(np.median([r.seconds for r in rows])):.2f} s a round took"
        )
    return [line]


# The stages a one-shot masking round spends setting its cohort up.
_SETUP_STAGES = frozenset(
    s.value for s in (Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE, Stage.SHARE)
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def write_json(report: DemoReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1) + "\n")


def print_report(report: DemoReport, console: Console) -> None:
    """One row per training round: secure beside plaintext, then the totals."""
    o = report.options
    table = Table(
        title=(
            f"FedAvg on digits ({o.framework}): {o.clients} clients (non-IID), "
            f"{report.dim} parameters, {_scheme_title(report)}, "
            + ("in this process (simulator)" if o.in_process else "TLS on loopback")
        ),
        title_justify="left",
    )
    plan = report.dp_plan
    columns = [
        "round",
        "kind",
        "acc secure",
        "acc plain",
        "included",
        "dropped: client stage (reason)",
        "s secure",
        "up B secure",
        "up B float32",
    ]
    if plan is not None:
        columns += ["epsilon", "spent"]
    for column in columns:
        left = column.startswith("dropped") or column == "kind"
        table.add_column(column, justify="left" if left else "right")
    for s, p in zip(report.secure, report.plaintext, strict=True):
        dropped = ", ".join(
            f"{c} {d['stage']} ({d['reason']})" for c, d in sorted(s.dropped.items())
        )
        cells = [
            str(s.round),
            s.kind,
            _pct(s.accuracy),
            _pct(p.accuracy),
            f"{len(s.included)}/{o.clients}",
            dropped or "-",
            f"{s.seconds:.2f}",
            f"{s.upload_bytes_per_client:,.0f}",
            f"{p.upload_bytes_per_client:,.0f}",
        ]
        if plan is not None:
            cells += [_figure(s.epsilon), _figure(s.epsilon_spent)]
        table.add_row(*cells)
    console.print(table)
    secure_final, plain_final = report.final(report.secure), report.final(report.plaintext)
    secure_s = sum(r.seconds for r in report.secure)
    plain_s = sum(r.seconds for r in report.plaintext)
    done = [
        (s, p)
        for s, p in zip(report.secure, report.plaintext, strict=True)
        if s.outcome == p.outcome == "completed"
    ]
    up_s = float(np.mean([s.upload_bytes_per_client for s, _ in done])) if done else 0.0
    up_p = float(np.mean([p.upload_bytes_per_client for _, p in done])) if done else 0.0
    lines = [
        f"final accuracy: secure {_pct(secure_final)}, plaintext {_pct(plain_final)}"
        + (
            f" (difference {100 * (secure_final - plain_final):+.2f} points)"
            if secure_final is not None and plain_final is not None
            else ""
        ),
        f"time in secure rounds: {secure_s:.2f} s, clients' local training included "
        f"(the plaintext baseline's updates were computed here in {plain_s:.2f} s)",
        f"upload per client per completed round: secure ({o.scheme}) {up_s:,.0f} B, "
        f"plaintext float32 {up_p:,.0f} B" + (f" ({up_s / up_p:.2f}x)" if up_p > 0 else ""),
        f"scheme: {_scheme_title(report)}; each coordinate of the mean within "
        f"{report.error_bound:.2g} of the exact weighted mean of the clipped updates"
        if plan is None
        else f"scheme: {_scheme_title(report)}; each coordinate of the noisy mean within "
        f"{report.error_bound:.2g} (with probability 1 - 1e-9, all {o.clients} included) of "
        f"the unweighted mean of the updates clipped to L2 norm {plan.config.l2_clip:.3g} "
        f"({report.dp_clip_source})",
    ]
    if report.options.scheme == SchemeKind.MASKING.value:
        lines += _setup_lines(report)
    if plan is not None:
        lines += _dp_lines(report, plan)
    if report.kills:
        lines.append(f"client processes killed: {len(report.kills)} (restarted with fresh keys)")
    for line in lines:
        console.print(line)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _dp_lines(report: DemoReport, plan: DpPlan) -> list[str]:
    """What the report says of distributed DP: the guarantee, what was spent, and its cost
    with so few clients."""
    c = plan.config
    spent = [r.epsilon_spent for r in report.secure if r.epsilon_spent is not None]
    carried = [r.noise_multiplier for r in report.secure if r.noise_multiplier is not None]
    lines = [
        f"distributed DP: epsilon {plan.epsilon_total:.3g} at delta {c.delta:g} over the "
        f"{c.rounds} rounds for every sum of at least {c.min_clients} inputs (noise multiplier "
        f"{plan.noise_multiplier:.3g}); spent by the sums revealed: "
        f"{_figure(spent[-1] if spent else None)}",
    ]
    if carried:
        low, high = min(carried), max(carried)
        lines.append(
            "distributed DP: the sums revealed carried noise multiplier "
            + (f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g} to {high:.3g}")
            + f" (planned {plan.noise_multiplier:.3g} for the minimum cohort of "
            f"{c.min_clients})"
        )
    central = report.central_plan
    if central is not None:
        central_spent = [r.epsilon_spent for r in report.central if r.epsilon_spent is not None]
        lines.append(
            f"central DP baseline (a trusted curator's Gaussian noise on the exact mean of the "
            f"same clients' clipped updates, noise multiplier {central.noise_multiplier:.3g} "
            f"for epsilon {central.epsilon_total:.3g} by the same accountant): final accuracy "
            f"{_pct(report.final(report.central))}, distributed DP "
            f"{_pct(report.final(report.secure))}; epsilon spent: central "
            f"{_figure(central_spent[-1] if central_spent else None)}, distributed "
            f"{_figure(spent[-1] if spent else None)}"
        )
    return [
        *lines,
        f"note: DP with only {report.options.clients} clients per round costs a lot of "
        "accuracy: the noise the guarantee needs is large against the mean of so few updates "
        "(BENCHMARKS.md's privacy-utility sweep trains with 100 clients per round)",
    ]


def _scheme_title(report: DemoReport) -> str:
    """Which scheme ran, with what it fixes: ``secagg+ k=4 t=3, 24-bit ring`` or ``CKKS
    N=8192, moduli [60, 40, 40], scale 2^40, 2 key holders``."""
    title = report.facts.title
    if report.dp_plan is not None:
        title += f", distributed DP ({report.dp_plan.mechanism.value})"
    return title

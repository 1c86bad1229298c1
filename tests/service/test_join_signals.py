"""`secagg join` stops on SIGTERM or SIGINT whatever it is doing.

Whether it is waiting to retry a coordinator that is not there, setting up a channel to it,
inside a user's training callback that would take minutes, or in the middle of a round, a join
process that receives SIGTERM exits 143 and one that receives SIGINT exits 130; its log says
once, in one line, that it stopped (``client N stopped by SIGTERM``), and never shows a
traceback. (The time it takes is measured by hand, not here: about a tenth of a second, and at
most ``STOP_SECONDS``, after which the process ends itself.)

The moments are random: each run draws new ones from a seed that every failure message shows
(set ``SECAGG_SIGNAL_SEED`` to draw the same ones again). The coordinator is a real
``secagg serve`` process and every client a real ``secagg join``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.service.run import Stopped, _join, start_client_process
from tests.ports import free_port
from tests.service.conftest import CLIENTS, Local, write_config
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("SECAGG_SIGNAL_SEED", random.SystemRandom().randrange(2**32)))
SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


# ----------------------------------------------------------------- helpers


class Join:
    """A `secagg join` process, its output (stdout and stderr) in a log file of its own; or,
    with ``script``, a Python script (given the deployment, the identity and the address)
    that calls ``secagg.service.run.join`` as the command does."""

    def __init__(
        self,
        local: Local,
        client_id: int,
        port: int,
        name: str,
        script: str | None = None,
        **options: float | None,
    ) -> None:
        self.client_id = client_id
        self.log = local.root / f"{name}.log"
        identity, target = local.deployment.identities[client_id], f"127.0.0.1:{port}"
        if script is None:
            self.process = start_client_process(
                local.config_path,
                identity,
                target,
                self.log,
                max_attempts=1000,  # it stops because it is told to, never because it gave up
                **options,  # type: ignore[arg-type]
            )
            return
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, str(local.config_path), str(identity), target],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_until_running(self) -> None:
        """Until the client has logged a line of its own (a round, a failed attempt): past
        the interpreter's start-up, when no handler of ours is in place yet."""

        def running() -> bool:
            assert self.process.poll() is None, f"the join ended by itself:\n{self.text()}"
            return " secagg.client " in self.text()

        wait_until(running, f"a line from the join in {self.log}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: signal.Signals, why: str) -> None:
        """Send ``sig`` and check how the process ended: the exit code that names the
        signal, one line saying it stopped, no traceback."""
        where = f"{why} (seed {SEED}; log {self.log})"
        assert self.process.poll() is None, f"the join had already ended: {where}\n{self.text()}"
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=30)  # only so that a hang fails instead of hanging
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"still running after {sig.name}: {where}\n{self.text()}"
            ) from None
        text = self.text()
        assert code == EXIT_CODES[sig], f"exit {code} after {sig.name}: {where}\n{text}"
        assert "Traceback" not in text, f"a traceback after {sig.name}: {where}\n{text}"
        said = [line for line in text.splitlines() if "stopped by" in line]
        assert len(said) == 1, f"{len(said)} stop lines after {sig.name}: {where}\n{text}"
        assert said[0].endswith(f"client {self.client_id} stopped by {sig.name}"), said[0]


class Serve:
    """A `secagg serve` process running ``rounds`` rounds."""

    def __init__(self, local: Local, port: int, *, rounds: int, min_clients: int) -> None:
        self.log = local.root / "serve.log"
        self.ledger = local.config.ledger
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "secagg", "serve",
                    "--config", str(local.config_path),
                    "--port", str(port),
                    "--rounds", str(rounds),
                    "--min-clients", str(min_clients),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def rounds(self) -> list[RoundOutcome]:
        if not self.ledger.exists():
            return []
        with Ledger.open_readonly(self.ledger) as ledger:
            return [r.outcome for r in ledger.rounds()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


@pytest.fixture
def start(local: Local) -> Iterator[Callable[..., Join]]:
    """``start(client_id, port, name, script=None, **options)``: a join, killed at teardown
    if it still runs."""
    started: list[Join] = []

    def start_join(
        client_id: int, port: int, name: str, script: str | None = None, **options: float | None
    ) -> Join:
        started.append(Join(local, client_id, port, name, script, **options))
        return started[-1]

    yield start_join
    for join in started:
        if join.process.poll() is None:
            join.process.kill()
        join.process.wait()


def _stop_at(moments: list[tuple[float, Join, signal.Signals, str]]) -> None:
    """Signal each join at its moment (seconds from now), in order of the moments. The sleeps
    are the gaps between moments: what matters is that they fall anywhere in the join's
    life, not to the millisecond, and a test never reads a clock (tests/test_no_clocks.py)."""
    now = 0.0
    for at, join, sig, why in sorted(moments, key=lambda m: m[0]):
        time.sleep(at - now)
        now = at
        join.stop(sig, f"{why}, {at:.2f} s in")


# ----------------------------------------------------------------- no coordinator


def test_a_join_retrying_an_absent_coordinator_stops_on_either_signal(
    start: Callable[..., Join], rng: random.Random
) -> None:
    # Between attempts it sleeps (0.2 s, then 0.4, 0.8, 1.6 ...); each attempt sets up a
    # channel. The moments fall anywhere in the first two seconds after the first failure.
    port = free_port()  # nobody listens here
    joins = [start(c, port, f"retrying-{c}") for c in range(CLIENTS)]
    for join in joins:
        join.wait_until_running()  # its first attempt has failed
    _stop_at(
        [
            (rng.uniform(0.0, 2.0), join, rng.choice(SIGNALS), "retrying an absent coordinator")
            for join in joins
        ]
    )


# ----------------------------------------------------------------- a coordinator


def test_a_join_inside_a_long_training_callback_stops_on_either_signal(
    local: Local, serves: list[Serve], start: Callable[..., Join], rng: random.Random
) -> None:
    # The round's clients train for five minutes each: a stop must not wait for that.
    local.config_path = write_config(local.root, local.deployment, stage_timeout=600.0)
    port = free_port()
    serve = Serve(local, port, rounds=1, min_clients=3)
    serves.append(serve)
    joins = [start(c, port, f"training-{c}", train_seconds=300.0) for c in range(3)]
    wait_until(lambda: RoundOutcome.RUNNING in serve.rounds(), "a round in its training")
    _stop_at(
        [
            (rng.uniform(0.2, 1.5), join, sig, "training")
            for join, sig in zip(joins, [*SIGNALS, rng.choice(SIGNALS)], strict=True)
        ]
    )


def test_a_join_in_the_middle_of_rounds_stops_on_either_signal(
    local: Local, serves: list[Serve], start: Callable[..., Join], rng: random.Random
) -> None:
    # Rounds run back to back (each takes a few tens of milliseconds): a signal finds a join
    # mid-stage, between two stages or between two rounds. Each stopped join is replaced by a
    # new process of the same client, so that the rounds go on.
    port = free_port()
    serve = Serve(local, port, rounds=100_000, min_clients=3)
    serves.append(serve)
    joins = {c: start(c, port, f"rounds-{c}-0") for c in range(4)}
    wait_until(lambda: len(serve.rounds()) >= 3, "rounds under way")
    for join in joins.values():
        join.wait_until_running()
    for n in range(1, 9):
        time.sleep(rng.uniform(0.1, 0.8))
        client = rng.choice(sorted(joins))
        sig = rng.choice(SIGNALS)
        joins[client].stop(sig, f"stop {n}, after round {len(serve.rounds())}")
        joins[client] = start(client, port, f"rounds-{client}-{n}")
        joins[client].wait_until_running()
    assert serve.process.poll() is None, serve.log.read_text()


# ----------------------------------------------------------------- what makes it sure

# A client process holding a thread the interpreter waits for at exit (a user's code may
# start one): the process must end all the same, once ``STOP_SECONDS`` have passed.
HELD_UP = """
import logging, sys, threading, time
from pathlib import Path
from secagg.service.config import DeploymentConfig
from secagg.service.run import Stopped, join
from secagg.service.tasks import random_task

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
config = DeploymentConfig.load(Path(sys.argv[1]))
try:
    join(config, Path(sys.argv[2]), lambda c: random_task(c, config.params.dim, 0),
         target=sys.argv[3], max_attempts=1000)
except Stopped as exc:
    sys.exit(exc.exit_code)
"""


def test_a_stopped_join_ends_even_when_a_thread_would_hold_its_exit(
    start: Callable[..., Join], rng: random.Random
) -> None:
    for c, sig in enumerate(SIGNALS):
        join = start(c, free_port(), f"held-up-{c}", HELD_UP)
        join.wait_until_running()
        time.sleep(rng.uniform(0.0, 1.0))
        join.stop(sig, "held up by a thread the interpreter waits for")


class _SwallowsOneCancellation:
    """A client whose code swallows the first cancellation that reaches it, as Python 3.11's
    ``asyncio.wait_for`` does when its future completes at the moment the task is cancelled,
    and as a task grpc-aio awaits inside a call does."""

    def __init__(self) -> None:
        self.swallowed = 0

    async def run(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals reach the main thread only",
)
def test_a_stop_outlasts_code_that_swallows_a_cancellation() -> None:
    client = _SwallowsOneCancellation()
    told: list[int] = []
    before = signal.getsignal(signal.SIGTERM)  # another test's library (Ray) may hold it
    with pytest.raises(Stopped) as stopped:
        asyncio.run(_join(client, "nowhere", told.append))  # type: ignore[arg-type]
    assert stopped.value.exit_code == 143
    assert told == [signal.SIGTERM]
    assert client.swallowed == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_while_the_command_is_still_starting_is_one_line(sig: signal.Signals) -> None:
    """Before `join` has installed its own handlers (the command line is still importing), a
    signal is still one line and the usual exit code. ``-X importtime`` shows when the
    command line's imports have begun (the first import after ``secagg.launch``, whose
    ``main`` installs the start-up handlers first): the signal then lands inside them."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "secagg", "join", "--config", "x.toml"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    seen: list[str] = []
    launched = False
    for line in process.stderr:
        seen.append(line)
        if launched and "import time:" in line:
            process.send_signal(sig)
            break
        launched = launched or line.rstrip().endswith("| secagg.launch")
    rest = process.stderr.read()
    assert process.wait(timeout=30) == EXIT_CODES[sig]
    said = [line for line in [*seen, *rest.splitlines()] if "import time:" not in line]
    assert "Traceback" not in "".join(said)
    assert any(f"stopped by {sig.name}" in line for line in said), said

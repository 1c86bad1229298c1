"""An operator's day with real `secagg` processes: typos in deployment.toml, flags out of
range, an address that cannot be had, a cohort that never forms, a second coordinator
started by mistake, Ctrl-C and SIGTERM at any point, a refused or stranded client, a full
disk under the ledger, and a metrics scrape mid-round.

Every failure must be one line on stderr (``error: ...``) with the right exit code (2 for bad
input, 1 for a failed run, 128 + the signal for a stop), never a traceback, and no round may
be lost: the ledger says what happened to each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.service.config import DeploymentConfig
from secagg.service.identity import ClientIdentity
from secagg.service.run import start_client_process
from secagg.service.testhooks import HELD_LINE, HOLD_ENV
from tests.launcher import with_file_size_limit
from tests.ports import free_port
from tests.service.conftest import CLIENTS, Local
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

SECAGG = [sys.executable, "-m", "secagg"]


# ----------------------------------------------------------------- helpers


def _start(*args: str, cwd: Path | None = None, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SECAGG, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        **popen,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"still running after {timeout} s: {stderr}") from None
    return process.returncode, stdout, stderr


def _run(*args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str, str]:
    return _finish(_start(*args, cwd=cwd), timeout)


def _only_line(stderr: str, stdout: str = "") -> str:
    """Bad input: exactly one line on stderr, the error."""
    assert "Traceback" not in stderr + stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _last_line(stderr: str, stdout: str = "") -> str:
    """A failed run: log lines may come first; the error is one line, and the last."""
    assert "Traceback" not in stderr + stdout
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    return lines[-1]


def _toml(data: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _edited(local: Local, name: str, **changes: dict[str, Any]) -> Path:
    """The deployment file with some keys changed, saved beside it as ``name``."""
    data = tomllib.loads(local.config_path.read_text())
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = local.root / name
    path.write_text(_toml(data))
    return path


class Serve:
    """A `secagg serve` process, its stderr in a file (so that it never blocks on a pipe)."""

    def __init__(self, local: Local, *args: str, name: str = "serve", **popen: Any) -> None:
        self.log = local.root / f"{name}.log"
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(
                [*SECAGG, "serve", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                **popen,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        def said() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited before {pattern!r}: {self.text()}")
            return re.search(pattern, self.text()) is not None

        wait_until(said, lambda: f"{pattern!r} from serve: {self.text()}", timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


def _clients(
    local: Local, port: int, ids: range, *, rounds: int = 1, train_seconds: float | None = None
) -> None:
    for c in ids:
        local.processes[c] = start_client_process(
            local.config_path,
            local.deployment.identities[c],
            f"127.0.0.1:{port}",
            local.root / f"client-{c}.log",
            rounds=rounds,
            train_seconds=train_seconds,
        )


def _rounds(ledger: Path) -> list[Any]:
    with Ledger.open_readonly(ledger) as book:
        return book.rounds()


def _running(ledger: Path) -> bool:
    return ledger.exists() and any(r.outcome is RoundOutcome.RUNNING for r in _rounds(ledger))


# ----------------------------------------------------------------- bad input: exit 2, one line

TYPOS = {
    "an unknown protocol": ({"round": {"protocol": "secagg++"}}, "round.protocol must be one of"),
    "an unknown server model": (
        {"round": {"server_model": "malicious"}},
        "round.server_model must be one of",
    ),
    "a dim gRPC cannot carry": ({"round": {"dim": 600_000_000}}, "lower round.dim"),
    "port 70000": ({"coordinator": {"port": 70000}}, r"port must be an integer in \[0, 65535\]"),
    "port -1": ({"coordinator": {"port": -1}}, r"port must be an integer in \[0, 65535\]"),
    "a negative stage timeout": (
        {"coordinator": {"stage_timeout": -5.0}},
        "stage_timeout must be a positive number",
    ),
    "a zero cohort wait": ({"coordinator": {"cohort_wait": 0.0}}, "cohort_wait must be a positive"),
    "min_clients above max_clients": (
        {"coordinator": {"min_clients": CLIENTS + 1}},
        r"min_clients must be an integer in \[3, max_clients = 6\]",
    ),
    "a negative client deadline": (
        {"clients": {"stage_timeout": -1.0}},
        "clients.stage_timeout must be a positive",
    ),
}


@pytest.mark.parametrize("typo", TYPOS)
def test_a_typo_in_the_deployment_is_one_line_from_serve_and_from_join(
    local: Local, typo: str
) -> None:
    changes, words = TYPOS[typo]
    config = _edited(local, "typo.toml", **changes)
    identity = local.deployment.identities[0]
    serve = _start("serve", "--config", str(config))
    join = _start("join", "--config", str(config), "--identity", str(identity))
    for process in (serve, join):
        code, stdout, stderr = _finish(process)
        assert code == 2
        line = _only_line(stderr, stdout)
        assert re.search(words, line), line
        assert str(config) in line  # the file, then the key


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--cohort-wait", "0"], "cohort_wait must be a positive"),
        (["--stage-timeout", "-1"], "stage_timeout must be a positive"),
        (["--port", "70000"], "port must be an integer"),
        (["--min-clients", "99"], "min_clients must be an integer"),
        (["--min-clients", "2"], "min_clients must be an integer"),
        (["--rounds", "0"], "--rounds must be a positive integer"),
        (["--stage-timeout", "500"], "must stay below the clients' own deadline"),
        (["--model-out", "/no/such/dir/model.npy"], "does not exist"),
    ],
)
def test_serve_flags_out_of_range_are_one_line(local: Local, flags: list[str], words: str) -> None:
    code, stdout, stderr = _run("serve", "--config", str(local.config_path), *flags)
    assert code == 2
    assert words in _only_line(stderr, stdout)
    assert not local.config.ledger.exists()  # refused before the ledger was touched


def test_an_address_that_cannot_be_had_is_one_line_saying_why(local: Local) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    # Each with a ledger of its own: they run at once, and a ledger has one writer.
    cases = {
        "in use": ({"port": taken}, "address already in use"),
        "not here": ({"host": "203.0.113.7"}, "address not available on this machine"),
        "unknown": ({"host": "no-such-host.invalid"}, "unknown host"),
    }
    try:
        running = {
            name: _start(
                "serve",
                "--config",
                str(_edited(local, f"{i}.toml", coordinator={**where, "ledger": f"{i}.sqlite"})),
            )
            for i, (name, (where, _)) in enumerate(cases.items())
        }
        for name, process in running.items():
            code, stdout, stderr = _finish(process)
            assert code == 2, (name, stderr)
            assert cases[name][1] in _only_line(stderr, stdout), name
    finally:
        holder.close()


def test_certs_checks_everything_before_writing_and_a_retry_then_works(tmp_path: Path) -> None:
    target = tmp_path / "deploy"
    bad = {
        "--dim 0": (["--dim", "0"], "dim must be a positive integer"),
        "two clients": (["--clients", "2"], "--clients must be at least 3"),
        "port 70000": (["--port", "70000"], "port must be an integer"),
        "min_clients above clients": (["--min-clients", "11"], "min_clients"),
        "a weight the task exceeds": (["--max-weight", "2"], "sends weights up to 3"),
        "digits with another dim": (["--task", "digits", "--dim", "100"], "needs --dim 4810"),
    }
    running = {
        name: _start("certs", str(target), *flags, cwd=tmp_path) for name, (flags, _) in bad.items()
    }
    for name, process in running.items():
        code, stdout, stderr = _finish(process)
        assert code == 2, (name, stdout, stderr)
        assert bad[name][1] in _only_line(stderr, stdout), name
    assert not target.exists()  # not one file
    code, stdout, stderr = _run("certs", str(target), "--dim", "32", cwd=tmp_path)
    assert code == 0, stderr
    config = DeploymentConfig.load(target / "deployment.toml")
    assert config.params.dim == 32 and config.params.max_weight == 3  # random: weights 1..3


def test_certs_for_the_digits_task_sizes_the_deployment_for_it(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from secagg.fl.data import load_digits_split

    code, _, stderr = _run("certs", str(tmp_path / "d"), "--clients", "5", "--task", "digits")
    assert code == 0, stderr
    config = DeploymentConfig.load(tmp_path / "d" / "deployment.toml")
    split = load_digits_split(5, seed=0)
    assert config.params.dim == 4810 and config.params.clip == 2.0
    assert config.params.max_weight >= max(split.sizes)  # a client's weight: its examples
    assert config.task.task == "digits" and config.task.clients == 5


def test_join_refuses_a_task_its_deployment_cannot_carry(local: Local) -> None:
    code, stdout, stderr = _run(
        "join",
        "--config",
        str(local.config_path),
        "--identity",
        str(local.deployment.identities[0]),
        "--task",
        "digits",
    )
    assert code == 2
    assert "needs round.dim = 4810" in _only_line(stderr, stdout)


def test_the_rounds_command_on_a_bad_ledger_or_export_is_one_line(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    with Ledger(ledger) as book:
        book.start_round(
            round_id=1,
            session_id=bytes(32),
            task_hash=bytes(32),
            protocol="secagg+",
            cohort=[0, 1, 2],
            degree=2,
            threshold=2,
            dim=3,
        )
        book.complete_round(
            1,
            included=[0, 1, 2],
            aggregate=np.array([0.5, -0.25, 1.0]),
            total_weight=3,
            upload_bytes_per_client=1.0,
            download_bytes_per_client=1.0,
        )
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    cases = {
        "corrupt": ["--ledger", str(corrupt)],
        "a directory": ["--ledger", str(tmp_path)],
        "missing": ["--ledger", str(tmp_path / "none.sqlite")],
        "an id SQLite cannot hold": ["--ledger", str(ledger), "--export", str(2**70), "--out", "x"],
        "a round that is not there": ["--ledger", str(ledger), "--export", "7", "--out", "x.npy"],
        "into a missing directory": [
            "--ledger",
            str(ledger),
            "--export",
            "1",
            "--out",
            str(tmp_path / "no" / "x.npy"),
        ],
        "without --out": ["--ledger", str(ledger), "--export", "1"],
    }
    running = {name: _start("rounds", *args) for name, args in cases.items()}
    for name, process in running.items():
        code, stdout, stderr = _finish(process)
        assert code == 2, (name, stdout, stderr)
        _only_line(stderr, stdout)
    code, _, stderr = _run("rounds", "--ledger", str(ledger), "--export", "1", "--out", "m.npy")
    assert code == 0, stderr


# ----------------------------------------------------------------- failed runs: exit 1


def test_serve_without_a_cohort_in_time_fails_in_one_line_and_starts_no_round(local: Local) -> None:
    code, stdout, stderr = _run("serve", "--config", str(local.config_path), "--cohort-wait", "0.5")
    assert code == 1
    line = _last_line(stderr, stdout)
    assert "only 0 of the 3 clients a round needs (min_clients) connected" in line
    assert line.endswith("; not connected: clients 0, 1, 2, 3, 4, 5")
    assert "every client this deployment has" not in stderr  # 3 of 6 leaves room: no warning
    assert _rounds(local.config.ledger) == []


def test_serve_warns_when_min_clients_leaves_no_room_and_a_stall_says_who_it_waits_for(
    local: Local,
) -> None:
    everyone = str(CLIENTS)
    code, stdout, stderr = _run(
        "serve", "--config", str(local.config_path), "--min-clients", everyone,
        "--cohort-wait", "0.5",
    )  # fmt: skip
    assert code == 1
    missing = "clients 0, 1, 2, 3, 4, 5"
    warning, waiting = (
        "min_clients is 6, every client this deployment has (6): a client lost for good stops "
        "the next round (serve waits cohort_wait, 0.5 s, for it, then exits); --min-clients 5 "
        "would carry on without it",
        f"waiting up to 0.5 s (cohort_wait) for 6 clients (min_clients): 0 connected; not "
        f"connected: {missing}",
    )
    lines = [line.split(" WARNING ", 1)[-1].split(" INFO ", 1)[-1] for line in stderr.splitlines()]
    assert warning in lines and waiting in lines, stderr
    assert lines.index(warning) < lines.index(waiting)  # said at start, before any wait
    assert _last_line(stderr, stdout) == (
        "error: only 0 of the 6 clients a round needs (min_clients) connected within 0.5 s "
        f"(cohort_wait); not connected: {missing}"
    )


def test_serve_whose_round_aborts_says_why_and_exits_1(local: Local, servers: list[Serve]) -> None:
    port = free_port()
    serve = Serve(
        local, "--config", str(local.config_path), "--port", str(port), "--stage-timeout", "1"
    )
    servers.append(serve)
    serve.wait_for("listening")
    _clients(local, port, range(3), train_seconds=3.0)  # longer than the stage allows
    code, stdout, _ = _finish(serve.process)
    assert code == 1
    assert "round 1: aborted, 0 of 3 included" in stdout
    assert "3 clients missed the deadline at commit" in stdout
    ledger = DeploymentConfig.load(local.config_path).ledger
    assert _last_line(serve.text()) == (
        f"error: 1 of 1 rounds aborted (round 1); `secagg rounds --ledger {ledger}` says why"
    )


def test_a_refused_or_stranded_client_says_so_in_one_line(
    local: Local, servers: list[Serve]
) -> None:
    port = free_port()
    serve = Serve(local, "--config", str(local.config_path), "--port", str(port))
    servers.append(serve)
    serve.wait_for("listening")
    stranger = local.root / "stranger.key"
    ClientIdentity.generate(0).save(stranger)  # id 0, but not the key the allow-list holds
    refused = _start(
        "join", "--config", str(local.config_path), "--identity", str(stranger),
        "--target", f"127.0.0.1:{port}", "--max-attempts", "2",
    )  # fmt: skip
    stranded = _start(
        "join", "--config", str(local.config_path),
        "--identity", str(local.deployment.identities[1]),
        "--target", f"127.0.0.1:{free_port()}", "--max-attempts", "2",
    )  # fmt: skip
    code, stdout, stderr = _finish(refused)
    assert code == 1
    assert _last_line(stderr, stdout) == (
        "error: the coordinator refused this client: authentication failed"
    )
    code, stdout, stderr = _finish(stranded)
    assert code == 1
    assert "the coordinator at 127.0.0.1:" in _last_line(stderr, stdout)


def test_a_full_disk_under_the_ledger_fails_the_run_in_one_line_and_loses_no_round(
    local: Local,
) -> None:
    # Aggregates of 20,000 float64 values (160 kB) cannot be written under a 100 kB file size
    # limit, while the ledger's creation and a round's start fit: the disk is "full" exactly
    # when the first round completes.
    dim = 20_000
    data = tomllib.loads(local.config_path.read_text())
    data["round"]["dim"] = dim
    local.config_path.write_text(_toml(data))
    port = free_port()
    limit = 100_000

    serve = subprocess.Popen(
        with_file_size_limit(
            [*SECAGG, "serve", "--config", str(local.config_path), "--port", str(port)], limit
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    _clients(local, port, range(3))
    code, stdout, stderr = _finish(serve)
    assert code == 1
    line = _last_line(stderr, stdout)
    assert str(local.config.ledger) in line
    # Not completed, so no client heard it completed; a restart records it as aborted.
    (first,) = _rounds(local.config.ledger)
    assert first.outcome is not RoundOutcome.COMPLETED and not first.has_aggregate
    for c in range(3):
        local.processes[c].wait(timeout=60)
    logs = local.client_logs()
    assert "completed, included" not in logs and "aborted, not included" in logs
    with Ledger(local.config.ledger) as ledger:
        ledger.recover()
        assert ledger.round(first.round_id).outcome is RoundOutcome.ABORTED


# ----------------------------------------------------------------- a second coordinator


def test_a_second_coordinator_on_the_same_deployment_is_refused_and_the_first_carries_on(
    local: Local, servers: list[Serve]
) -> None:
    port = free_port()
    # The first coordinator holds its round while its clients train (the test-only hold), so
    # it is certainly still running when the second starts, however slow the machine.
    held = {**os.environ, HOLD_ENV: "training"}
    first = Serve(local, "--config", str(local.config_path), "--port", str(port), env=held)
    servers.append(first)
    first.wait_for("listening")
    _clients(local, port, range(3), train_seconds=2.0)
    first.wait_for(HELD_LINE)

    # The same deployment: the ledger is held by the first coordinator.
    code, stdout, stderr = _run("serve", "--config", str(local.config_path), "--port", str(port))
    assert code == 2, (stdout, stderr)
    assert str(local.config.ledger) in _only_line(stderr, stdout)
    # Another ledger, the same port: no port sharing, so no clients split between the two.
    other = _edited(local, "other.toml", coordinator={"ledger": "other.sqlite", "port": port})
    code, stdout, stderr = _run("serve", "--config", str(other))
    assert code == 2, (stdout, stderr)
    assert "address already in use" in _only_line(stderr, stdout)

    # The first carries on undisturbed: still in its round, its ledger its own.
    assert first.process.poll() is None
    (record,) = _rounds(local.config.ledger)
    assert record.outcome is RoundOutcome.RUNNING
    first.process.send_signal(signal.SIGINT)
    code, _, _ = _finish(first.process)
    assert code == 130, first.text()
    assert "Traceback" not in first.text()


# ----------------------------------------------------------------- stopping


def test_ctrl_c_stops_serve_waiting_for_a_cohort_without_waiting_it_out(
    local: Local, servers: list[Serve]
) -> None:
    # An hour's cohort wait: a serve that finished its wait before it stopped would outlast
    # the generous wait below (and end with "no cohort", not 130).
    local.config_path = _edited(local, "patient.toml", coordinator={"cohort_wait": 3600.0})
    serve = Serve(local, "--config", str(local.config_path), "--port", str(free_port()))
    servers.append(serve)
    serve.wait_for("listening")
    serve.process.send_signal(signal.SIGINT)
    code = serve.process.wait(timeout=60)  # only so that a hang fails instead of hanging
    assert code == 130
    assert "Traceback" not in serve.text() and "stopped by SIGINT" in serve.text()
    assert _rounds(local.config.ledger) == []


def test_sigterm_stops_serve_mid_round_without_waiting_for_the_stage_and_records_it_aborted(
    local: Local, servers: list[Serve]
) -> None:
    # The clients train for an hour and the commit stage would wait ten minutes for them: a
    # serve that waited for either would outlast the generous wait below, and its round
    # would not end as "the coordinator was stopped" at commit.
    local.config_path = _edited(
        local,
        "patient.toml",
        coordinator={"stage_timeout": 600.0},
        clients={"stage_timeout": 1300.0},
    )
    port = free_port()
    serve = Serve(local, "--config", str(local.config_path), "--port", str(port))
    servers.append(serve)
    serve.wait_for("listening")
    _clients(local, port, range(3), train_seconds=3600.0)  # the round sits in its commit stage
    wait_until(lambda: _running(local.config.ledger), "a running round")
    serve.process.send_signal(signal.SIGTERM)
    code = serve.process.wait(timeout=60)  # only so that a hang fails instead of hanging
    assert code == 143
    assert "Traceback" not in serve.text()
    (record,) = _rounds(local.config.ledger)
    assert record.outcome is RoundOutcome.ABORTED
    assert record.abort_reason == "aborted at commit: the coordinator was stopped"


def test_ctrl_c_stops_a_client_cleanly(local: Local) -> None:
    join = _start(
        "join", "--config", str(local.config_path),
        "--identity", str(local.deployment.identities[0]),
        "--target", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    time.sleep(1.5)  # retrying a coordinator that is not there
    join.send_signal(signal.SIGINT)
    code, stdout, stderr = _finish(join, timeout=10)
    assert code == 130
    assert "Traceback" not in stdout + stderr


# ----------------------------------------------------------------- metrics


def test_serve_exposes_metrics_during_a_round_and_no_client_id(
    local: Local, servers: list[Serve]
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    port, metrics_port = free_port(), free_port()
    serve = Serve(
        local,
        "--config", str(local.config_path), "--port", str(port),
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    servers.append(serve)
    serve.wait_for("listening")
    _clients(local, port, range(3), train_seconds=2.0)
    wait_until(lambda: _running(local.config.ledger), "a running round")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("secagg_rounds_started_total", frozenset())] == 1
    assert samples[("secagg_connected_clients", frozenset())] == 3
    task = frozenset({("direction", "down"), ("type", "task")})
    assert samples[("secagg_message_bytes_total", task)] > 0
    assert not any("client" in dict(labels) for _, labels in samples)
    code, _, _ = _finish(serve.process)
    assert code == 0, serve.text()

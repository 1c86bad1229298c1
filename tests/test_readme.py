"""The README works as written: its Python snippets run, its deployment section runs with five
clients and three rounds, and every command it shows answers bad input with one line.

The snippets and commands are read from README.md itself, so the README cannot drift from
what the code does without this test failing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secagg.ledger import Ledger
from secagg.protocol.runner import RoundOutcome
from secagg.service.config import DeploymentConfig
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BIN = Path(sys.executable).parent  # the venv's `secagg` entry point sits beside python


def _blocks(language: str) -> list[tuple[str, str]]:
    """Each fenced block of ``language``, with the heading it sits under."""
    found = []
    for match in FENCE.finditer(README):
        if match[1] == language:
            heading = re.findall(r"^#+ (.+)$", README[: match.start()], re.MULTILINE)[-1]
            found.append((heading, match[2]))
    return found


def _section(heading: str, language: str) -> str:
    (block,) = [code for h, code in _blocks(language) if h == heading]
    return block


# Snippets that need an optional extra are skipped (not failed) where it is missing.
_NEEDS = {"PyTorch": "torch", "Using secagg with Flower": "flwr"}
PYTHON_SNIPPETS = _blocks("python")


@pytest.mark.parametrize("heading, code", PYTHON_SNIPPETS, ids=[h for h, _ in PYTHON_SNIPPETS])
def test_every_python_snippet_runs_as_written(
    heading: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needed = _NEEDS.get(heading)
    if needed is not None:
        pytest.importorskip(needed)
    if heading == "Using secagg with Flower":
        pytest.skip("a fragment of a Flower app (tests/flower runs the real one)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md: {heading}", "exec"), {"__name__": "__readme__"})


def test_the_snippets_that_the_issue_names_are_there_and_complete() -> None:
    headings = [h for h, _ in PYTHON_SNIPPETS]
    assert "A client in your own training loop" in headings
    core = _section("The protocol core", "python")
    for call in ("round_config(", "set_input(", ".start()", ".receive(", "close_stage()"):
        assert call in core, call
    assert "weighted_mean(" in core


@pytest.mark.timeout(240)
def test_the_deployment_section_runs_five_clients_for_three_rounds_and_exports_both(
    tmp_path: Path,
) -> None:
    script = _section("Deployment", "bash")
    assert "--clients 5" in script and "--rounds 3" in script
    # The one change: a free port instead of the default, so that parallel runs of the
    # test suite (or anything else on this machine) cannot collide.
    port = free_port()
    script = script.replace("secagg certs deploy", f"secagg certs deploy --port {port}", 1)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert output.count("completed, 5 of 5 included") == 3, output
    assert output.count("left after 3 round(s): 3 included") == 5, output

    deploy = tmp_path / "deploy"
    config = DeploymentConfig.load(deploy / "deployment.toml")
    with Ledger.open_readonly(config.ledger) as ledger:
        rounds = ledger.rounds()
        last = ledger.aggregate(3)
    assert [r.outcome for r in rounds] == [RoundOutcome.COMPLETED] * 3
    assert all(len(r.included) == 5 for r in rounds)
    exported = np.load(deploy / "round3.npy")
    np.testing.assert_array_equal(exported, last.astype(np.float32))
    # The model: the task's initial model (zeros for random) plus each round's mean update.
    with Ledger.open_readonly(config.ledger) as ledger:
        expected = np.zeros(config.params.dim, dtype=np.float32)
        for r in rounds:
            expected = (expected + ledger.aggregate(r.round_id)).astype(np.float32)
    model = np.load(deploy / "model.npy")
    assert model.dtype == np.float32 and model.shape == (config.params.dim,)
    np.testing.assert_array_equal(model, expected)


# ------------------------------------------------------------------ bad input, every command


def _commands() -> list[list[str]]:
    """Every `secagg ...` command in the README's bash blocks, as arguments."""
    commands = []
    for _, code in _blocks("bash"):
        text = code.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if line.startswith("secagg "):
                commands.append(shlex.split(line.replace("$i", "0"))[1:])
    return commands


def _bad_variants(args: list[str]) -> list[list[str]]:
    """The command with an option it does not have, and with each option's value replaced
    by one that cannot be right ("x": not a number, not a choice, not an existing file)."""
    variants = [[*args, "--no-such-option"]]
    for i, arg in enumerate(args):
        if arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            variants.append([*args[: i + 1], "x", *args[i + 2 :]])
    return variants


COMMANDS = _commands()
BAD = [variant for command in COMMANDS for variant in _bad_variants(command)]


def test_the_readme_shows_every_command() -> None:
    shown = {args[0] for args in COMMANDS}
    assert shown >= {"certs", "serve", "join", "rounds", "simulate"}


@pytest.mark.timeout(180)
def test_every_readme_command_given_bad_input_says_so_in_one_line(tmp_path: Path) -> None:
    # All at once (each is a process of its own; none of them should get far).
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm"}
    running = [
        (
            variant,
            subprocess.Popen(
                [sys.executable, "-m", "secagg", *variant],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            ),
        )
        for variant in BAD
    ]
    for variant, process in running:
        stdout, stderr = process.communicate(timeout=120)
        shown = " ".join(variant)
        assert process.returncode == 2, (shown, stdout, stderr)
        assert "Traceback" not in stdout + stderr, shown
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (shown, stderr)
    assert not any(tmp_path.iterdir()), "bad input must not leave files behind"

"""`secagg --help` and `secagg <command> --help` start at once: they import the options,
not the work.

Each case runs the real entry point (``secagg.launch.main``) in a fresh interpreter and
reads ``sys.modules`` after the help is printed: a count of what was loaded, never a clock
(benchmarks/cli_startup.py times it, in BENCHMARKS.md). And because the options name their
choices without importing the library, each choice is checked against the library's own
enum here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from enum import StrEnum

import pytest
import typer

from secagg.cli import app
from secagg.cli.options import (
    BackendChoice,
    ProtocolChoice,
    ServerModelChoice,
    TaskChoice,
)

COMMANDS = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]

# What a command runs, never what its help needs: the frameworks and native libraries, and the
# cryptography the protocol uses.
HEAVY = ("numpy", "grpc", "torch", "tenseal", "ray", "flwr", "cryptography", "dp_accounting")

# The secagg modules the help may load: the command line itself and what its options quote
# (the stages --drop names, the DP knobs and their defaults, the rows of compare) and their few
# imports.
LIGHT = {
    "secagg",
    "secagg.compare",
    "secagg.dp",
    "secagg.dp.mechanism",
    "secagg.dp.settings",
    "secagg.errors",
    "secagg.extras",
    "secagg.knobs",
    "secagg.launch",
    "secagg.protocol",
    "secagg.protocol.codec",
    "secagg.protocol.stages",
}

_HELP_AND_MODULES = """
import json, sys
sys.argv = ["secagg", *sys.argv[1:]]
from secagg.launch import main
try:
    main()
except SystemExit as stop:
    code = stop.code
sys.stderr.write(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _help_loads(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _HELP_AND_MODULES, *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    answer = json.loads(done.stderr.splitlines()[-1])
    assert answer["code"] == 0, done.stderr
    assert "Usage: secagg" in done.stdout
    return set(answer["modules"])


@pytest.mark.parametrize("command", [None, *COMMANDS], ids=lambda c: c or "secagg")
def test_help_imports_no_heavy_module(command: str | None) -> None:
    loaded = _help_loads(*([command] if command else []))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == []
    ours = {m for m in loaded if m.split(".")[0] == "secagg" and not m.startswith("secagg.cli")}
    assert sorted(ours - LIGHT) == []


def test_every_command_is_checked() -> None:
    assert COMMANDS == [
        "simulate",
        "certs",
        "serve",
        "join",
        "rounds",
        "history",
        "flower-node-key",
        "flower-nodes",
        "demo",
        "compare",
    ]


def _values(kind: type[StrEnum]) -> list[str]:
    return [member.value for member in kind]


def test_each_choice_offers_exactly_the_library_values() -> None:
    from secagg.backends import Backend
    from secagg.schemes.masking.parameters import Protocol, ServerModel
    from secagg.service.tasks import Task

    assert _values(BackendChoice) == _values(Backend)
    assert _values(ProtocolChoice) == _values(Protocol)
    assert _values(ServerModelChoice) == _values(ServerModel)
    assert _values(TaskChoice) == _values(Task)

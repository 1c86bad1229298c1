"""The ``secagg`` command.

Every error is one line on stderr (``error: ...``), never a traceback. Exit codes: 0 when
the command did what it was asked; 2 for bad input (arguments, files, a deployment that
cannot start: a port in use, a ledger another coordinator holds); 1 for a run that started
and failed (a round that aborted, no cohort in time, a refused or unreachable client);
an optional extra that the command (or one of its options) needs and that is not installed
is 2 too, its one line naming the extra to install (``secagg.extras``);
130 or 143 when SIGINT or SIGTERM stopped ``serve`` or ``join`` (a running round is then
recorded as aborted first).

One module per family of commands declares its options with nothing heavier than typer, so
``secagg --help`` and ``secagg <command> --help`` answer at once; what a command runs (numpy,
gRPC, the schemes, the extras) is imported when it runs. ``tests/test_cli_startup.py`` holds
``--help`` to that.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import typer

from secagg.cli import compare, demo, deploy, flower, ledger, service, simulate
from secagg.cli.output import OK_EXIT, USAGE_EXIT, print_error, when_started
from secagg.errors import one_line
from secagg.extras import missing_extra

__all__ = ["app", "main", "run"]

app = typer.Typer(
    help="Secure aggregation for federated learning: SecAgg and SecAgg+.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Secure aggregation for federated learning: SecAgg and SecAgg+."""


# In the order `secagg --help` lists them.
app.command()(simulate.simulate)
app.command()(deploy.certs)
app.command()(service.serve)
app.command()(service.join)
app.command()(ledger.rounds)
app.command()(ledger.history)
app.command("flower-node-key")(flower.flower_node_key)
app.command("flower-nodes")(flower.flower_nodes)
app.command()(demo.demo)
app.command()(compare.compare)


def _click_exception() -> type[Exception]:
    """Click's base exception, wherever this typer keeps click (vendored or not)."""
    for kind in typer.BadParameter.__mro__:
        if kind.__name__ == "ClickException":
            return kind
    raise ImportError("typer's click has no ClickException")  # pragma: no cover


def run(args: Sequence[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv[1:]``); the exit code."""
    command = typer.main.get_command(app)
    click_error = _click_exception()
    try:
        result = command.main(
            list(sys.argv[1:] if args is None else args), prog_name="secagg", standalone_mode=False
        )
    except click_error as exc:
        text: str = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":
            # No arguments at all: the help is the answer (some click versions print it
            # themselves, others hand it over as the message).
            if text.strip():
                sys.stderr.write(text + "\n")
            return USAGE_EXIT
        # Bad arguments: one line (click would draw a usage box), and where to look.
        context = getattr(exc, "ctx", None)
        where = getattr(context, "command_path", "") or "secagg"
        print_error(f"{one_line(text)} (see {where} --help)")
        return USAGE_EXIT
    except (KeyboardInterrupt, typer.Abort):
        return 130
    except Exception as exc:
        # The one place a missing extra becomes its line, whichever command, option or
        # import found it (a MissingExtra, or a bare ModuleNotFoundError of an extra's
        # module); anything else is a bug, and its traceback is the report.
        missing = missing_extra(exc)
        if missing is None:
            raise
        print_error(missing.for_command(_command_path(command, args)))
        return USAGE_EXIT
    return result if isinstance(result, int) else OK_EXIT


def _command_path(group: object, args: Sequence[str] | None) -> str:
    """``secagg demo``: the command ``args`` ran (``secagg`` if it names none)."""
    commands = getattr(group, "commands", {})
    given = list(sys.argv[1:] if args is None else args)
    name = next((a for a in given if not a.startswith("-")), None)
    return f"secagg {name}" if name in commands else "secagg"


def main(started: Callable[[], None] | None = None) -> None:
    """The console script: ``started`` puts back the signal handlers the entry point replaced
    while the command starts (``secagg.launch``), once the command has its imports."""
    when_started(started)
    # gRPC's C core writes its own log lines to stderr (a failed bind, a peer's GOAWAY):
    # errors reach the operator as our one line instead. GRPC_VERBOSITY=ERROR brings them
    # back; it is read once, when grpc is first imported (by the commands that use it).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    sys.exit(run())

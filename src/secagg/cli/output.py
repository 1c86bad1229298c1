"""How the command speaks: its exit codes, every error as one line, ordinary lines never
read as markup. Rich is imported by the functions that print, not on load: ``--help`` does
not need this module to bring it in."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TextIO

import typer

from secagg.errors import one_line

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "FAILED_EXIT",
    "OK_EXIT",
    "USAGE_EXIT",
    "fail",
    "print_error",
    "say",
    "setup_logging",
    "started",
    "when_started",
    "wide_console",
]

OK_EXIT = 0
USAGE_EXIT = 2
FAILED_EXIT = 1

# What ``started`` calls once: set by the entry point, which stops the command with one line
# while it is still importing (``secagg.launch``). None when run() is called directly.
_on_started: Callable[[], None] | None = None


def when_started(action: Callable[[], None] | None) -> None:
    global _on_started
    _on_started = action


def started() -> None:
    """Every command calls this once its imports are done: from here SIGINT and SIGTERM are
    its own (Python's, or the handlers ``serve`` and ``join`` install), no longer the entry
    point's line for a command stopped while it starts."""
    global _on_started
    action, _on_started = _on_started, None
    if action is not None:
        action()


def print_error(message: str, *, stream: TextIO | None = None) -> None:
    """``error: <message>`` as exactly one line on stderr (red on a terminal)."""
    from rich.console import Console
    from rich.text import Text

    out = sys.stderr if stream is None else stream
    # soft_wrap: a long line stays one line, on a terminal or not; Text: never markup (a
    # message may quote ``[tls]`` or a path with brackets).
    console = Console(file=out, soft_wrap=True, highlight=False)
    console.print(Text.assemble(("error: ", "bold red"), one_line(message)))


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    """Every error of every command goes out through here: one line, then the exit code."""
    print_error(message)
    raise typer.Exit(code)


def say(text: str, *, stderr: bool = False) -> None:
    """A line of ordinary output: never markup (it may quote paths and sections)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False).print(Text(text))


def wide_console() -> Console:
    """Wide enough for the per-round tables even when the output is not a terminal."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 150)


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

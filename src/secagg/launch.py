"""The ``secagg`` command's entry point: stopped cleanly even while it is still starting.

Starting is importing: the command line itself (typer, a tenth of a second), then what the
chosen command runs (numpy, gRPC, the protocol: a few tenths more), which each command
imports in its own body so that ``--help`` need not. A SIGTERM or Ctrl-C in that window would
otherwise get Python's default: killed with no word, or a ``KeyboardInterrupt`` traceback from
inside an import. So the handlers that say one line and exit 143 or 130 are installed first,
and the defaults are put back once the command has its imports (it calls
``secagg.cli.output.started``); ``serve`` and ``join`` then install their own (they stop
within a second, a running round recorded).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["main"]


def _stopped_while_starting(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"secagg stopped by {name} while starting\n".encode())
    os._exit(128 + signum)  # nothing has begun that needs cleaning up


def main() -> None:
    previous = {
        sig: signal.signal(sig, _stopped_while_starting) for sig in (signal.SIGINT, signal.SIGTERM)
    }

    def started() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    from secagg.cli import main as command_line

    command_line(started)

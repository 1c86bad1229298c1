"""Start a child process under a limit without a ``preexec_fn``.

A ``preexec_fn`` makes ``subprocess`` fork() the test process itself, and in a test process
that has run gRPC (its pollers' threads), gRPC's fork handlers may abort the child before it
reaches exec: ``epoll_wait error: Bad file descriptor``, then SIGABRT, seen once in a while on
a loaded machine. Instead a tiny launcher, started the ordinary way (no handler of ours or
gRPC's runs between fork and exec), applies the limit to itself and execs the real command,
which inherits it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["with_file_size_limit", "without_file_capabilities"]

_LAUNCHER = """
import ctypes, os, resource, sys
kind, value, command = sys.argv[1], sys.argv[2], sys.argv[3:]
if kind == "drop-file-capabilities":
    # Root reads and writes whatever the permission bits say through two capabilities;
    # dropping them from the bounding set before exec leaves the command's root without them.
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
elif kind == "file-size":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
else:
    raise SystemExit(f"unknown limit {kind!r}")
os.execv(command[0], command)
"""


def without_file_capabilities(command: Sequence[str]) -> list[str]:
    """``command`` run by a root that file permissions apply to."""
    return [sys.executable, "-c", _LAUNCHER, "drop-file-capabilities", "", *command]


def with_file_size_limit(command: Sequence[str], limit: int) -> list[str]:
    """``command`` run under RLIMIT_FSIZE = ``limit`` bytes (a "full" disk)."""
    return [sys.executable, "-c", _LAUNCHER, "file-size", str(limit), *command]

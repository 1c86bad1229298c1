"""The optional extras of ``pyproject.toml``, and the one way secagg says that one is missing.

Each extra is known here by the top-level modules it brings. ``require`` imports them or
raises ``MissingExtra`` (``secagg.errors``), naming the extra and what needed it; every
optional import in secagg goes through it. ``missing_extra`` finds, in any exception, the
extra whose absence caused it: a ``MissingExtra``, or a bare ``ModuleNotFoundError`` of one of
these modules (an import that does not go through ``require``). The command line
(``secagg.cli.run``) asks it of every error that would otherwise end in a traceback, so a
missing extra is always one line that names the extra. ``tests/test_extras.py`` checks this
table against ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from secagg.errors import MissingExtra

__all__ = ["EXTRAS", "missing_extra", "require"]

# extra -> the top-level modules it installs (the import names, not the distributions').
EXTRAS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "fl": ("sklearn",),  # scikit-learn: the digits data
        "dp": ("dp_accounting",),  # Google's dp-accounting: epsilon from RDP
        "he": ("tenseal",),  # TenSEAL: CKKS
        "metrics": ("prometheus_client",),  # prometheus-client: serve --metrics-port
        "torch": ("torch",),  # the PyTorch adapters, --framework torch, digits-torch
        "flower": ("flwr",),  # secagg.flower
        "ray": ("ray",),  # --backend ray
        "bench": ("matplotlib",),  # compare --plots, the benchmarks' plots
    }
)
_EXTRA_OF: Final[Mapping[str, str]] = {m: extra for extra, ms in EXTRAS.items() for m in ms}


def require(extra: str, purpose: str) -> None:
    """Import ``extra``'s modules (a no-op once they are imported), or raise ``MissingExtra``
    saying that ``purpose`` (``"CKKS"``, ``"--plots"``) needs it.

    Only the modules' absence is a missing extra: a module that is there but fails to
    import (a broken build) raises its own error, which says more than "install it".
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] != module:
                raise
            raise MissingExtra(extra, purpose, module) from exc


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """The missing extra behind ``exc``, if one is: ``exc`` or an exception it was raised
    from (its cause, or the context it did not suppress) that is a ``MissingExtra`` or a
    ``ModuleNotFoundError`` of an extra's module. None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MissingExtra):
            return current
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.partition(".")[0]
            extra = _EXTRA_OF.get(top)
            if extra is not None:
                return MissingExtra(extra, top, top)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return None

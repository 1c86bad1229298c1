"""No import runs back up the layers.

Every module's imports are read from its source with ``ast`` (not by importing it, so lazy
imports inside functions and ``TYPE_CHECKING`` imports count too: a type is a dependency),
and each must point to a lower layer than the module's own, or stay inside its own unit
(a package such as ``protocol``, or a top-level module such as ``simulate``). Units drawn in
the same layer are siblings and do not import each other. docs/ARCHITECTURE.md draws the
same layers (the last test keeps the two alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "secagg"

# Lowest first. The layers as the imports draw them, not as we might wish them: ``fl`` (numpy
# training, no secure aggregation in it) sits low, because the service's tasks run it, and
# ``dp`` sits under ``schemes`` because masking's parameters hold the DP plan; ``ledger`` needs
# only the round engine's outcome and ``dp``, and the service writes it. ``secagg`` is
# the package's own ``__init__``, the public API that re-exports the simulator's.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("checks", "errors", "updates"),
    ("extras", "hazmat", "journal", "knobs"),
    ("fl", "parallel", "protocol"),
    ("cohort", "dp"),
    ("backends", "ledger"),
    ("schemes",),
    ("client_session", "simulate"),
    ("grouping", "secagg"),
    ("service",),
    ("compare", "demo", "flower"),
    ("cli",),
    ("launch",),
    ("__main__",),
)

# Imports that run up or across the layers, each with why it stays for now, keyed by
# (module, module imported). Empty: the one there was (``fl`` importing ``UpdateFn`` from the
# service's client) was fixed by giving ``UpdateFn`` its own module, ``secagg.updates``. A
# fixed one must leave this table (``test_every_exception_is_still_needed``).
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


_MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    """``secagg.protocol.runner`` -> ``protocol``; ``secagg`` (the package itself) -> ``secagg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module imported) for every import of a secagg module in ``path``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".")
                if path.name != "__init__.py":
                    package.pop()
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                # ``from secagg.protocol import runner`` imports the module runner
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if name in _MODULES else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "secagg"]


def _layer_of() -> dict[str, int]:
    return {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


def _arrows() -> list[tuple[str, int, str]]:
    """Every import from one unit into another: (module, line, module imported)."""
    return [
        (module, line, target)
        for module, path in _MODULES.items()
        for line, target in _imports(module, path)
        if _unit(target) != _unit(module)
    ]


def test_every_module_has_a_layer() -> None:
    layer_of = _layer_of()
    assert len(layer_of) == sum(len(layer) for layer in LAYERS), "a unit drawn twice"
    units = {_unit(module) for module in _MODULES}
    assert sorted(units - set(layer_of)) == [], "new units: draw them in LAYERS"
    assert sorted(set(layer_of) - units) == [], "units drawn in LAYERS that no longer exist"


def test_no_import_runs_back_up_the_layers() -> None:
    layer_of = _layer_of()
    offending = [
        f"{_MODULES[module].relative_to(ROOT)}:{line} imports {target} "
        f"({_unit(module)}, layer {layer_of[_unit(module)]} -> "
        f"{_unit(target)}, layer {layer_of[_unit(target)]})"
        for module, line, target in _arrows()
        if layer_of[_unit(target)] >= layer_of[_unit(module)] and (module, target) not in EXCEPTIONS
    ]
    assert offending == []


def test_every_exception_is_still_needed() -> None:
    layer_of = _layer_of()
    upward = {
        (module, target)
        for module, _line, target in _arrows()
        if layer_of[_unit(target)] >= layer_of[_unit(module)]
    }
    assert sorted(set(EXCEPTIONS) - upward) == []


def test_the_reader_sees_lazy_and_type_only_imports() -> None:
    # The checks above are only as good as this reader: one import inside a function and one
    # under TYPE_CHECKING that we know of.
    tasks = dict(
        (name, line)
        for line, name in _imports("secagg.service.tasks", _MODULES["secagg.service.tasks"])
    )
    assert "secagg.fl.digits" in tasks
    torch = {name for _line, name in _imports("secagg.fl.torch", _MODULES["secagg.fl.torch"])}
    assert "secagg.updates" in torch


def test_the_architecture_document_draws_these_layers() -> None:
    document = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    drawing = "\n".join(
        f"{index:>2}  {', '.join(layer)}" for index, layer in reversed(list(enumerate(LAYERS)))
    )
    assert drawing in document

"""How the hazmat modules depend on each other: a graph without cycles, at the bottom of secagg."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import secagg.hazmat

PACKAGE = "secagg.hazmat"
HAZMAT = Path(secagg.hazmat.__file__).resolve().parent
MODULES = sorted(path.stem for path in HAZMAT.glob("*.py") if path.stem != "__init__")


def secagg_imports(module: str) -> set[str]:
    """Every secagg module that ``module`` imports, anywhere in it: at the top, inside
    functions and under ``if TYPE_CHECKING`` (a cycle among type-only imports is a cycle in
    the design, even if Python tolerates it)."""
    tree = ast.parse((HAZMAT / f"{module}.py").read_text(), filename=f"{module}.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            found.add(base)
            if base == PACKAGE:  # from secagg.hazmat import prg: prg is a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "secagg" or name.startswith("secagg.")}


def hazmat_graph() -> dict[str, set[str]]:
    prefix = PACKAGE + "."
    return {
        module: {
            name.removeprefix(prefix)
            for name in secagg_imports(module)
            if name.startswith(prefix) and name.removeprefix(prefix) in MODULES
        }
        for module in MODULES
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for successor in sorted(graph[node]):
            cycle = visit(successor)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_module_list_covers_the_primitives_this_test_is_about() -> None:
    assert {"kdf", "keys", "keystream", "prg", "randomness"} <= set(MODULES)


def test_the_cycle_finder_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"keys": {"randomness"}, "randomness": {"keys"}}) == [
        "keys",
        "randomness",
        "keys",
    ]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hazmat_modules_import_each_other_without_any_cycle() -> None:
    graph = hazmat_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among hazmat modules: " + " -> ".join(cycle or [])


def test_key_derivation_and_the_keystream_stand_on_nothing_else_in_hazmat() -> None:
    graph = hazmat_graph()
    assert graph["kdf"] == set()
    assert graph["keystream"] == set()
    # Randomness takes HKDF from kdf, not from keys (which needs randomness to make keys).
    assert "kdf" in graph["randomness"]
    assert "keys" not in graph["randomness"]
    assert {"keystream"} <= graph["prg"] and {"keystream"} <= graph["randomness"]


def test_hazmat_uses_nothing_from_secagg_but_errors_and_itself() -> None:
    # Dependencies flow one way: hazmat <- protocol <- schemes <- ... (DESIGN.md, section 2).
    allowed = {"secagg", "secagg.errors", PACKAGE}
    for module in MODULES:
        outside = {
            name
            for name in secagg_imports(module)
            if name not in allowed and not name.startswith(PACKAGE + ".")
        }
        assert not outside, f"secagg.hazmat.{module} imports {sorted(outside)}"


def test_every_hazmat_module_imports_alone_in_a_fresh_interpreter() -> None:
    # Import order hides cycles within one process, so each module gets a process of its own;
    # they run side by side to keep this test fast.
    processes = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import {PACKAGE}.{module}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in MODULES
    }
    failures = {}
    for module, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            failures[module] = stderr.strip().splitlines()[-1:]
    assert not failures, f"hazmat modules that fail to import on their own: {failures}"

"""The registry lists every scheme once, and nothing outside a scheme's own package asks
"which scheme is this?" of an object's class: it asks the scheme's interface instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from secagg.errors import ConfigurationError
from secagg.schemes.registry import SCHEMES, SchemeKind, scheme_entry, served_schemes
from secagg.service import config as service_config
from secagg.service import scheme_sides

SRC = Path(__file__).resolve().parents[2] / "src" / "secagg"
SCHEMES_DIR = SRC / "schemes"


def _scheme_package(path: Path) -> str | None:
    """``schemes/masking/server.py`` -> ``masking``; ``schemes/plaintext.py`` ->
    ``plaintext``; the shared modules (``base``, ``registry``, ``upload``) -> None."""
    parts = path.relative_to(SCHEMES_DIR).with_suffix("").parts
    if len(parts) > 1:
        return parts[0]
    return None if parts[0] in ("__init__", "base", "registry", "upload") else parts[0]


def _classes_by_package() -> dict[str, set[str]]:
    """Every class a scheme's own package defines (its scheme, settings, messages, states)."""
    found: dict[str, set[str]] = {}
    for path in SCHEMES_DIR.rglob("*.py"):
        package = _scheme_package(path)
        if package is None:
            continue
        tree = ast.parse(path.read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        found.setdefault(package, set()).update(names)
    # The configuration every upload scheme shares is as much a scheme's class as its own.
    found.setdefault("upload", set()).add("CohortConfig")
    return found


def _isinstance_targets(tree: ast.AST) -> list[tuple[int, str]]:
    """The class names each ``isinstance(x, ...)`` in ``tree`` tests, with its line."""
    targets: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and len(node.args) == 2
        ):
            continue
        for part in ast.walk(node.args[1]):
            if isinstance(part, ast.Name):
                targets.append((node.lineno, part.id))
            elif isinstance(part, ast.Attribute):
                targets.append((node.lineno, part.attr))
    return targets


def test_every_kind_has_one_entry() -> None:
    assert [e.kind for e in SCHEMES] == list(SchemeKind)
    assert {e.kind for e in served_schemes()} == {SchemeKind.MASKING, SchemeKind.CKKS}


def test_a_served_scheme_has_a_side_in_every_table_of_the_service() -> None:
    served = {e.kind for e in served_schemes()}
    assert set(scheme_sides._COORDINATOR) == served
    assert set(scheme_sides._CLIENT) == served
    assert set(scheme_sides._PROVISION) == served
    assert set(service_config._SCHEME_LINES) == served


def test_an_unknown_scheme_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown scheme 'rot13': choose one of "):
        scheme_entry("rot13")
    assert scheme_entry("ckks").extra == "he"


def test_no_isinstance_on_a_scheme_class_outside_its_own_package() -> None:
    owned = _classes_by_package()
    owner = {name: package for package, names in owned.items() for name in names}
    # Names shared by more than one package (``Client``, ``Server``) are not a scheme's alone.
    shared = {n for n in owner if sum(n in names for names in owned.values()) > 1}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        here = _scheme_package(path) if path.is_relative_to(SCHEMES_DIR) else None
        for line, name in _isinstance_targets(ast.parse(path.read_text())):
            package = owner.get(name)
            if package is None or name in shared or package == here:
                continue
            if here is None and path.is_relative_to(SCHEMES_DIR) and package == "upload":
                continue  # the shared modules own CohortConfig
            found.append(f"{path.relative_to(SRC)}:{line} isinstance(..., {name})")
    assert found == []


def test_the_check_sees_a_switch_where_there_is_one() -> None:
    source = "def f(p):\n    return isinstance(p, (Params, pm.RoundConfig))\n"
    found = _isinstance_targets(ast.parse(source))
    assert sorted(found) == [(2, "Params"), (2, "RoundConfig"), (2, "pm")]

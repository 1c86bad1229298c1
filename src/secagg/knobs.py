"""A setting declared once, on the field of the settings class that holds it.

A knob says where a deployment file keeps the setting (``[section] key``), the command-line
flag that sets it, and one line of help. Everything else is read from those declarations:
the keys a deployment file may hold and their TOML types, the writer's lines, the option
names error messages use (``dp.epsilon`` in a file, ``--dp-epsilon`` on the command line)
and the settings reference in the docs (``python -m secagg.knobs``)::

    @dataclass(frozen=True)
    class DpSettings:
        target_epsilon: float | None = knob(
            section="dp", key="epsilon", flag="--dp-epsilon", help="...", default=None
        )

Validation stays in the class's ``__post_init__``: a knob names a value, the class judges it.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secagg.errors import ConfigurationError

__all__ = [
    "Knob",
    "Setting",
    "file_names",
    "flag_names",
    "knob",
    "read_section",
    "read_table",
    "reference",
    "section_lines",
    "settings_of",
]

_KNOB = "secagg.knob"

# How an error names the type a key needs (never "a int").
_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
}


@dataclass(frozen=True)
class Knob:
    """Where a setting lives: ``[section] key`` in a deployment file (``key`` None: the
    field's name), ``flag`` on the command line (None: the file only), and what it is.
    """

    section: str
    help: str
    key: str | None = None
    flag: str | None = None


def knob(
    *,
    section: str,
    help: str,
    default: Any = dataclasses.MISSING,
    key: str | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field carrying its ``Knob`` (typed ``Any`` as ``dataclasses.field`` is)."""
    declared = Knob(section, help, key, flag)
    return dataclasses.field(default=default, metadata={_KNOB: declared})


@dataclass(frozen=True)
class Setting:
    """A declared field, resolved: its name, its knob, the TOML type a file gives it (an
    enum's values are strings), whether it may be left out (None), and its default."""

    name: str
    knob: Knob
    kind: type
    enum: type[enum.Enum] | None
    optional: bool
    default: object

    @property
    def key(self) -> str:
        return self.knob.key or self.name

    @property
    def where(self) -> str:
        """How a deployment file's reader names it: ``dp.epsilon``."""
        return f"{self.knob.section}.{self.key}"


def settings_of(cls: type) -> tuple[Setting, ...]:
    """Every field of ``cls`` declared with ``knob``, in the class's order."""
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    found = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(_KNOB)
        if declared is None:
            continue
        kind, optional = _unwrapped(hints[f.name])
        enum_type = kind if isinstance(kind, type) and issubclass(kind, enum.Enum) else None
        toml_kind = str if enum_type is not None else kind
        if toml_kind not in _KIND_NAMES:
            raise TypeError(f"{cls.__name__}.{f.name}: a knob of type {kind!r} has no TOML form")
        default = None if f.default is dataclasses.MISSING else f.default
        found.append(Setting(f.name, declared, toml_kind, enum_type, optional, default))
    return tuple(found)


def _unwrapped(hint: Any) -> tuple[Any, bool]:
    """``float | None`` -> (float, True); ``tuple[int, ...]`` -> (list, False)."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"a knob has one type, or one type and None; got {hint!r}")
        hint = rest[0]
    if typing.get_origin(hint) in (tuple, list):
        return list, optional
    return hint, optional


def read_section(
    data: Mapping[str, Any], section: str, settings: tuple[Setting, ...], where: str
) -> dict[str, Any]:
    """``[section]`` of a parsed deployment file, as field name -> value: each key must be
    declared, each value of its declared type (an enum's, one of its values). ``where`` is
    the file, for the one-line error. A key left out is left out (the class's default)."""
    by_key = {s.key: s for s in settings if s.knob.section == section}
    table = read_table(data, section, {key: s.kind for key, s in by_key.items()}, where)
    return {by_key[key].name: _member(by_key[key], value, where) for key, value in table.items()}


def read_table(
    data: Mapping[str, Any], section: str, kinds: Mapping[str, type], where: str
) -> dict[str, Any]:
    """``[section]`` as key -> value, for a section (or the part of one) no class declares:
    each key one of ``kinds``, each value of its TOML type (an integer is a number too)."""
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: [{section}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigurationError(f"{where}: unknown key {section}.{key}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigurationError(f"{where}: {section}.{key} must be {_KIND_NAMES[kind]}")
        out[key] = value
    return out


def _member(setting: Setting, value: Any, where: str) -> Any:
    """An enum knob's member for its value in the file (any other knob's value as it is)."""
    if setting.enum is None:
        return value
    try:
        return setting.enum(value)
    except ValueError:
        choices = ", ".join(f'"{m.value}"' for m in setting.enum)
        raise ConfigurationError(
            f"{where}: {setting.where} must be one of {choices}; got {value!r}"
        ) from None


def section_lines(obj: object, section: str) -> list[str]:
    """The TOML lines of ``obj``'s knobs in ``[section]`` (a None value is left out: the
    class's default, or the other of two exclusive knobs)."""
    lines = []
    for setting in settings_of(type(obj)):
        if setting.knob.section != section:
            continue
        value = getattr(obj, setting.name)
        if value is None:
            continue
        lines.append(f"{setting.key} = {_toml(value)}")
    return lines


def _toml(value: object) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def file_names(*classes: type) -> dict[str, str]:
    """Field name -> how a deployment file names it (``dp.epsilon``), to rewrite a library
    message into the file's words."""
    return _names(classes, lambda s: s.where)


def flag_names(*classes: type) -> dict[str, str]:
    """Field name -> the flag that sets it (``--dp-epsilon``)."""
    return _names(classes, lambda s: s.knob.flag)


def _names(
    classes: tuple[type, ...], name: typing.Callable[[Setting], str | None]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for cls in classes:
        for setting in settings_of(cls):
            shown = name(setting)
            if shown is not None:
                out.setdefault(setting.name, shown)
    return out


def reference(classes: Mapping[str, type]) -> str:
    """The settings reference (Markdown): for each titled class, each knob's key, flag,
    default and help, in declaration order."""
    out = ["# Settings reference", "", "Generated from the declarations in the code."]
    for title, cls in classes.items():
        out += ["", f"## {title}", "", "| key | flag | default | what |", "|---|---|---|---|"]
        for s in settings_of(cls):
            flag = f"`{s.knob.flag}`" if s.knob.flag else ""
            default = "" if s.default is None else f"`{_toml(s.default)}`"
            out.append(f"| `{s.where}` | {flag} | {default} | {s.knob.help} |")
    return "\n".join(out) + "\n"

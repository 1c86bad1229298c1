"""What the commands' options offer: the choices (each mirrors a library enum by value, so
that ``--help`` need not import the schemes or the service to list them; a test holds each to
its enum), the options several commands share, and the distributed-DP option group.

The DP group is read from ``DpSettings``' knobs (``secagg.knobs``: flag, help, default, in
their order). A command takes ``dp: DpFlags = NO_DP`` where its ``--dp-*`` options go in its
help, and ``@dp_options()`` turns that one parameter into the options (typer reads the
signature it writes) and hands the command the values as one ``DpFlags``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer

from secagg.dp.settings import DpSettings, dp_flag_names, name_knobs
from secagg.errors import ConfigurationError
from secagg.knobs import Setting, settings_of

__all__ = [
    "NO_DP",
    "NO_PLAINTEXT_SERVICE",
    "BackendChoice",
    "DeploymentFile",
    "DpFlags",
    "Dropout",
    "FrameworkChoice",
    "ProtocolChoice",
    "SchemeChoice",
    "ServerModelChoice",
    "TaskChoice",
    "dp_options",
]


class ProtocolChoice(StrEnum):
    """``Protocol``'s values."""

    secagg = "secagg"
    secagg_plus = "secagg+"


class SchemeChoice(StrEnum):
    masking = "masking"
    ckks = "ckks"
    plaintext = "plaintext"


class ServerModelChoice(StrEnum):
    """What the server is trusted to do (the names of ``ServerModel``, as in deployment.toml)."""

    semi_honest = "semi-honest"
    semi_malicious = "semi-malicious"


class TaskChoice(StrEnum):
    """``Task``'s values."""

    random = "random"
    digits = "digits"
    digits_torch = "digits-torch"  # the digits model trained with PyTorch (the [torch] extra)


class FrameworkChoice(StrEnum):
    """What the demo's clients train with: the same model and vector layout either way."""

    numpy = "numpy"
    torch = "torch"


class BackendChoice(StrEnum):
    """``Backend``'s values: where a simulation's clients run."""

    process = "process"
    ray = "ray"


NO_PLAINTEXT_SERVICE = (
    "--scheme plaintext cannot run over the service: it has no plaintext path (plaintext "
    "runs in process only: secagg simulate --scheme plaintext); use masking or ckks"
)

Dropout = Annotated[
    float, typer.Option(help="Fraction of clients that drop, each at a random stage.")
]
DeploymentFile = Annotated[Path, typer.Option(help="deployment.toml")]

# The DP option group: DpSettings' knobs (flag, help), in the order DpSettings declares them.
_DP_SETTINGS = {s.name: s for s in settings_of(DpSettings) if s.knob.flag is not None}
_DP_FLAG = {name: str(s.knob.flag) for name, s in _DP_SETTINGS.items()}


def _dp_option(setting: Setting, help: str | None) -> object:
    """``Annotated[T | None, typer.Option(flag, help=...)]`` for one knob (None: not given)."""
    kind = setting.enum or setting.kind
    option = typer.Option(setting.knob.flag, help=setting.knob.help if help is None else help)
    return cast(Any, Annotated)[Optional[kind], option]  # noqa: UP045 (a runtime type)


@dataclass(frozen=True)
class DpFlags:
    """The ``--dp-*`` options as given: each DpSettings field's value, None when not given."""

    values: Mapping[str, object] = field(default_factory=dict)

    @property
    def given(self) -> dict[str, object]:
        return {name: value for name, value in self.values.items() if value is not None}

    def settings(self) -> DpSettings | None:
        """What the options ask (None: no DP). The clip stays None when not given: each
        command has its own default. ConfigurationError names the option to change."""
        given = self.given
        goals = [name for name in ("target_epsilon", "noise_multiplier") if name in given]
        if not goals and given:
            # The first option given, in the order the help lists them.
            raise ConfigurationError(
                f"{_DP_FLAG[next(iter(given))]} needs distributed DP turned on: add "
                f"{_DP_FLAG['target_epsilon']} or {_DP_FLAG['noise_multiplier']}"
            )
        if not goals:
            return None
        if len(goals) == 2:
            raise ConfigurationError(
                f"give {_DP_FLAG['target_epsilon']} or {_DP_FLAG['noise_multiplier']}, not both"
            )
        try:
            return DpSettings(**given)  # type: ignore[arg-type]
        except ConfigurationError as exc:
            raise ConfigurationError(name_knobs(str(exc), dp_flag_names())) from None

    def error_text(self, exc: Exception) -> str:
        """``exc`` as the user's one line: when any --dp-* option was given, the DP knobs the
        message names are spelled as those options."""
        return name_knobs(str(exc), dp_flag_names()) if self.given else str(exc)


NO_DP = DpFlags()

Command = Callable[..., None]


def dp_options(
    *, leave_out: Collection[str] = (), helps: Mapping[str, str] | None = None
) -> Callable[[Command], Command]:
    """The command's ``dp`` parameter as the ``--dp-*`` options, in its place.

    ``leave_out`` names DpSettings fields the command has no option for (they stay unset);
    ``helps`` gives a field's option the command's own help (the flag stays the knob's).
    """
    options = {
        f"dp_{name}": _dp_option(setting, (helps or {}).get(name))
        for name, setting in _DP_SETTINGS.items()
        if name not in leave_out
    }

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name != "dp":
                # Keyword-only: typer passes every value by name, and the options that follow
                # ``dp`` need no defaults of their own.
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            parameters += [
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option
                )
                for name, option in options.items()
            ]

        @functools.wraps(command)
        def with_dp(**given: Any) -> None:
            values = {name.removeprefix("dp_"): given.pop(name) for name in options}
            command(**given, dp=DpFlags(values))

        with_dp.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_dp.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_dp

    return decorate

"""What the commands' options offer, declared once: the choices (each mirrors a library
enum by value, so that ``--help`` need not import the library to list them), the options
several commands share, and the distributed-DP option group.

The DP group: a command takes ``dp: DpFlags = NO_DP`` where its ``--dp-*`` options go in its
help, and ``@dp_options()`` turns that one parameter into the options (typer reads the
signature it writes) and hands the command the values as one ``DpFlags``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from secagg.dp.settings import DEFAULT_DP_BITS, DEFAULT_DP_DELTA

if TYPE_CHECKING:
    from secagg.dp.settings import DpSettings

__all__ = [
    "NO_DP",
    "NO_PLAINTEXT_SERVICE",
    "BackendChoice",
    "DeploymentFile",
    "DpFlags",
    "Dropout",
    "FrameworkChoice",
    "MechanismChoice",
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


class MechanismChoice(StrEnum):
    """``Mechanism``'s values: the distribution of each client's DP noise."""

    skellam = "skellam"
    discrete_gaussian = "discrete-gaussian"


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

# Distributed DP: the same options wherever a user runs rounds (simulate, compare, certs, demo).
DpEpsilon = Annotated[
    float | None,
    typer.Option(
        "--dp-epsilon",
        help="Distributed DP (every client adds noise before masking): the target epsilon "
        "over --dp-rounds rounds.",
    ),
]
DpNoiseMultiplier = Annotated[
    float | None,
    typer.Option(
        "--dp-noise-multiplier",
        help="Distributed DP with this noise multiplier (central noise std at the minimum "
        "cohort / the L2 clip) instead of a target epsilon.",
    ),
]
DpDelta = Annotated[
    float | None, typer.Option("--dp-delta", help=f"DP delta (default {DEFAULT_DP_DELTA:g}).")
]
DpClip = Annotated[
    float | None,
    typer.Option("--dp-clip", help="DP: each update is scaled down to this L2 norm."),
]
DpBits = Annotated[
    int | None,
    typer.Option(
        "--dp-bits",
        help=f"DP: bits per coordinate of the noisy sum (default {DEFAULT_DP_BITS}).",
    ),
]
DpMechanism = Annotated[
    MechanismChoice | None,
    typer.Option("--dp-mechanism", help="DP noise: skellam (default) or discrete-gaussian."),
]
DpRounds = Annotated[
    int | None,
    typer.Option("--dp-rounds", help="DP: rounds the target epsilon covers (default 1)."),
]
DpSamplingRate = Annotated[
    float | None,
    typer.Option(
        "--dp-sampling-rate",
        help="DP: the chance each client takes part in a round, if you sample clients "
        "(Poisson; default 1).",
    ),
]
# Each DpFlags field's option, in the order the help lists them.
_DP_OPTION_TYPES: dict[str, object] = {
    "epsilon": DpEpsilon,
    "noise_multiplier": DpNoiseMultiplier,
    "delta": DpDelta,
    "clip": DpClip,
    "bits": DpBits,
    "mechanism": DpMechanism,
    "rounds": DpRounds,
    "sampling_rate": DpSamplingRate,
}
# What DpConfig, calibrate and Params call the knobs, as the options that set them.
DP_OPTIONS = {
    "target_epsilon": "--dp-epsilon",
    "noise_multiplier": "--dp-noise-multiplier",
    "delta": "--dp-delta",
    "l2_clip": "--dp-clip",
    "bits": "--dp-bits",
    "mechanism": "--dp-mechanism",
    "rounds": "--dp-rounds",
    "sampling_rate": "--dp-sampling-rate",
    "min_clients": "--min-cohort",
    "min_cohort": "--min-cohort",
    "max_clients": "--clients",
}


@dataclass(frozen=True)
class DpFlags:
    """The ``--dp-*`` options as given (None: not given)."""

    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    clip: float | None = None
    bits: int | None = None
    mechanism: MechanismChoice | None = None
    rounds: int | None = None
    sampling_rate: float | None = None

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def settings(self) -> DpSettings | None:
        """What the options ask (None: no DP). The clip stays None when not given: each
        command has its own default. ConfigurationError names the option to change."""
        from secagg.dp.noise import Mechanism
        from secagg.dp.settings import DpSettings, name_knobs
        from secagg.errors import ConfigurationError

        if self.epsilon is None and self.noise_multiplier is None:
            # The first of the other options given, in the order the help lists them.
            given = [
                f"--dp-{f.name.replace('_', '-')}"
                for f in fields(self)
                if getattr(self, f.name) is not None
            ]
            if given:
                raise ConfigurationError(
                    f"{given[0]} needs distributed DP turned on: add --dp-epsilon or "
                    "--dp-noise-multiplier"
                )
            return None
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ConfigurationError("give --dp-epsilon or --dp-noise-multiplier, not both")
        try:
            return DpSettings(
                l2_clip=self.clip,
                target_epsilon=self.epsilon,
                noise_multiplier=self.noise_multiplier,
                delta=DEFAULT_DP_DELTA if self.delta is None else self.delta,
                bits=DEFAULT_DP_BITS if self.bits is None else self.bits,
                mechanism=Mechanism((self.mechanism or MechanismChoice.skellam).value),
                rounds=1 if self.rounds is None else self.rounds,
                sampling_rate=1.0 if self.sampling_rate is None else self.sampling_rate,
            )
        except ConfigurationError as exc:
            raise ConfigurationError(name_knobs(str(exc), DP_OPTIONS)) from None

    def error_text(self, exc: Exception) -> str:
        """``exc`` as the user's one line: when any --dp-* option was given, the DP knobs the
        message names are spelled as those options."""
        if self.given:
            from secagg.dp.settings import name_knobs

            return name_knobs(str(exc), DP_OPTIONS)
        return str(exc)


NO_DP = DpFlags()

Command = Callable[..., None]


def dp_options(
    *, leave_out: Collection[str] = (), own: Mapping[str, object] | None = None
) -> Callable[[Command], Command]:
    """The command's ``dp`` parameter as the ``--dp-*`` options, in its place.

    ``leave_out`` names DpFlags fields the command has no option for (they stay None);
    ``own`` gives a field an option of the command's own (the same flag, its own help).
    """
    options = {name: kind for name, kind in _DP_OPTION_TYPES.items() if name not in leave_out}
    options |= own or {}

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
                    f"dp_{name}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind
                )
                for name, kind in options.items()
            ]

        @functools.wraps(command)
        def with_dp(**given: Any) -> None:
            flags = DpFlags(**{name: given.pop(f"dp_{name}") for name in options})
            command(**given, dp=flags)

        with_dp.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_dp.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_dp

    return decorate

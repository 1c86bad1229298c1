"""What a deployment, or one command, asks of distributed DP: the ``[dp]`` knobs, declared
once (section, key, flag, help), and the defaults derived from a cohort.

``DpSettings`` is everything of a ``DpConfig`` but what the round parameters already fix (the
update's ``dim``, the minimum cohort the guarantee must hold for, and ``max_clients``). The
deployment file's ``[dp]`` section, the ``--dp-*`` options of every command that takes DP, the
names error messages use and the settings reference are read from its declarations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from secagg.dp.mechanism import Mechanism
from secagg.errors import ConfigurationError, UsageError
from secagg.knobs import file_names, flag_names, knob

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpConfig

__all__ = [
    "DEFAULT_DP_BITS",
    "DEFAULT_DP_DELTA",
    "CohortDp",
    "DpSettings",
    "cohort_dp",
    "default_dp_min_cohort",
    "dp_file_names",
    "dp_flag_names",
    "minimum_cohort",
    "name_knobs",
]

DEFAULT_DP_DELTA = 1e-5
DEFAULT_DP_BITS = 20
# DpConfig's knobs that a deployment file does not carry (their defaults hold).
_UNRECORDED = frozenset(
    {"beta", "max_wrap_probability", "max_rounding_bias", "max_rounding_inflation"}
)


@dataclass(frozen=True)
class DpSettings:
    """What a deployment, or one command, asks of distributed DP.

    The fields are in the order a deployment file's ``[dp]`` lists them (the goal first).
    Exactly one of ``target_epsilon`` (at ``delta``, over ``rounds`` rounds, each sampling
    clients with probability ``sampling_rate``) and ``noise_multiplier`` is given.
    ``l2_clip`` None means "not chosen yet": the caller picks it from the task (the demo and
    ``secagg certs`` take the task's typical update norm) with ``with_clip`` before asking
    for a ``config``. Every value is checked here, by the rules of ``DpConfig``.
    """

    target_epsilon: float | None = knob(
        section="dp",
        key="epsilon",
        flag="--dp-epsilon",
        help="Distributed DP (every client adds noise before masking): the target epsilon "
        "over --dp-rounds rounds.",
        default=None,
    )
    noise_multiplier: float | None = knob(
        section="dp",
        flag="--dp-noise-multiplier",
        help="Distributed DP with this noise multiplier (central noise std at the minimum "
        "cohort / the L2 clip) instead of a target epsilon.",
        default=None,
    )
    delta: float = knob(
        section="dp",
        flag="--dp-delta",
        help=f"DP delta (default {DEFAULT_DP_DELTA:g}).",
        default=DEFAULT_DP_DELTA,
    )
    l2_clip: float | None = knob(
        section="dp",
        flag="--dp-clip",
        help="DP: each update is scaled down to this L2 norm.",
        default=None,
    )
    bits: int = knob(
        section="dp",
        flag="--dp-bits",
        help=f"DP: bits per coordinate of the noisy sum (default {DEFAULT_DP_BITS}).",
        default=DEFAULT_DP_BITS,
    )
    mechanism: Mechanism = knob(
        section="dp",
        flag="--dp-mechanism",
        help="DP noise: skellam (default) or discrete-gaussian.",
        default=Mechanism.SKELLAM,
    )
    rounds: int = knob(
        section="dp",
        flag="--dp-rounds",
        help="DP: rounds the target epsilon covers (default 1).",
        default=1,
    )
    sampling_rate: float = knob(
        section="dp",
        flag="--dp-sampling-rate",
        help="DP: the chance each client takes part in a round, if you sample clients "
        "(Poisson; default 1).",
        default=1.0,
    )

    noise_layers: bool = knob(
        section="dp",
        flag="--dp-noise-layers",
        help="DP: removable noise layers (Skellam only): the server takes off the noise the "
        "surviving clients do not need, so every sum carries its target noise "
        "(docs/XNOISE.md).",
        default=False,
    )

    def __post_init__(self) -> None:
        # The placeholder sizes are valid for any DpConfig: only this object's values are judged.
        clip = 1.0 if self.l2_clip is None else self.l2_clip
        self._config(dim=1, min_clients=1, max_clients=2, l2_clip=clip)
        object.__setattr__(self, "mechanism", Mechanism(self.mechanism))

    def with_clip(self, l2_clip: float) -> DpSettings:
        return replace(self, l2_clip=l2_clip)

    def config(self, *, dim: int, min_clients: int, max_clients: int) -> DpConfig:
        """The full DP configuration for a deployment of these sizes."""
        if self.l2_clip is None:
            raise UsageError("the DP settings have no L2 clip yet: choose one with with_clip")
        return self._config(
            dim=dim, min_clients=min_clients, max_clients=max_clients, l2_clip=self.l2_clip
        )

    def _config(self, *, dim: int, min_clients: int, max_clients: int, l2_clip: float) -> DpConfig:
        from secagg.dp.calibrate import DpConfig  # dp-accounting only where a plan is made

        return DpConfig(
            dim=dim,
            l2_clip=l2_clip,
            bits=self.bits,
            min_clients=min_clients,
            max_clients=max_clients,
            delta=self.delta,
            target_epsilon=self.target_epsilon,
            noise_multiplier=self.noise_multiplier,
            rounds=self.rounds,
            sampling_rate=self.sampling_rate,
            mechanism=self.mechanism,
            noise_layers=self.noise_layers,
        )

    @classmethod
    def of(cls, config: DpConfig) -> DpSettings:
        """What a deployment file records of ``config`` (refused if it uses a knob the file
        cannot carry: conditional rounding, or other wrap and rounding bounds)."""
        from secagg.dp.calibrate import DpConfig

        for field in fields(DpConfig):
            if field.name in _UNRECORDED and getattr(config, field.name) != field.default:
                raise ConfigurationError(
                    f"a deployment records no DP {field.name}: keep it at its default "
                    f"({field.default!r})"
                )
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class CohortDp:
    """What a cohort's deployment fixes for DP: the minimum cohort every revealed sum holds,
    and the DP configuration (None: no DP)."""

    min_cohort: int
    config: DpConfig | None


def cohort_dp(
    settings: DpSettings | None,
    *,
    dim: int,
    clients: int,
    dropout_rate: float,
    min_cohort: int | None = None,
    default_clip: Callable[[], float],
) -> CohortDp:
    """The one place the defaults a cohort implies are chosen, for every command that runs
    rounds: the minimum cohort is the user's, else (under DP) all but the ``dropout_rate``
    the graph tolerates, else 1; the L2 clip is the user's, else ``default_clip()`` (each
    caller knows its task's typical update norm; called only when needed)."""
    min_cohort = minimum_cohort(
        settings is not None, clients=clients, dropout_rate=dropout_rate, given=min_cohort
    )
    if settings is None:
        return CohortDp(min_cohort, None)
    if settings.l2_clip is None:
        settings = settings.with_clip(default_clip())
    return CohortDp(
        min_cohort, settings.config(dim=dim, min_clients=min_cohort, max_clients=clients)
    )


def minimum_cohort(dp: bool, *, clients: int, dropout_rate: float, given: int | None) -> int:
    """The minimum cohort of a deployment of ``clients``: ``given``, else under DP all but
    the ``dropout_rate`` its graph tolerates (``default_dp_min_cohort``), else 1."""
    if given is not None:
        return given
    return default_dp_min_cohort(clients, dropout_rate) if dp else 1


def default_dp_min_cohort(clients: int, dropout_rate: float) -> int:
    """The minimum cohort a DP round is calibrated for when the user names none: the
    smallest sum a round of ``clients`` is designed to survive (all but the ``dropout_rate``
    its graph tolerates). A larger minimum means less noise per client; a round that ends
    with fewer inputs aborts and reveals nothing."""
    return max(1, clients - math.floor(dropout_rate * clients))


# DpConfig's names for the round's sizes, which a user sets as the round's knobs.
_ROUND_FILE_NAMES = {
    "min_clients": "round.min_cohort",
    "min_cohort": "round.min_cohort",
    "max_clients": "round.max_clients",
}
_ROUND_FLAG_NAMES = {
    "min_clients": "--min-cohort",
    "min_cohort": "--min-cohort",
    "max_clients": "--clients",
}


def dp_file_names() -> dict[str, str]:
    """What DpConfig, calibrate and Params call a DP knob -> its key in a deployment file."""
    return file_names(DpSettings) | _ROUND_FILE_NAMES


def dp_flag_names() -> dict[str, str]:
    """What DpConfig, calibrate and Params call a DP knob -> the option that sets it."""
    return flag_names(DpSettings) | _ROUND_FLAG_NAMES


def name_knobs(message: str, names: Mapping[str, str]) -> str:
    """``message`` (from ``DpConfig``, ``calibrate`` or ``Params``) with each parameter named
    as the user sets it: ``names`` maps e.g. ``bits`` to ``--dp-bits`` or ``dp.bits``.
    Only whole words are replaced (``value_bits`` and ``20-bit`` stay as they are)."""
    if not names:
        return message
    known = sorted(names, key=len, reverse=True)  # the longest name first at any position
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, known)) + r")(?![\w-])")
    return pattern.sub(lambda match: names[match.group(1)], message)

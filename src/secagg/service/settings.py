"""What a deployment fixes beyond the round parameters, validated on construction: how the
coordinator listens, forms cohorts and paces stages (``CoordinatorSettings``), and what it
asks of distributed differential privacy (``DpSettings``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from secagg.dp.calibrate import DpConfig
from secagg.dp.noise import Mechanism
from secagg.errors import ConfigurationError, UsageError
from secagg.schemes.base import SchemeSettings
from secagg.service.wire import message_size_limit

__all__ = [
    "DEFAULT_DP_BITS",
    "DEFAULT_DP_DELTA",
    "MAX_PORT",
    "CoordinatorSettings",
    "DpSettings",
    "default_dp_min_cohort",
    "name_knobs",
]

MAX_PORT = 65535
DEFAULT_DP_DELTA = 1e-5
DEFAULT_DP_BITS = 20
# DpConfig's knobs that a deployment file does not carry (their defaults hold).
_UNRECORDED = frozenset(
    {"beta", "max_wrap_probability", "max_rounding_bias", "max_rounding_inflation"}
)


@dataclass(frozen=True)
class DpSettings:
    """What a deployment, or one command, asks of distributed DP: everything of a
    ``secagg.dp.DpConfig`` but what the round parameters already fix (the update's ``dim``,
    the minimum cohort the guarantee must hold for, and ``max_clients``).

    Exactly one of ``target_epsilon`` (at ``delta``, over ``rounds`` rounds, each sampling
    clients with probability ``sampling_rate``) and ``noise_multiplier`` is given.
    ``l2_clip`` None means "not chosen yet": the caller picks it from the task (the demo and
    ``secagg certs`` take the task's typical update norm) with ``with_clip`` before asking
    for a ``config``. Every value is checked here, by the rules of ``DpConfig``.
    """

    l2_clip: float | None = None
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = DEFAULT_DP_DELTA
    bits: int = DEFAULT_DP_BITS
    mechanism: Mechanism = Mechanism.SKELLAM
    rounds: int = 1
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        # The placeholder sizes are valid for any DpConfig: only this object's values are judged.
        clip = 1.0 if self.l2_clip is None else self.l2_clip
        self._config(dim=1, min_clients=1, max_clients=1, l2_clip=clip)
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
        )

    @classmethod
    def of(cls, config: DpConfig) -> DpSettings:
        """What a deployment file records of ``config`` (refused if it uses a knob the file
        cannot carry: conditional rounding, or other wrap and rounding bounds)."""
        for knob in fields(DpConfig):
            if knob.name in _UNRECORDED and getattr(config, knob.name) != knob.default:
                raise ConfigurationError(
                    f"a deployment records no DP {knob.name}: keep it at its default "
                    f"({knob.default!r})"
                )
        return cls(
            l2_clip=config.l2_clip,
            target_epsilon=config.target_epsilon,
            noise_multiplier=config.noise_multiplier,
            delta=config.delta,
            bits=config.bits,
            mechanism=config.mechanism,
            rounds=config.rounds,
            sampling_rate=config.sampling_rate,
        )


def default_dp_min_cohort(clients: int, dropout_rate: float) -> int:
    """The minimum cohort a DP round is calibrated for when the user names none: the
    smallest sum a round of ``clients`` is designed to survive (all but the ``dropout_rate``
    its graph tolerates). A larger minimum means less noise per client; a round that ends
    with fewer inputs aborts and reveals nothing."""
    return max(1, clients - math.floor(dropout_rate * clients))


# The names DpConfig and calibrate use in their messages, as words of a sentence.
_DP_NAMES = (
    "target_epsilon",
    "noise_multiplier",
    "l2_clip",
    "bits",
    "delta",
    "rounds",
    "sampling_rate",
    "mechanism",
    "min_clients",
    "min_cohort",
    "max_clients",
)


def name_knobs(message: str, names: Mapping[str, str]) -> str:
    """``message`` (from ``DpConfig``, ``calibrate`` or ``Params``) with each parameter named
    as the user sets it: ``names`` maps e.g. ``bits`` to ``--dp-bits`` or ``dp.bits``.
    Only whole words are replaced (``value_bits`` and ``20-bit`` stay as they are)."""
    known = [n for n in _DP_NAMES if n in names]
    if not known:
        return message
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(known) + r")(?![\w-])")
    return pattern.sub(lambda match: names[match.group(1)], message)


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator listens, forms cohorts and paces stages.

    ``params`` are the settings of the deployment's scheme (``SchemeSettings``: masking's
    ``Params``, ``CkksSettings``). A round starts once ``min_clients`` clients are connected
    (waiting at most ``cohort_wait`` seconds) and takes every connected client, up to
    ``params.max_clients``. Each stage waits at most ``stage_timeout`` seconds for the
    clients it expects; a client that misses it is dropped. Every value is checked here, so
    that a typo in the deployment file is one line at start-up rather than a traceback (or a
    silently wrapped port) later.
    """

    params: SchemeSettings
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see Coordinator.port)
    min_clients: int = 3
    cohort_wait: float = 60.0  # seconds to wait for min_clients before giving up
    stage_timeout: float = 30.0  # per stage; a client that misses it is dropped
    auth_timeout: float = 10.0
    # Flow control: at most this many clients are sent a model-sized message (the model, or
    # what makes them upload their input) at once; the rest wait their turn (docs/SCALING.md).
    upload_window: int = 64
    max_message_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, SchemeSettings):
            raise ConfigurationError("the coordinator needs a scheme's validated settings")
        if not isinstance(self.host, str) or not self.host or self.host != self.host.strip():
            raise ConfigurationError(f"host must be a non-empty name or address, got {self.host!r}")
        if not _is_int(self.port) or not 0 <= self.port <= MAX_PORT:
            raise ConfigurationError(
                f"port must be an integer in [0, {MAX_PORT}] (0: any free port), got {self.port!r}"
            )
        max_clients = self.params.max_clients
        if not _is_int(self.min_clients) or not 3 <= self.min_clients <= max_clients:
            raise ConfigurationError(
                f"min_clients must be an integer in [3, max_clients = {max_clients}], "
                f"got {self.min_clients!r}"
            )
        if self.min_clients < self.params.min_cohort:
            raise ConfigurationError(
                f"min_clients ({self.min_clients}) must be at least min_cohort "
                f"({self.params.min_cohort}): a smaller cohort could never reveal its sum"
            )
        if not _is_int(self.upload_window) or self.upload_window < 1:
            raise ConfigurationError(
                f"upload_window must be a positive integer (clients served at once), "
                f"got {self.upload_window!r}"
            )
        for name in ("cohort_wait", "stage_timeout", "auth_timeout"):
            _check_seconds(name, getattr(self, name))
        self.params.check_min_clients(self.min_clients)
        limit = message_size_limit(self.params)
        object.__setattr__(self, "max_message_bytes", limit)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")

"""How the coordinator listens, forms cohorts and paces stages (``CoordinatorSettings``),
validated on construction. (What a deployment asks of distributed DP: ``secagg.dp.settings``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from secagg.checks import is_int
from secagg.errors import ConfigurationError
from secagg.knobs import knob
from secagg.schemes.base import SchemeSettings
from secagg.service.wire import message_size_limit

__all__ = [
    "MAX_PORT",
    "CoordinatorSettings",
]

MAX_PORT = 65535


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
    host: str = knob(
        section="coordinator", help="The address the coordinator listens on.", default="127.0.0.1"
    )
    port: int = knob(
        section="coordinator",
        flag="--port",
        help="The coordinator's port (0: any free port).",
        default=0,
    )
    min_clients: int = knob(
        section="coordinator",
        flag="--min-clients",
        help="A round starts once this many clients are connected.",
        default=3,
    )
    cohort_wait: float = knob(
        section="coordinator",
        flag="--cohort-wait",
        help="Seconds to wait for min_clients before giving up.",
        default=60.0,
    )
    stage_timeout: float = knob(
        section="coordinator",
        flag="--stage-timeout",
        help="Seconds per stage; a client that misses it is dropped.",
        default=30.0,
    )
    auth_timeout: float = 10.0  # not in the file: a client proves its identity at once
    # Flow control: at most this many clients are sent a model-sized message (the model, or
    # what makes them upload their input) at once; the rest wait their turn (docs/SCALING.md).
    upload_window: int = knob(
        section="coordinator",
        help="Clients sent a model-sized message at once (flow control, docs/SCALING.md).",
        default=64,
    )
    max_message_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, SchemeSettings):
            raise ConfigurationError("the coordinator needs a scheme's validated settings")
        if not isinstance(self.host, str) or not self.host or self.host != self.host.strip():
            raise ConfigurationError(f"host must be a non-empty name or address, got {self.host!r}")
        if not is_int(self.port) or not 0 <= self.port <= MAX_PORT:
            raise ConfigurationError(
                f"port must be an integer in [0, {MAX_PORT}] (0: any free port), got {self.port!r}"
            )
        max_clients = self.params.max_clients
        if not is_int(self.min_clients) or not 3 <= self.min_clients <= max_clients:
            raise ConfigurationError(
                f"min_clients must be an integer in [3, max_clients = {max_clients}], "
                f"got {self.min_clients!r}"
            )
        if self.min_clients < self.params.min_cohort:
            raise ConfigurationError(
                f"min_clients ({self.min_clients}) must be at least min_cohort "
                f"({self.params.min_cohort}): a smaller cohort could never reveal its sum"
            )
        if not is_int(self.upload_window) or self.upload_window < 1:
            raise ConfigurationError(
                f"upload_window must be a positive integer (clients served at once), "
                f"got {self.upload_window!r}"
            )
        for name in ("cohort_wait", "stage_timeout", "auth_timeout"):
            _check_seconds(name, getattr(self, name))
        self.params.check_min_clients(self.min_clients)
        limit = message_size_limit(self.params)
        object.__setattr__(self, "max_message_bytes", limit)


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")

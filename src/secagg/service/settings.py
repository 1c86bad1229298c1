"""How the coordinator listens, forms cohorts and paces stages: validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from secagg.errors import ConfigurationError
from secagg.params import Params
from secagg.service.ckks_deployment import CkksSettings
from secagg.service.wire import ckks_message_size_limit, message_size_limit

__all__ = ["MAX_PORT", "CoordinatorSettings"]

MAX_PORT = 65535


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator listens, forms cohorts and paces stages.

    ``params`` are the round parameters of the deployment's scheme: ``Params`` for masking,
    ``CkksSettings`` for CKKS. A round starts once ``min_clients`` clients are connected
    (waiting at most ``cohort_wait`` seconds) and takes every connected client, up to
    ``params.max_clients``. Each stage waits at most ``stage_timeout`` seconds for the
    clients it expects; a client that misses it is dropped. Every value is checked here, so
    that a typo in the deployment file is one line at start-up rather than a traceback (or a
    silently wrapped port) later.
    """

    params: Params | CkksSettings
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see Coordinator.port)
    min_clients: int = 3
    cohort_wait: float = 60.0  # seconds to wait for min_clients before giving up
    stage_timeout: float = 30.0  # per stage; a client that misses it is dropped
    auth_timeout: float = 10.0
    max_message_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params | CkksSettings):
            raise ConfigurationError("the coordinator needs validated Params or CkksSettings")
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
        for name in ("cohort_wait", "stage_timeout", "auth_timeout"):
            _check_seconds(name, getattr(self, name))
        p = self.params
        if isinstance(p, Params):
            # The graph and threshold of the smallest cohort must exist (overrides are checked).
            p.graph(self.min_clients)
            limit = message_size_limit(p.dim, p.max_clients, p.ring_bits)
        else:
            limit = ckks_message_size_limit(p.dim, p.max_clients, p.params)
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

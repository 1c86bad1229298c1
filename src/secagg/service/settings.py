"""How the coordinator listens, forms cohorts and paces stages (``CoordinatorSettings``),
validated on construction. (What a deployment asks of distributed DP: ``secagg.dp.settings``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from secagg.checks import is_int
from secagg.errors import ConfigurationError
from secagg.knobs import knob
from secagg.schemes.base import SchemeSettings
from secagg.schemes.masking.session.terms import DEFAULT_MAX_SECONDS
from secagg.schemes.registry import SchemeKind
from secagg.service.wire import message_size_limit

__all__ = [
    "MAX_PORT",
    "CoordinatorSettings",
]

MAX_PORT = 65535
# A session's caps travel as u32 (docs/SESSIONS.md 1.1).
_MAX_SESSION_CAP = 2**32 - 1


@dataclass(frozen=True)
class CoordinatorSettings:
    """How the coordinator listens, forms cohorts and paces stages.

    ``params`` are the settings of the deployment's scheme (``SchemeSettings``: masking's
    ``Params``, ``CkksSettings``). A round starts once ``min_clients`` clients are connected
    (waiting at most ``cohort_wait`` seconds) and takes every connected client, up to
    ``params.max_clients``. Each stage waits at most ``stage_timeout`` seconds for the
    clients it expects; a client that misses it is dropped. With ``session_rounds`` > 0
    (masking only) rounds run in sessions that span rounds (docs/SESSIONS.md): the cohort is
    set up once and then runs up to that many rounds, within ``session_seconds`` of its
    set-up; a client reads the same two values from the same file as its own caps, and refuses
    a session that exceeds them. Every value is checked here, so
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
    session_rounds: int = knob(
        section="coordinator",
        help="Rounds per session that spans rounds (masking only, docs/SESSIONS.md): the cohort "
        "is set up once, then a round costs each client two messages, three in active mode; a "
        "client refuses a session of more. 0: every round is one-shot.",
        default=0,
    )
    session_seconds: int = knob(
        section="coordinator",
        help="The longest a session lives from its set-up, in seconds (a client refuses a "
        "session that may live longer).",
        default=DEFAULT_MAX_SECONDS,
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
        for name in ("session_rounds", "session_seconds"):
            value = getattr(self, name)
            least = 0 if name == "session_rounds" else 1
            if not is_int(value) or not least <= value <= _MAX_SESSION_CAP:
                raise ConfigurationError(
                    f"{name} must be an integer in [{least}, {_MAX_SESSION_CAP}], got {value!r}"
                )
        if self.session_rounds and self.params.kind is not SchemeKind.MASKING:
            raise ConfigurationError(
                f"session_rounds needs round.scheme = masking (sessions that span rounds are "
                f"masking's); this deployment runs {self.params.kind.value}: set it to 0"
            )
        self.params.check_min_clients(self.min_clients)
        limit = message_size_limit(self.params, sessions=self.sessions)
        object.__setattr__(self, "max_message_bytes", limit)

    @property
    def sessions(self) -> bool:
        """Rounds run in sessions that span rounds (``session_rounds`` > 0)."""
        return self.session_rounds > 0


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
